"""MRAugment preview: a PNG grid of augmented targets of one knee slice, one row per strength ``p``.

    python -m varnet_ds.sim.augment_preview docs/augment_preview.png [--file H5 --slice N] [--seed K]

Without ``--file`` the slice comes from one simulated knee volume (``varnet_ds.sim.synth``).
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence, Tuple

import torch

from varnet_ds.config import AugConfig
from varnet_ds.data.augment import MRAugment
from varnet_ds.exits import entry_point
from varnet_ds.seeding import derive_seed
from varnet_ds.sim.synth import write_dataset


def _load_slice(path: str, slice_idx: Optional[int]) -> Tuple[torch.Tensor, Tuple[int, int], int]:
    """k-space ``[coils, H, W]`` (complex64), target size and slice index of a fastMRI multicoil file."""
    import xml.etree.ElementTree as etree

    import h5py
    from fastmri.data.mri_data import et_query

    try:
        hf = h5py.File(path, "r")
    except OSError as err:
        raise FileNotFoundError(f"cannot open h5 file {path}: {err}") from None
    with hf:
        if "kspace" not in hf or hf["kspace"].ndim != 4:
            raise ValueError(f"{path}: needs a multicoil 'kspace' dataset [slices, coils, H, W]")
        num = hf["kspace"].shape[0]
        idx = num // 2 if slice_idx is None else slice_idx
        if not 0 <= idx < num:
            raise ValueError(f"{path}: --slice {idx} out of range [0, {num})")
        kspace = torch.from_numpy(hf["kspace"][idx].astype("complex64"))
        if "reconstruction_rss" in hf:
            size = tuple(hf["reconstruction_rss"].shape[-2:])
        else:
            root = etree.fromstring(hf["ismrmrd_header"][()])
            rec = ["encoding", "reconSpace", "matrixSize"]
            size = (int(et_query(root, rec + ["x"])), int(et_query(root, rec + ["y"])))
    return kspace, (int(size[0]), int(size[1])), idx


def write_preview(out: str, file: Optional[str] = None, slice_idx: Optional[int] = None, seed: int = 0,
                  draws: int = 5, upsample: bool = False,
                  p_values: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0)) -> None:
    """PNG grid of augmented targets of one knee slice: one row per ``p``, ``draws`` columns, default weights."""
    import tempfile

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with tempfile.TemporaryDirectory() as tmp:
        if file is None:
            file = str(write_dataset("knee", tmp, volumes=1, slices=3, seed=seed)[0])
            label = "simulated knee (varnet_ds.sim.synth)"
        else:
            label = str(file)
        kspace, size, idx = _load_slice(file, slice_idx)
    aug = MRAugment(AugConfig(upsample=upsample))
    fig, axes = plt.subplots(len(p_values), draws, figsize=(1.7 * draws, 1.95 * len(p_values)), squeeze=False)
    vmax = None
    for row, p in enumerate(p_values):
        gen = torch.Generator().manual_seed(derive_seed("preview", seed, row))  # not seed + row: no overlap
        for col in range(draws):
            _, target = aug.augment(kspace, size, p, generator=gen)
            vmax = float(target.max()) if vmax is None else vmax
            ax = axes[row, col]
            ax.imshow(target.numpy(), cmap="gray", vmin=0.0, vmax=vmax)
            ax.set_xticks([])
            ax.set_yticks([])
            desc = aug.last_params.describe().split(" ")
            ax.set_title(" ".join(desc[:3]) + ("\n" + " ".join(desc[3:]) if len(desc) > 3 else ""), fontsize=6)
            if col == 0:
                ax.set_ylabel(f"p = {p:g}", fontsize=9)
    fig.suptitle(f"MRAugment targets, {label} slice {idx}, k-space {tuple(kspace.shape)}, target {size}",
                 fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    print(f"wrote {out}")


@entry_point
def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m varnet_ds.sim.augment_preview", description=__doc__.split("\n")[0])
    parser.add_argument("out", metavar="OUT.png", help="where to write the grid")
    parser.add_argument("--file", help="fastMRI multicoil h5 (default: one simulated knee volume)")
    parser.add_argument("--slice", type=int, default=None, help="slice index (default: middle)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--draws", type=int, default=5, help="draws per p value")
    parser.add_argument("--upsample", action="store_true", help="affine on a 2x upsampled grid")
    args = parser.parse_args(argv)
    write_preview(args.out, args.file, args.slice, args.seed, args.draws, args.upsample)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""fastMRI-format multicoil data simulator: procedural knee and real-anatomy brain volumes as h5 files.

The files have fastMRI's multicoil layout (``kspace`` [slices, coils, H, W] complex64, ``reconstruction_rss``
[slices, rH, rW] float32, ``ismrmrd_header`` XML, attrs ``acquisition``/``max``/``norm``/``patient_id``) and
are read unchanged by ``fastmri.data.SliceDataset(..., challenge="multicoil")``. Their attrs also say what made
them: ``simulator``, ``generator_version``, ``seed``, ``anatomy_source`` (+ ``anatomy_sha256`` for brains) and
``produced_by`` (package and library versions; informational, left out of the content hash of
:mod:`varnet_ds.sim.manifest`). Brains need the anatomy file (``python -m varnet_ds.sim.anatomy fetch``).

Usage:
    python -m varnet_ds.sim.synth knee --out data/knee/train --volumes 8
    python -m varnet_ds.sim.synth brain --out data/brain --volumes 4 --shape 320x160 --coils 8
    python -m varnet_ds.sim.synth knee --preview docs/synth_preview.png   # no files written
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

import h5py
import numpy as np

from varnet_ds.exits import entry_point
from varnet_ds.files import atomic_path
from varnet_ds.provenance import library_versions, package_version
from varnet_ds.sim.anatomy import AnatomySourceError
from varnet_ds.sim.fastmri_header import ismrmrd_header
from varnet_ds.sim.simulate import (
    ACQUISITION_CONTRAST,
    ANATOMIES,
    GENERATOR_VERSION,
    MAX_VOLUMES,
    VolumeSpec,
    anatomy_attrs,
    make_spec,
    simulate_volume,
)

SIMULATOR = "varnet_ds.sim.synth"
PRODUCED_BY = "produced_by"  # the one attr that is informational (not part of the content hash)


def produced_by() -> str:
    """``varnet_ds 0.2.0; numpy 2.4.6; scipy …; torch …; h5py …``: what wrote a file (its ``produced_by``)."""
    libs = library_versions()
    return "; ".join([f"varnet_ds {package_version()}"] + [f"{k} {libs[k]}" for k in ("numpy", "scipy", "torch",
                                                                                        "h5py")])


@dataclass(frozen=True)
class WrittenVolume:
    """Summary of one written file."""

    path: Path
    spec: VolumeSpec
    seconds: float

    def describe(self) -> str:
        s = self.spec
        return (f"{self.path.name:<40} {s.acquisition:<12} kspace {s.num_slices}x{s.num_coils}x{s.shape[0]}x"
                f"{s.shape[1]}  recon {s.recon_size[0]}x{s.recon_size[1]}  zero cols {s.pad[0]}+{s.pad[1]}  "
                f"{self.seconds:.1f} s")


def write_volume(spec: VolumeSpec, out_dir: Path) -> WrittenVolume:
    """Simulate ``spec`` and write it to ``out_dir / spec.fname`` (atomically: :func:`varnet_ds.files.atomic_path`).

    Raises:
        varnet_ds.sim.anatomy.AnatomySourceError: a brain, and the anatomy file is missing or not the pinned one
            (nothing is written).
    """
    start = time.perf_counter()
    source = anatomy_attrs(spec)  # before any file is opened
    path = Path(out_dir) / spec.fname
    s, (h, w), (rh, rw) = spec.num_slices, spec.shape, spec.recon_size
    vmax, sumsq = 0.0, 0.0
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as hf:
        kspace = hf.create_dataset("kspace", shape=(s, spec.num_coils, h, w), dtype=np.complex64)
        recon = hf.create_dataset("reconstruction_rss", shape=(s, rh, rw), dtype=np.float32)
        for i, (k, target) in enumerate(simulate_volume(spec)):
            kspace[i] = k
            recon[i] = target
            vmax = max(vmax, float(target.max()))
            sumsq += float(np.sum(target.astype(np.float64) ** 2))
        hf.create_dataset("ismrmrd_header", data=np.bytes_(ismrmrd_header(spec)))
        hf.attrs["acquisition"] = spec.acquisition
        hf.attrs["max"] = vmax
        hf.attrs["norm"] = float(np.sqrt(sumsq))
        hf.attrs["patient_id"] = spec.patient_id
        hf.attrs["simulator"] = SIMULATOR
        hf.attrs["generator_version"] = GENERATOR_VERSION
        for key, value in source.items():
            hf.attrs[key] = value
        hf.attrs["seed"] = spec.seed
        hf.attrs[PRODUCED_BY] = produced_by()
    return WrittenVolume(path, spec, time.perf_counter() - start)


def _check_volumes(volumes) -> int:
    if isinstance(volumes, bool) or int(volumes) != volumes or not 1 <= volumes <= MAX_VOLUMES:
        raise ValueError(f"volumes must be an integer in [1, {MAX_VOLUMES}], got {volumes!r}")
    return int(volumes)


def write_volumes(anatomy: str, out_dir, volumes: int = 2, slices: Optional[int] = None,
                  coils: Optional[int] = None, shape=None, recon_size=None, seed: int = 0,
                  acquisitions: Optional[Sequence[str]] = None) -> List[WrittenVolume]:
    """Like :func:`write_dataset` but returns per-file summaries (used by the CLI)."""
    n = _check_volumes(volumes)
    specs = [make_spec(anatomy, i, seed, shape=shape, recon_size=recon_size, slices=slices, coils=coils,
                       acquisitions=acquisitions) for i in range(n)]  # validates everything before writing
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a directory")
    anatomy_attrs(specs[0])  # a missing anatomy file stops before the folder is made
    out.mkdir(parents=True, exist_ok=True)
    return [write_volume(spec, out) for spec in specs]


def write_dataset(anatomy: str, out_dir, volumes: int = 2, slices: Optional[int] = None,
                  coils: Optional[int] = None, shape=None, recon_size=None, seed: int = 0,
                  acquisitions: Optional[Sequence[str]] = None) -> List[Path]:
    """Write ``volumes`` simulated fastMRI multicoil files of ``anatomy`` ("knee" or "brain") to ``out_dir``.

    Args:
        anatomy: "knee" (procedural coronal knee, CORPD_FBK/CORPDFS_FBK) or "brain" (MNI152 axial,
            AXT1/AXT2/AXFLAIR/AXT1POST; needs the anatomy file, :mod:`varnet_ds.sim.anatomy`).
        out_dir: folder (created if missing).
        volumes: number of files.
        slices: slices per volume (default: random, knee 10..16, brain 8..16).
        coils: coils (default: knee 15, brain 16 or 20).
        shape: k-space ``(H, W)`` or "HxW" (default: knee 640x368, brain 640x320 or narrower FLAIR).
        recon_size: target ``(rH, rW)`` (default ``(H // 2, min(H // 2, W))``).
        seed: dataset seed; file names and contents are a deterministic function of ``(seed, index)``.
        acquisitions: acquisitions to cycle over the volumes (default: all of the anatomy's).

    Returns:
        The written file paths, in volume order.
    """
    return [v.path for v in write_volumes(anatomy, out_dir, volumes, slices, coils, shape, recon_size, seed,
                                          acquisitions)]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m varnet_ds.sim.synth", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("anatomy", choices=ANATOMIES)
    p.add_argument("--out", type=Path, help="output folder (optional with --preview)")
    p.add_argument("--volumes", type=int, default=2, help="number of volumes (default 2)")
    p.add_argument("--slices", type=int, help="slices per volume (default random: knee 10-16, brain 8-16)")
    p.add_argument("--coils", type=int, help="coils (default knee 15, brain 16 or 20)")
    p.add_argument("--shape", help="k-space HxW (default knee 640x368, brain 640x320 / narrower FLAIR)")
    p.add_argument("--recon", help="target HxW (default H/2 x min(H/2, W))")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--acquisitions", nargs="+", metavar="ACQ",
                   help="acquisitions to cycle: knee " + "/".join(ACQUISITION_CONTRAST["knee"]) + "; brain "
                   + "/".join(ACQUISITION_CONTRAST["brain"]))
    p.add_argument("--preview", type=Path, help="also render a PNG of every anatomy and contrast")
    return p


@entry_point
def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry point; returns the process exit code."""
    args = _parser().parse_args(argv)
    if args.out is None and args.preview is None:
        print("error: give --out DIR (to write files) and/or --preview PNG", file=sys.stderr)
        return 2
    start = time.perf_counter()
    try:
        if args.out is not None:
            written = write_volumes(args.anatomy, args.out, args.volumes, args.slices, args.coils, args.shape,
                                    args.recon, args.seed, args.acquisitions)
            print(f"wrote {len(written)} {args.anatomy} volume(s) to {args.out} "
                  f"in {time.perf_counter() - start:.1f} s")
            for v in written:
                print("  " + v.describe())
        if args.preview is not None:
            from varnet_ds.sim.synth_preview import render_preview

            t0 = time.perf_counter()
            render_preview(args.preview, seed=args.seed, shape=args.shape, coils=args.coils)
            print(f"preview: {args.preview} in {time.perf_counter() - t0:.1f} s")
    except (ValueError, AnatomySourceError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

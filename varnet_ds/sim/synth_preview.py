"""Preview figure of the simulator: every anatomy/contrast, targets plus one coil image and its k-space.

Columns: knee CORPD_FBK, CORPDFS_FBK, brain AXT1, AXT2, AXFLAIR, AXT1POST. Rows: three slices of the
``reconstruction_rss`` target (spread through the volume), the full-FOV magnitude of coil 1 (readout
oversampling and coil shading visible) and ``log |k|`` of coil 1 (zero phase-encode columns visible).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from varnet_ds.sim import mri_physics
from varnet_ds.sim.simulate import make_spec, simulate_volume

PANELS = (("knee", "CORPD_FBK"), ("knee", "CORPDFS_FBK"), ("brain", "AXT1"), ("brain", "AXT2"),
          ("brain", "AXFLAIR"), ("brain", "AXT1POST"))


def render_preview(path, seed: int = 0, shape=None, coils: Optional[int] = None, slices: int = 3) -> Path:
    """Simulate one small volume per contrast (nothing written to disk) and save the figure as PNG.

    Args:
        path: output PNG path (folders are created).
        seed: dataset seed.
        shape: k-space ``(H, W)`` or "HxW" for both anatomies (default: each anatomy's fastMRI size).
        coils: coil count (default: each anatomy's).
        slices: target rows to show (slices simulated per volume).

    Returns:
        The PNG path.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    rows = slices + 2
    fig, axes = plt.subplots(rows, len(PANELS), figsize=(2.4 * len(PANELS), 2.4 * rows + 0.6), squeeze=False)
    for col, (anatomy, acq) in enumerate(PANELS):
        spec = make_spec(anatomy, col, seed, shape=shape, slices=slices, coils=coils, acquisitions=[acq])
        out = list(simulate_volume(spec))
        vmax = max(float(np.percentile(t, 99.7)) for _, t in out)
        for row, (_, target) in enumerate(out):
            axes[row, col].imshow(target, cmap="gray", vmin=0, vmax=vmax)
        axes[0, col].set_title(f"{anatomy} {acq}\n{spec.num_coils} coils, {spec.shape[0]}x{spec.shape[1]}",
                               fontsize=9)
        kspace = out[len(out) // 2][0]
        coil = np.abs(mri_physics.ifft2c(kspace[0]))
        axes[slices, col].imshow(coil, cmap="gray", vmin=0, vmax=float(np.percentile(coil, 99.7)))
        logk = np.log10(np.abs(kspace[0]) + 1e-30)
        axes[slices + 1, col].imshow(logk, cmap="gray", vmin=float(np.percentile(logk[logk > -29], 5)))
    labels = [f"target, slice {i + 1}/{slices}" for i in range(slices)] + ["coil 1 (full FOV)", "coil 1 log|k|"]
    for row, label in enumerate(labels):
        axes[row, 0].set_ylabel(label, fontsize=9)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"varnet_ds.sim.synth preview (seed {seed}): fastMRI-format multicoil simulation", fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path

"""Reconstruction panels: the same brain slices reconstructed by each run, with target and error maps.

Preferred source: each run's ``recon/**/*.h5`` (``python -m varnet_ds.evaluate``; dataset ``reconstruction``
``[slices, H, W]``, one file per volume, named like the data file) against ``reconstruction_rss`` of the brain
data folder ``data.transfer_path`` from the run's ``config.yaml``. Fallback: every run's last
``images/val_brain_epoch*.png`` panel, stacked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from varnet_ds.analysis.plots import new_figure, save_figure
from varnet_ds.analysis.runs import Run, cfg_get

TARGET_KEYS = ("reconstruction_rss", "reconstruction_esc")


class Panels(NamedTuple):
    """A written panel figure and its caption."""

    path: Path
    caption: str


def recon_files(run: Run) -> Dict[str, Path]:
    """``relative path under recon/`` -> file, for the run's reconstruction h5 files."""
    if run.folder is None or not (run.folder / "recon").is_dir():
        return {}
    root = run.folder / "recon"
    return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*.h5"))}


def find_transfer_dir(run: Run) -> Optional[Path]:
    """The brain data folder of ``data.transfer_path``: absolute, or relative to the working directory, the
    run folder or one of its parents (configs often hold repo-relative paths such as ``runs/demo-data/brain``)."""
    value = cfg_get(run.config, "data.transfer_path")
    if not value:
        return None
    path = Path(str(value)).expanduser()
    if path.is_absolute():
        return path if path.is_dir() else None
    bases = [Path.cwd()] + ([run.folder.resolve(), *run.folder.resolve().parents] if run.folder else [])
    return next((b / path for b in bases if (b / path).is_dir()), None)


def _center_crop(img: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    h, w = img.shape[-2:]
    top, left = (h - shape[0]) // 2, (w - shape[1]) // 2
    return img[..., top:top + shape[0], left:left + shape[1]]


def _slice_ssim(target: np.ndarray, recon: np.ndarray, data_range: float) -> float:
    from skimage.metrics import structural_similarity

    return float(structural_similarity(target, recon, data_range=data_range))


def _load_target(path: Path) -> Optional[Tuple[str, np.ndarray]]:
    import h5py

    with h5py.File(path, "r") as f:
        key = next((k for k in TARGET_KEYS if k in f), None)
        return None if key is None else (key, np.asarray(f[key], dtype=np.float32))


def _load_recon(path: Path) -> np.ndarray:
    import h5py

    with h5py.File(path, "r") as f:
        if "reconstruction" not in f:
            raise KeyError(f"{path}: no 'reconstruction' dataset (keys: {sorted(f.keys())})")
        return np.asarray(f["reconstruction"], dtype=np.float32)


def h5_panels(runs: Sequence[Run], path: Path, notes: List[str], max_volumes: int = 2) -> Optional[Panels]:
    """Middle slices of up to ``max_volumes`` brain volumes every run reconstructed, with target and
    ``|recon - target|`` maps (errors on one shared scale per row); ``None`` (noted) when not possible."""
    files = [recon_files(r) for r in runs]
    if not all(files):
        if any(files):
            notes.append("recon/: only " + ", ".join(r.label for r, f in zip(runs, files) if f)
                         + " has reconstruction files; using the runs' logged brain images")
        return None
    common = sorted(set.intersection(*(set(f) for f in files)))
    if not common:
        notes.append("recon/: the runs reconstructed no common volume; using the runs' logged brain images")
        return None
    target_dir = find_transfer_dir(runs[0])
    if target_dir is None:
        notes.append(f"recon/: brain data folder data.transfer_path = "
                     f"{cfg_get(runs[0].config, 'data.transfer_path')!r} not found; using the logged brain images")
        return None
    rows = []
    target_keys: set = set()
    for key in common:
        if len(rows) == max_volumes:
            break
        target_path = target_dir / Path(key).name
        if not target_path.is_file():
            notes.append(f"recon/{key}: no target file {target_path}")
            continue
        loaded = _load_target(target_path)
        if loaded is None:
            notes.append(f"{target_path}: none of {list(TARGET_KEYS)} present; cannot show recon/{key}")
            continue
        target_keys.add(loaded[0])
        target = loaded[1]
        recons = [_load_recon(f[key]) for f in files]
        bad = [r.label for r, rec in zip(runs, recons) if rec.ndim != 3 or rec.shape[0] != target.shape[0]]
        if bad:
            notes.append(f"recon/{key}: slice count differs from the target {target_path} for {', '.join(bad)}")
            continue
        shape = (min(a.shape[-2] for a in [target, *recons]), min(a.shape[-1] for a in [target, *recons]))
        s = target.shape[0] // 2
        tgt = _center_crop(target, shape)
        vmax = float(tgt.max()) or 1.0
        slices = [_center_crop(rec, shape)[s] for rec in recons]
        rows.append((key, s, tgt[s], slices, vmax))
    if not rows:
        return None
    ncols = 1 + 2 * len(runs)
    fig, axes = new_figure(ncols, width=2.4, height=2.9, nrows=len(rows))
    for ax_row, (key, s, tgt, slices, vmax) in zip(axes, rows):
        errors = [np.abs(rec - tgt) for rec in slices]
        emax = max(float(e.max()) for e in errors) or 1.0
        ax_row[0].imshow(tgt, cmap="gray", vmin=0, vmax=vmax)
        ax_row[0].set_title(f"target\n{Path(key).name} s{s}", fontsize=8)
        for i, (run, rec, err) in enumerate(zip(runs, slices, errors)):
            ssim = _slice_ssim(tgt, rec, vmax)
            nmse = float(np.sum(err ** 2) / max(float(np.sum(tgt ** 2)), 1e-12))
            ax_row[1 + i].imshow(rec, cmap="gray", vmin=0, vmax=vmax)
            ax_row[1 + i].set_title(f"{run.label}\nSSIM {ssim:.3f} NMSE {nmse:.4f}", fontsize=8)
            ax_row[1 + len(runs) + i].imshow(err, cmap="inferno", vmin=0, vmax=emax)
            ax_row[1 + len(runs) + i].set_title(f"|error| {run.label}\n(scale 0–{emax:.3g})", fontsize=8)
        for ax in ax_row:
            ax.axis("off")
    caption = (f"Middle slice of {len(rows)} brain volume(s) reconstructed by every run (`recon/*.h5`) next to the "
               f"{'/'.join(sorted(target_keys))} target from {target_dir}; error maps share one scale per row. "
               "Slice SSIM uses the volume maximum of the cropped target as data range.")
    return Panels(save_figure(fig, path), caption)


def image_panels(runs: Sequence[Run], path: Path, notes: List[str]) -> Optional[Panels]:
    """Each run's last logged brain panel (``images/val_brain_epoch*.png``), stacked; ``None`` if none has one."""
    import matplotlib.image as mpimg

    found = [(run, run.last_image("val_brain")) for run in runs]
    missing = [run.label for run, item in found if item is None and run.folder is not None]
    found = [(run, item) for run, item in found if item is not None]
    if missing:
        notes.append(f"no logged brain image (images/val_brain_epoch*.png) for {', '.join(missing)}")
    if not found:
        return None
    epochs = {item[0] for _, item in found}
    if len(epochs) > 1:
        notes.append("the logged brain images come from different epochs: "
                     + ", ".join(f"{run.label} epoch {item[0]}" for run, item in found))
    images = [mpimg.imread(str(item[1])) for _, item in found]
    aspect = max(img.shape[1] / img.shape[0] for img in images)
    fig, axes = new_figure(1, width=min(12.0, 3.2 * aspect), height=3.4, nrows=len(found))
    for ax, (run, (epoch, img_path)), img in zip(axes[:, 0], found, images):
        ax.imshow(img)
        ax.set_title(f"{run.label}: {img_path.name} (epoch {epoch})", fontsize=10)
        ax.axis("off")
    caption = ("Last brain panel each run logged during training (the panels the trainer logs for its validation "
               "sample, e.g. zero-filled, reconstruction, target, error). No `recon/*.h5` reconstructions were "
               "available for all runs; produce them with `python -m varnet_ds.evaluate` for slice-matched panels.")
    return Panels(save_figure(fig, path), caption)


def recon_panels(runs: Sequence[Run], path: Path, notes: List[str]) -> Optional[Panels]:
    """h5 reconstruction panels when every run has ``recon/`` files, else the logged images; ``None`` if neither."""
    panels = h5_panels(runs, path, notes)
    if panels is None:
        panels = image_panels(runs, path, notes)
    if panels is None:
        notes.append("no reconstruction panels: no run has recon/*.h5 files or logged brain images")
    return panels


"""Offline reconstruction and scoring of a data folder: fastMRI-format HDF5 per volume + ``metrics.json``.

The CLI is :mod:`varnet_ds.evaluate`; this module holds the work (:func:`evaluate_folder`).
``OUT/<input file name>`` holds ``reconstruction`` (float32 ``[slices, rH, rW]``), the fastMRI submission format:
the full-size VarNet output centre-cropped to the header's recon size, or square to the output width when the
output is narrower than that ("FLAIR 203", as ``VarNetModule.test_step``). Every write goes to a hidden temporary
file that is renamed into place, so a killed run never leaves a half-written file under a final name.

``OUT/metrics.json`` scores every volume that has ``reconstruction_rss`` exactly as ``fastmri.evaluate`` scores
``OUT`` against the data folder: both images centre-cropped to ``(W, W)`` with ``W`` the target width, then SSIM,
PSNR and NMSE per volume with ``maxval`` the cropped target's maximum; means and ``2 * stddev`` over volumes.
Volumes without a target (test data) are reconstructed but not scored; with no ``--acceleration`` they use the
file's stored ``mask`` when there is one.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import h5py
import numpy as np
import torch
from fastmri.data.transforms import center_crop
from torch.utils.data import DataLoader

from varnet_ds.data.check import check_folder
from varnet_ds.data.datasets import VarNetTransform, build_eval_dataset, volume_table
from varnet_ds.data.fastmri_file import TARGET_KEY, DataError
from varnet_ds.eval.metrics import evaluation_crop, summarize, volume_metrics
from varnet_ds.files import atomic_path, atomic_write_json, strict_json
from varnet_ds.model.step import model_inputs
from varnet_ds.model.varnet import VarNetDS
from varnet_ds.model.weights import model_sizes
from varnet_ds.run_folder import VolumeRow
from varnet_ds.system import resolve_device

PathLike = Union[str, Path]
DEFAULT_ACCELERATION = 4


class StoredMaskTransform:
    """Use the file's stored ``mask`` (test data, k-space already undersampled) when present, else ``fallback``."""

    def __init__(self, fallback: Callable) -> None:
        self.fallback = fallback
        self.stored = VarNetTransform(None, use_seed=True)

    def __call__(self, kspace, mask, target, attrs, fname, slice_num):  # noqa: D102
        transform = self.stored if mask is not None else self.fallback
        return transform(kspace, mask, target, attrs, fname, slice_num)


def mask_summary(mask: np.ndarray) -> Tuple[int, float]:
    """(acceleration, centre fraction) of a stored 1-D column mask: width / sampled, contiguous centre run / width."""
    m = np.asarray(mask).reshape(-1) > 0
    width, centre = m.size, m.size // 2
    if not m[centre]:
        run = 0
    else:
        left = centre - int(np.argmin(m[:centre][::-1])) if not m[:centre].all() else 0
        right = centre + int(np.argmin(m[centre:])) if not m[centre:].all() else width
        run = right - left
    return int(round(width / max(int(m.sum()), 1))), run / width


def _mask_attrs(path: PathLike, mask_type: str, center_fraction: float, acceleration: Optional[int]) -> dict:
    """HDF5 attributes describing the mask a volume was reconstructed with (stored mask or the flags')."""
    with h5py.File(path, "r") as hf:
        stored = np.asarray(hf["mask"]) if acceleration is None and "mask" in hf else None
    if stored is None:
        return {"acceleration": acceleration or DEFAULT_ACCELERATION, "center_fraction": center_fraction,
                "mask_type": mask_type, "mask_source": "flags"}
    acc, cf = mask_summary(stored)
    return {"acceleration": acc, "center_fraction": cf, "mask_type": "stored", "mask_source": "file"}


def submission_crop(output_hw: Sequence[int], recon_size: Sequence[int]) -> Tuple[int, int]:
    """fastMRI's test-time crop: ``recon_size[:2]``, or square to the output width when narrower (FLAIR 203)."""
    width = int(output_hw[-1])
    if width < int(recon_size[1]):
        return width, width
    return int(recon_size[0]), int(recon_size[1])


def write_reconstruction(path: PathLike, recon: np.ndarray, attrs: Mapping[str, Any]) -> None:
    """Write ``reconstruction`` (float32 ``[slices, h, w]``) and ``attrs`` to ``path`` via a temporary file."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as hf:
        hf.create_dataset("reconstruction", data=np.asarray(recon, dtype=np.float32))
        for key, value in attrs.items():
            hf.attrs[key] = value


def score_volume(data_file: PathLike, recon: np.ndarray) -> Optional[Dict[str, float]]:
    """fastmri.evaluate's scores of one reconstruction against the file's ``reconstruction_rss`` (None: no target)."""
    with h5py.File(data_file, "r") as hf:
        if TARGET_KEY not in hf:
            return None
        target = hf[TARGET_KEY][()]
    target, recon = evaluation_crop(target, recon)
    return volume_metrics(target, recon, maxval=None)


def _summary_rows(results: Sequence[VolumeRow]) -> Tuple[Optional[dict], Dict[str, dict]]:
    if not results:
        return None, {}
    rows = summarize(results)
    strip = ("acquisition", "acceleration")
    clean = [{k: v for k, v in r.items() if k not in strip} for r in rows]
    per_acq = {r["acquisition"]: c for r, c in zip(rows, clean) if "acquisition" in r and "acceleration" not in r}
    return clean[0], per_acq


def format_summary(metrics: Mapping[str, Any]) -> str:
    """Fixed-width table of the overall and per-acquisition means (+/- 2 std) of ``metrics.json``."""
    if metrics.get("overall") is None:
        return f"no volume with '{TARGET_KEY}': reconstructions written, nothing scored"
    groups = [("overall", metrics["overall"]), *sorted(metrics["per_acquisition"].items())]

    def cell(row, name, fmt):
        std = row[f"{name}_2std"]
        return f"{row[name]:{fmt}}" + ("" if std is None or not math.isfinite(std) else f" +/- {std:{fmt}}")

    table = [("group", "volumes", "SSIM", "PSNR", "NMSE")]
    table += [(g, str(r["num_volumes"]), cell(r, "ssim", ".4f"), cell(r, "psnr", ".2f"), cell(r, "nmse", ".4g"))
              for g, r in groups]
    widths = [max(len(row[i]) for row in table) for i in range(5)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


@torch.no_grad()
def evaluate_folder(
    model: VarNetDS,
    data_dir: PathLike,
    out_dir: PathLike,
    mask_type: str = "equispaced",
    center_fraction: float = 0.08,
    acceleration: Optional[int] = DEFAULT_ACCELERATION,
    device: Union[str, torch.device] = "cpu",
    max_volumes: Optional[int] = None,
    batch_slices: int = 4,
    num_workers: int = 0,
    skip_bad: bool = False,
    source: Optional[str] = None,
    log: Optional[Callable[[str], None]] = print,
) -> Dict[str, Any]:
    """Reconstruct every volume of ``data_dir`` into ``out_dir`` and score those with a target.

    Args:
        model: A VarNet (e.g. from :func:`load_model`); it is moved to ``device`` and run in eval mode.
        data_dir: Folder of fastMRI multicoil ``.h5`` files (validated with ``check_folder``, headers only).
        out_dir: Output folder (created); must differ from ``data_dir``.
        mask_type: fastMRI mask type (masks are seeded by file name: identical slices, runs and validation).
        center_fraction: Fraction of fully sampled centre columns.
        acceleration: Undersampling factor; ``None``: the file's stored ``mask`` where present, else
            :data:`DEFAULT_ACCELERATION` with ``mask_type`` / ``center_fraction``.
        device: ``cpu`` | ``cuda`` | ``cuda:N``.
        max_volumes: Only the first N volumes (file-name order).
        batch_slices: Slices of one volume per forward pass (bounds memory; results do not depend on it).
        num_workers: DataLoader workers reading and masking slices.
        skip_bad: Skip files that fail the check instead of stopping at the first one.
        source: Checkpoint name for the HDF5 attributes (default: ``model.source_checkpoint``).
        log: Called with one progress line per volume (``None``: silent).

    Returns:
        The content written to ``out_dir/metrics.json``: ``settings``, ``overall`` (None when nothing was
        scored), ``per_acquisition``, ``per_volume`` (scored volumes) and ``unscored`` (``{fname, reason}``).

    Raises:
        DataError: missing/empty data folder or a bad file (names it). ValueError: bad arguments.
    """
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    if batch_slices < 1:
        raise ValueError(f"batch_slices = {batch_slices}: must be >= 1")
    if acceleration is not None and acceleration < 1:
        raise ValueError(f"acceleration = {acceleration}: must be >= 1 (or None for the stored masks)")
    report = check_folder(data_dir, require_target=False, skip_bad=skip_bad, scan_values=False)
    if not report.volumes:
        raise DataError(data_dir, f"no usable volumes; bad files: {report.bad}")
    if out_dir.resolve() == data_dir.resolve():
        raise ValueError(f"--out {out_dir} is the data folder: the outputs would overwrite the inputs")
    dev = resolve_device(device)
    dataset = build_eval_dataset(data_dir, mask_type, center_fraction, acceleration or DEFAULT_ACCELERATION,
                                 max_volumes=max_volumes, skip_files=report.bad_files)
    if acceleration is None:
        dataset.transform = StoredMaskTransform(dataset.transform)
    table = volume_table(dataset)
    by_volume: Dict[str, List[int]] = {}
    for i, (fname, _, _) in enumerate(dataset.raw_samples):
        by_volume.setdefault(Path(fname).name, []).append(i)
    chunks = [idx[k:k + batch_slices] for idx in by_volume.values() for k in range(0, len(idx), batch_slices)]
    loader = DataLoader(dataset, batch_sampler=chunks, num_workers=num_workers)

    out_dir.mkdir(parents=True, exist_ok=True)
    source = source or getattr(model, "source_checkpoint", "unknown")
    was_training = model.training
    model.to(dev).eval()
    results: List[VolumeRow] = []
    unscored: List[Dict[str, str]] = []
    pending: Dict[int, np.ndarray] = {}
    start = time.time()
    for batch in loader:
        name = batch.fname[0]
        info = table[name]
        output = model(*model_inputs(batch, dev))
        output = center_crop(output, submission_crop(output.shape[-2:], info["recon_size"]))
        for i, slice_num in enumerate(batch.slice_num.tolist()):
            pending[int(slice_num)] = output[i].float().cpu().numpy()
        if len(pending) < info["num_slices"]:
            continue
        recon = np.stack([pending[s] for s in sorted(pending)]).astype(np.float32)
        pending = {}
        if not np.isfinite(recon).all():
            raise DataError(info["path"], "reconstruction has NaN/inf values; check the k-space with "
                                          f"`python -m varnet_ds.data.check {data_dir}` and the weights {source}")
        acq = str(info["acquisition"] or "unknown")
        mask_attrs = _mask_attrs(info["path"], mask_type, center_fraction, acceleration)
        acc = mask_attrs["acceleration"]
        write_reconstruction(out_dir / name, recon, {**mask_attrs, "checkpoint": str(source), "acquisition": acq,
                                                     "precision": str(getattr(model, "precision", "fp32"))})
        try:
            scores = score_volume(info["path"], recon)
            reason = f"no '{TARGET_KEY}'"
        except ValueError as err:
            scores, reason = None, str(err)
        if scores is None:
            unscored.append({"fname": name, "reason": reason})
            text = f"not scored ({reason})"
        else:
            results.append(VolumeRow(name, acq, int(acc), int(recon.shape[0]), **scores))
            text = f"ssim={scores['ssim']:.4f} psnr={scores['psnr']:.2f} nmse={scores['nmse']:.4g}"
        if log is not None:
            log(f"[{len(results) + len(unscored)}/{len(table)}] {name} {acq} {recon.shape[0]} slices x{acc} "
                f"-> {tuple(recon.shape[1:])}: {text} ({time.time() - start:.1f}s)")
    if was_training:
        model.train()

    overall, per_acq = _summary_rows(results)
    metrics = {
        "settings": {
            "data": str(data_dir), "out": str(out_dir), "checkpoint": str(source),
            "checkpoint_step": getattr(model, "checkpoint_step", None), "mask_type": mask_type,
            "center_fraction": center_fraction, "acceleration": acceleration, "device": str(dev),
            "precision": str(getattr(model, "precision", "fp32")), "batch_slices": batch_slices,
            "max_volumes": max_volumes, "model": model_sizes(model), "num_volumes": len(table),
            "skipped_files": report.bad_files,
            "metric_definition": "fastmri.evaluate: (W, W) centre crop, W = target width; maxval = target max",
        },
        "overall": overall,
        "per_acquisition": per_acq,
        "per_volume": [r._asdict() for r in results],
        "unscored": unscored,
    }
    atomic_write_json(out_dir / "metrics.json", metrics)
    return strict_json(metrics)

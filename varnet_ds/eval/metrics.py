"""Per-volume SSIM/PSNR/NMSE exactly as ``fastmri.evaluate`` defines them, gathered across ranks and summarised.

Definitions (``fastmri.evaluate``, reused here, not re-implemented), for one volume of S centre-cropped slices:

- NMSE = ||target - recon||^2 / ||target||^2 over the whole volume;
- PSNR = skimage ``peak_signal_noise_ratio`` over the whole volume with ``data_range = maxval``;
- SSIM = mean over slices of skimage ``structural_similarity(target[s], recon[s], data_range=maxval)``;

where ``maxval`` is the volume maximum: the HDF5 attribute ``max`` during validation (as fastMRI's
``MriModule``), or ``target.max()`` when it is ``None`` (as the ``fastmri.evaluate`` CLI). The evaluation crop is
fastMRI's: both images centre-cropped to ``(W, W)`` with ``W`` the target width (:func:`evaluation_crop`).

Volumes are keyed by ``(fname, acceleration)``: a validation set evaluated at 4x and 8x yields two results per
file, and every mean below is over those (volume, acceleration) pairs.

Distributed use (each rank owns whole volumes, e.g. fastMRI's ``VolumeSampler``)::

    acc = VolumeAccumulator(owned=sampler_volume_names)
    for batch in loader:                        # per slice
        acc.add(fname, slice_num, recon, target, max_value, acquisition, acceleration)
    results = gather(acc.compute_local())       # every rank gets all volumes
    rows = summarize(results)                   # rows for metrics.jsonl / W&B
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
from fastmri.data.transforms import center_crop

from varnet_ds.distributed import all_gather_object
from varnet_ds.run_folder import VolumeRow

METRIC_NAMES = ("ssim", "psnr", "nmse")


class MetricStats(NamedTuple):
    """Mean over volumes and fastMRI's reported spread ``2 * sample stddev`` (``runstats``, ddof=1).

    ``two_std`` is NaN when ``count < 2`` (the sample stddev is undefined there).
    """

    mean: float
    two_std: float
    count: int


def evaluation_crop(target: np.ndarray, recon: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Centre-crop target and reconstruction to ``(W, W)``, ``W = target.shape[-1]`` (``fastmri.evaluate``).

    Args:
        target: ``[..., H, W]`` ground truth (e.g. ``reconstruction_rss`` of one volume, ``[S, H, W]``).
        recon: ``[..., H', W']`` reconstruction with ``H', W' >= W``.

    Returns:
        ``(target, recon)`` both ``[..., W, W]``.
    """
    width = target.shape[-1]
    for name, arr in (("target", target), ("reconstruction", recon)):
        if arr.shape[-2] < width or arr.shape[-1] < width:
            raise ValueError(
                f"{name} of shape {tuple(arr.shape)} is smaller than the evaluation crop ({width}, {width})"
            )
    return center_crop(target, (width, width)), center_crop(recon, (width, width))


def volume_metrics(target: np.ndarray, recon: np.ndarray, maxval: Optional[float] = None) -> Dict[str, float]:
    """SSIM, PSNR and NMSE of one (already cropped) volume, as ``fastmri.evaluate.{ssim,psnr,nmse}``.

    Args:
        target: ``[S, H, W]`` ground-truth magnitude images.
        recon: ``[S, H, W]`` reconstruction.
        maxval: data range for PSNR and SSIM (the volume max, file attribute ``max``); ``None`` means
            ``target.max()``.

    Returns:
        ``{"ssim": float, "psnr": float, "nmse": float}``.
    """
    target = np.asarray(target)
    recon = np.asarray(recon)
    if target.ndim != 3:
        raise ValueError(f"target must be [slices, H, W], got shape {target.shape}")
    if recon.shape != target.shape:
        raise ValueError(f"reconstruction shape {recon.shape} != target shape {target.shape}")
    data_range = float(target.max() if maxval is None else maxval)
    if not math.isfinite(data_range) or data_range <= 0:
        raise ValueError(f"maxval (volume max, data range) must be finite and > 0, got {data_range}")
    if maxval is not None:
        maxval = data_range  # else fastmri uses target.max() in the target's dtype, as its CLI does
    # imported here: scikit-image and scipy.stats cost ~1.4 s of start-up that a run without validation never needs
    from fastmri import evaluate

    try:
        ssim = evaluate.ssim(target, recon, maxval=maxval)
    except ValueError as err:
        raise ValueError(f"SSIM failed for volume of shape {target.shape}: {err}") from err
    return {
        "ssim": float(np.asarray(ssim).item()),  # numpy 2: fastmri's ssim returns a 1-element array
        "psnr": float(evaluate.psnr(target, recon, maxval=maxval)),
        "nmse": float(evaluate.nmse(target, recon)),
    }


def _volume_name(fname: Any) -> str:
    # fastMRI's VolumeSampler lists full paths, while samples carry base names: compare base names.
    return Path(str(fname)).name


def _slice_array(x: Any, what: str, fname: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        arr = x.detach().to(device="cpu", dtype=torch.float32).numpy().copy()
    else:
        arr = np.array(x, dtype=np.float32, copy=True)
    while arr.ndim > 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise ValueError(f"{fname}: {what} must be one slice [H, W], got shape {arr.shape}")
    return arr


class VolumeAccumulator:
    """Collects per-slice reconstructions on one rank and turns complete volumes into :class:`VolumeRow`.

    Slices live on the CPU as float32 numpy arrays (a 320x320 slice pair is 0.8 MB). Repeats of
    ``(fname, acceleration, slice_num)`` (padding added by distributed samplers) are ignored, as are files
    not in ``owned``.

    Args:
        owned: names of the volumes this rank owns (paths or base names; compared by base name), or ``None``
            to keep every file.
    """

    def __init__(self, owned: Optional[Iterable[str]] = None) -> None:
        self.owned = None if owned is None else {_volume_name(f) for f in owned}
        self._slices: Dict[Tuple[str, int], Dict[int, Tuple[np.ndarray, np.ndarray]]] = {}
        self._meta: Dict[Tuple[str, int], Tuple[str, float]] = {}
        self.num_duplicates = 0  # slices ignored as repeats
        self.num_not_owned = 0  # slices ignored because another rank owns the volume

    def __len__(self) -> int:
        """Number of distinct slices held."""
        return sum(len(v) for v in self._slices.values())

    def add(
        self,
        fname: str,
        slice_num: int,
        recon: Any,
        target: Any,
        max_value: float,
        acquisition: str,
        acceleration: int,
    ) -> None:
        """Store one centre-cropped slice.

        Args:
            fname: volume file name (base name or path).
            slice_num: slice index within the volume.
            recon: ``[H, W]`` reconstruction (tensor or array; a leading ``[1, ...]`` batch dim is allowed).
            target: ``[H, W]`` ground truth, same shape.
            max_value: volume maximum (file attribute ``max``), the data range of PSNR/SSIM.
            acquisition: e.g. ``CORPD_FBK`` or ``AXT2``.
            acceleration: undersampling factor, e.g. 4.
        """
        name = _volume_name(fname)
        if self.owned is not None and name not in self.owned:
            self.num_not_owned += 1
            return
        key = (name, int(acceleration))
        slice_num = int(slice_num)
        slices = self._slices.setdefault(key, {})
        if slice_num in slices:
            self.num_duplicates += 1
            return
        recon_arr = _slice_array(recon, "reconstruction", name)
        target_arr = _slice_array(target, "target", name)
        if recon_arr.shape != target_arr.shape:
            raise ValueError(f"{name} slice {slice_num}: reconstruction {recon_arr.shape} != target "
                             f"{target_arr.shape} (crop both to the target size first)")
        meta = (str(acquisition), float(max_value))
        if key in self._meta:
            if self._meta[key] != meta:
                raise ValueError(f"{name} slice {slice_num}: (acquisition, max) = {meta} differs from earlier "
                                 f"slices {self._meta[key]}")
            first = next(iter(slices.values()))[0]
            if first.shape != target_arr.shape:
                raise ValueError(f"{name} slice {slice_num}: shape {target_arr.shape} differs from earlier slices "
                                 f"{first.shape}")
        self._meta[key] = meta
        slices[slice_num] = (target_arr, recon_arr)

    def compute_local(self) -> List[VolumeRow]:
        """Metrics of every volume held by this rank (slices stacked in slice order), sorted."""
        results = []
        for (name, accel), slices in sorted(self._slices.items()):
            if not slices:
                continue
            order = sorted(slices)
            target = np.stack([slices[s][0] for s in order])
            recon = np.stack([slices[s][1] for s in order])
            acquisition, maxval = self._meta[(name, accel)]
            m = volume_metrics(target, recon, maxval)
            results.append(VolumeRow(name, acquisition, accel, len(order), m["ssim"], m["psnr"], m["nmse"]))
        return results


def gather(results: Sequence[VolumeRow]) -> List[VolumeRow]:
    """All ranks' results on every rank, de-duplicated by ``(fname, acceleration)`` and sorted.

    Uses ``torch.distributed.all_gather_object`` when a process group is initialised (a collective: call it
    on every rank; with NCCL the current CUDA device must be set), otherwise returns the input de-duplicated.
    """
    merged = [VolumeRow(*r) for r in all_gather_object([tuple(r) for r in results])]
    unique: Dict[Tuple[str, int], VolumeRow] = {}
    for r in merged:
        key = (r.fname, r.acceleration)
        if key in unique:
            if unique[key].num_slices != r.num_slices:
                warnings.warn(
                    f"volume {r.fname} x{r.acceleration} was evaluated on several ranks with different slice "
                    f"counts ({unique[key].num_slices} vs {r.num_slices}); pass `owned` to VolumeAccumulator",
                    RuntimeWarning,
                    stacklevel=2,
                )
            continue
        unique[key] = r
    return [unique[k] for k in sorted(unique)]


def aggregate_stats(values: Sequence[float]) -> MetricStats:
    """Mean and ``2 * sample stddev`` of per-volume values (what ``fastmri.evaluate`` prints as ``+/-``)."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"aggregate_stats needs a non-empty 1-D sequence, got shape {arr.shape}")
    two_std = 2.0 * float(np.std(arr, ddof=1)) if arr.size > 1 else float("nan")
    return MetricStats(float(arr.mean()), two_std, int(arr.size))


def _row(results: Sequence[VolumeRow], **keys: Any) -> Dict[str, Any]:
    row: Dict[str, Any] = dict(keys)
    for name in METRIC_NAMES:
        stats = aggregate_stats([getattr(r, name) for r in results])
        row[name] = stats.mean
        row[f"{name}_2std"] = stats.two_std
    row["num_volumes"] = len(results)
    return row


def summarize(results: Sequence[VolumeRow]) -> List[Dict[str, Any]]:
    """Rows for ``metrics.jsonl``: overall, per acquisition, per acceleration, per acquisition x acceleration.

    Every row has ``ssim, psnr, nmse`` (means over volumes), ``ssim_2std, psnr_2std, nmse_2std`` (2 * sample
    stddev, NaN for a single volume) and ``num_volumes`` (number of (volume, acceleration) results). Rows, in
    this order:

    - overall: no extra key;
    - one per acquisition (sorted): ``"acquisition": str``;
    - one per acceleration (ascending): ``"acceleration": int``;
    - one per (acquisition, acceleration) present: both keys.

    The caller adds ``step``, ``epoch`` and ``split`` before logging.
    """
    results = list(results)
    if not results:
        raise ValueError("summarize: no volume results (was the evaluation set empty?)")
    by_acq: Dict[str, List[VolumeRow]] = defaultdict(list)
    by_accel: Dict[int, List[VolumeRow]] = defaultdict(list)
    by_both: Dict[Tuple[str, int], List[VolumeRow]] = defaultdict(list)
    for r in results:
        by_acq[r.acquisition].append(r)
        by_accel[r.acceleration].append(r)
        by_both[(r.acquisition, r.acceleration)].append(r)
    rows = [_row(results)]
    rows += [_row(v, acquisition=k) for k, v in sorted(by_acq.items())]
    rows += [_row(v, acceleration=k) for k, v in sorted(by_accel.items())]
    rows += [_row(v, acquisition=k[0], acceleration=k[1]) for k, v in sorted(by_both.items())]
    return rows

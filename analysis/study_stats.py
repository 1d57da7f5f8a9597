"""Statistics of a multi-seed study: per-seed means per arm and seed-paired contrasts between arms.

A contrast compares arm A with the reference arm R on one checkpoint, split and metric. Run ``A-s<s>`` is paired
with run ``R-s<s>`` (same seed, same initial weights) and the per-volume difference is

    Δ[s, v] = mean over accelerations k of (metric(A-s<s>, v, k) − metric(R-s<s>, v, k))

on the (fname, acceleration) pairs present (with finite values) in every paired run. Rows of Δ are the seeds in
ascending order, columns the volumes (fname) in sorted order. The 95 % interval resamples both levels (seeds and
volumes) with :func:`scipy.stats.bootstrap`; the p-value is :func:`scipy.stats.wilcoxon` on the per-volume
differences averaged over seeds. All functions are pure (arrays / rows in, numbers out).
"""

from __future__ import annotations

import inspect
import math
import warnings
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from scipy import stats as sps

from analysis.runs import VolumeRow
from analysis.stats import HIGHER_IS_BETTER

N_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
LEVEL = 0.95
_RNG_KW = "rng" if "rng" in inspect.signature(sps.bootstrap).parameters else "random_state"


def contrast_method(n_resamples: int = N_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> str:
    """The exact procedure of a contrast, precise enough to recompute it from ``per_volume.csv``."""
    return (
        "Pairing: run <arm>-s<s> with run <reference>-s<s> (same seed s, same initial weights), rows of "
        "per_volume.csv of the same checkpoint and split. Keep the (fname, acceleration) pairs present with a finite "
        "metric in every paired run of every seed (restricted to one acquisition or acceleration for breakdown "
        "groups). D[s, v] = mean over the kept accelerations of volume v of (arm - reference); rows = seeds "
        "ascending, columns = fname sorted. mean = D.mean(). 95% interval: scipy.stats.bootstrap(data=(arange("
        "n_seeds), arange(n_volumes)), statistic=lambda si, vi: D[np.ix_(si, vi)].mean(), paired=False, "
        f"vectorized=False, method='percentile', confidence_level={LEVEL}, n_resamples={n_resamples}, "
        f"{_RNG_KW}=np.random.default_rng({seed})) - seeds and volumes both resampled with replacement, "
        "independently; interval = [mean, mean] when n_seeds < 2 or n_volumes < 2. p_value: scipy.stats.wilcoxon("
        "D.mean(axis=0), alternative='two-sided') (defaults zero_method='wilcox', method='auto'); NaN when fewer "
        "than 2 volumes or all differences are 0. noise_floor_sd: sd (ddof=1) over seeds of the reference arm's "
        "per-seed mean metric over its rows of the group. wins/losses: volumes whose D.mean(axis=0) favours / "
        "disfavours the arm (higher is better for ssim and psnr, lower for nmse)."
    )


def finite_mean(values: Sequence[float]) -> float:
    """Mean of the finite values; NaN when there are none."""
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    return float(arr.mean()) if arr.size else math.nan


def mean_sd(values: Sequence[float]) -> Tuple[float, float]:
    """``(mean, sd with ddof=1)`` of the finite values; sd is NaN with fewer than two."""
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    if not arr.size:
        return math.nan, math.nan
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else math.nan


def seed_mean(rows: Sequence[VolumeRow], metric: str) -> float:
    """Mean of ``metric`` over all per-volume rows (volume x acceleration) of one run."""
    return finite_mean([getattr(r, metric) for r in rows])


def _in_group(row: VolumeRow, acquisition: Optional[str], acceleration: Optional[int]) -> bool:
    return ((acquisition is None or row.acquisition == acquisition)
            and (acceleration is None or row.acceleration == acceleration))


def delta_matrix(reference: Mapping[int, Sequence[VolumeRow]], arm: Mapping[int, Sequence[VolumeRow]], metric: str,
                 acquisition: Optional[str] = None, acceleration: Optional[int] = None
                 ) -> Tuple[np.ndarray, List[int], List[str]]:
    """Seed-paired per-volume differences ``Δ[s, v]`` (arm − reference, mean over accelerations).

    Args:
        reference: seed -> per-volume rows of the reference arm.
        arm: seed -> per-volume rows of the other arm.
        metric: ``ssim``, ``psnr`` or ``nmse``.
        acquisition: keep only rows of this acquisition (``None``: all).
        acceleration: keep only rows of this acceleration (``None``: all).

    Returns:
        ``(Δ [n_seeds, n_volumes], seeds ascending, fnames sorted)``; seeds are those of both arms; volumes are
        those whose (fname, acceleration) pairs are present with finite values in every paired run.
    """
    seeds = sorted(set(reference) & set(arm))
    tables = []
    for s in seeds:
        for rows in (reference[s], arm[s]):
            tables.append({(r.fname, r.acceleration): getattr(r, metric) for r in rows
                           if _in_group(r, acquisition, acceleration) and math.isfinite(getattr(r, metric))})
    keys = sorted(set.intersection(*(set(t) for t in tables))) if tables else []
    fnames = sorted({f for f, _ in keys})
    delta = np.empty((len(seeds), len(fnames)), dtype=np.float64)
    for i in range(len(seeds)):
        ref, oth = tables[2 * i], tables[2 * i + 1]
        for j, fname in enumerate(fnames):
            delta[i, j] = np.mean([oth[k] - ref[k] for k in keys if k[0] == fname])
    return delta, seeds, fnames


def hierarchical_ci(delta: np.ndarray, n_resamples: int = N_RESAMPLES, seed: int = BOOTSTRAP_SEED,
                    level: float = LEVEL) -> Tuple[float, float]:
    """Percentile bootstrap interval of ``Δ.mean()`` resampling seeds (rows) and volumes (columns).

    Args:
        delta: ``[n_seeds, n_volumes]`` differences.
        n_resamples: bootstrap resamples.
        seed: seed of ``np.random.default_rng`` passed to :func:`scipy.stats.bootstrap`.
        level: confidence level.

    Returns:
        ``(low, high)``; ``(mean, mean)`` with fewer than two seeds or volumes, NaNs for an empty ``delta``.
    """
    delta = np.asarray(delta, dtype=np.float64)
    if delta.size == 0:
        return math.nan, math.nan
    mean = float(delta.mean())
    n_seeds, n_volumes = delta.shape
    if n_seeds < 2 or n_volumes < 2:
        return mean, mean

    def statistic(si: np.ndarray, vi: np.ndarray) -> float:
        return delta[np.ix_(si, vi)].mean()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = sps.bootstrap((np.arange(n_seeds), np.arange(n_volumes)), statistic, paired=False, vectorized=False,
                            method="percentile", confidence_level=level, n_resamples=n_resamples,
                            **{_RNG_KW: np.random.default_rng(seed)})
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def wilcoxon_p(per_volume: Sequence[float]) -> float:
    """Two-sided :func:`scipy.stats.wilcoxon` p of per-volume differences; NaN with < 2 values or all zero."""
    d = np.asarray(per_volume, dtype=np.float64)
    d = d[np.isfinite(d)]
    if d.size < 2 or not np.any(d != 0):
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # small-sample / ties notes of scipy
        return float(sps.wilcoxon(d, alternative="two-sided").pvalue)


def wins_losses(per_volume: np.ndarray, metric: str) -> Tuple[int, int]:
    """Volumes where the arm is better / worse than the reference (lower NMSE is better)."""
    better = per_volume if HIGHER_IS_BETTER[metric] else -per_volume
    return int((better > 0).sum()), int((better < 0).sum())


def groups_of(reference: Mapping[int, Sequence[VolumeRow]]) -> List[Tuple[str, Optional[str], Optional[int]]]:
    """``(name, acquisition, acceleration)`` groups: ``all``, then each acquisition and each acceleration.

    A breakdown with a single level (one acquisition, or one acceleration) equals ``all`` and is left out.
    """
    rows = [r for table in reference.values() for r in table]
    acquisitions = sorted({r.acquisition for r in rows})
    accelerations = sorted({r.acceleration for r in rows})
    out: List[Tuple[str, Optional[str], Optional[int]]] = [("all", None, None)]
    if len(acquisitions) > 1:
        out += [(f"acquisition={a}", a, None) for a in acquisitions]
    if len(accelerations) > 1:
        out += [(f"acceleration={k}", None, k) for k in accelerations]
    return out


def contrast(reference: Mapping[int, Sequence[VolumeRow]], arm: Mapping[int, Sequence[VolumeRow]], metric: str,
             acquisition: Optional[str] = None, acceleration: Optional[int] = None, *,
             n_resamples: int = N_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> Dict[str, Any]:
    """Numbers of one contrast (arm − reference) of one group.

    Returns:
        ``mean, ci_low, ci_high, p_value, n_seeds, n_volumes, noise_floor_sd, wins, losses`` (NaN when no
        volume is shared).
    """
    delta, seeds, fnames = delta_matrix(reference, arm, metric, acquisition, acceleration)
    ref_means = [seed_mean([r for r in reference[s] if _in_group(r, acquisition, acceleration)], metric)
                 for s in sorted(reference)]
    per_volume = delta.mean(axis=0) if delta.size else np.empty(0)
    low, high = hierarchical_ci(delta, n_resamples=n_resamples, seed=seed)
    wins, losses = wins_losses(per_volume, metric)
    return {"mean": float(delta.mean()) if delta.size else math.nan, "ci_low": low, "ci_high": high,
            "p_value": wilcoxon_p(per_volume), "n_seeds": len(seeds) if delta.size else 0,
            "n_volumes": len(fnames), "noise_floor_sd": mean_sd(ref_means)[1], "wins": wins, "losses": losses}


def contrast_records(arm_name: str, reference_name: str, split: str, checkpoint: str,
                     reference: Mapping[int, Sequence[VolumeRow]], arm: Mapping[int, Sequence[VolumeRow]],
                     metrics: Sequence[str] = ("ssim", "psnr", "nmse"), *, n_resamples: int = N_RESAMPLES,
                     seed: int = BOOTSTRAP_SEED) -> List[Dict[str, Any]]:
    """Contrast records of every metric and group (``all`` first) for one arm, split and checkpoint."""
    method = contrast_method(n_resamples, seed)
    out = []
    for metric in metrics:
        for group, acquisition, acceleration in groups_of(reference):
            numbers = contrast(reference, arm, metric, acquisition, acceleration, n_resamples=n_resamples,
                               seed=seed)
            out.append({"arm": arm_name, "reference": reference_name, "split": split, "metric": metric,
                        "checkpoint": checkpoint, "group": group, **numbers, "method": method})
    return out


def excludes_zero(record: Mapping[str, Any]) -> Optional[bool]:
    """Whether the record's interval excludes zero; ``None`` when it is undefined or degenerate (< 2 seeds/volumes)."""
    low, high = record.get("ci_low"), record.get("ci_high")
    if record.get("n_seeds", 2) < 2 or record.get("n_volumes", 2) < 2:
        return None
    if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
        return None
    return bool(low > 0 or high < 0)

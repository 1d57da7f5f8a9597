"""The one statistics method of the reports: percentile bootstrap intervals (:func:`scipy.stats.bootstrap`) and
Wilcoxon signed-rank p-values (:func:`scipy.stats.wilcoxon`).

:func:`mean_ci` is the interval of the mean of paired per-volume differences (the two-run comparison);
:func:`hierarchical_ci` resamples seeds and volumes of a ``[n_seeds, n_volumes]`` difference matrix independently
(the study's contrasts, :mod:`varnet_ds.analysis.study.contrasts`). Both call :func:`percentile_interval`: the same
scipy call, method ``percentile``, level 0.95, 10,000 resamples, ``np.random.default_rng(seed)``. All functions
are pure (arrays in, numbers out).
"""

from __future__ import annotations

import inspect
import math
import warnings
from typing import Any, Callable, Mapping, Optional, Sequence, Tuple

import numpy as np
from scipy import stats as sps

HIGHER_IS_BETTER = {"ssim": True, "psnr": True, "nmse": False}
N_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
LEVEL = 0.95
RNG_KW = "rng" if "rng" in inspect.signature(sps.bootstrap).parameters else "random_state"  # scipy >= 1.15: rng


def percentile_interval(data: Tuple[np.ndarray, ...], statistic: Callable[..., Any], *, vectorized: bool,
                        n_resamples: int = N_RESAMPLES, seed: int = BOOTSTRAP_SEED,
                        level: float = LEVEL) -> Tuple[float, float]:
    """``scipy.stats.bootstrap(data, statistic, paired=False, method="percentile", ...)``: the one bootstrap call.

    Args:
        data: the samples, each resampled with replacement, independently of the others.
        statistic: of one resample of every sample (``axis`` keyword when ``vectorized``).
        vectorized: whether ``statistic`` takes a batch of resamples along the last axis.
        n_resamples: bootstrap resamples.
        seed: seed of the ``np.random.default_rng`` generator (same inputs and seed -> same interval).
        level: confidence level.

    Returns:
        ``(low, high)``.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = sps.bootstrap(data, statistic, paired=False, vectorized=vectorized, method="percentile",
                            confidence_level=level, n_resamples=n_resamples, **{RNG_KW: np.random.default_rng(seed)})
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def mean_ci(values: Sequence[float], n_resamples: int = N_RESAMPLES, seed: int = BOOTSTRAP_SEED,
            level: float = LEVEL) -> Tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (``[N]`` paired differences).

    Returns:
        ``(low, high)``; NaNs for ``N = 0``, ``(d, d)`` for ``N = 1`` (nothing to resample) or when every value is
        the same.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return math.nan, math.nan
    if values.size == 1 or np.all(values == values[0]):
        return float(values[0]), float(values[0])
    return percentile_interval((values,), np.mean, vectorized=True, n_resamples=n_resamples, seed=seed,
                               level=level)


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

    return percentile_interval((np.arange(n_seeds), np.arange(n_volumes)), statistic, vectorized=False,
                               n_resamples=n_resamples, seed=seed, level=level)


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


def excludes_zero(record: Mapping[str, Any]) -> Optional[bool]:
    """Whether the record's interval excludes zero; ``None`` when it is undefined or degenerate (< 2 seeds/volumes)."""
    low, high = record.get("ci_low"), record.get("ci_high")
    if record.get("n_seeds", 2) < 2 or record.get("n_volumes", 2) < 2:
        return None
    if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
        return None
    return bool(low > 0 or high < 0)

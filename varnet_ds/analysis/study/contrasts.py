"""Contrasts of a multi-seed study: seed-paired per-volume differences between an arm and the reference arm.

A contrast compares arm A with the reference arm R on one checkpoint, split and metric. Run ``A-s<s>`` is paired
with run ``R-s<s>`` (same seed, same initial weights) and the per-volume difference is

    Δ[s, v] = mean over accelerations k of (metric(A-s<s>, v, k) − metric(R-s<s>, v, k))

on the (fname, acceleration) pairs present (with finite values) in every paired run. Rows of Δ are the seeds in
ascending order, columns the volumes (fname) in sorted order. The interval and p-value are
:mod:`varnet_ds.analysis.stats`' (:func:`~varnet_ds.analysis.stats.hierarchical_ci`,
:func:`~varnet_ds.analysis.stats.wilcoxon_p`). All functions are pure (rows in, numbers out).
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from varnet_ds.analysis.stats import (
    BOOTSTRAP_SEED,
    LEVEL,
    N_RESAMPLES,
    RNG_KW,
    finite_mean,
    hierarchical_ci,
    mean_sd,
    wilcoxon_p,
    wins_losses,
)
from varnet_ds.run_folder import VolumeRow


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
        f"{RNG_KW}=np.random.default_rng({seed})) - seeds and volumes both resampled with replacement, "
        "independently; interval = [mean, mean] when n_seeds < 2 or n_volumes < 2. p_value: scipy.stats.wilcoxon("
        "D.mean(axis=0), alternative='two-sided') (defaults zero_method='wilcox', method='auto'); NaN when fewer "
        "than 2 volumes or all differences are 0. noise_floor_sd: sd (ddof=1) over seeds of the reference arm's "
        "per-seed mean metric over its rows of the group. wins/losses: volumes whose D.mean(axis=0) favours / "
        "disfavours the arm (higher is better for ssim and psnr, lower for nmse)."
    )


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

"""Numbers of the comparison: final/best metrics per run x split x breakdown, run differences, and a paired
per-volume comparison with a seeded bootstrap interval."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

from varnet_ds.analysis.runs import METRICS, VAL_SPLITS, Run, breakdown_sort_key, format_breakdown, last_row_per_epoch
from varnet_ds.analysis.stats import HIGHER_IS_BETTER, mean_ci
from varnet_ds.run_folder import VolumeRow


@dataclass
class TransferRow:
    """Final (last evaluation) and best (over evaluations) metrics of one run, split and breakdown."""

    label: str
    split: str
    acquisition: str
    acceleration: str
    num_volumes: Optional[int]
    evaluations: int
    final_epoch: int
    final_step: int
    final_ssim: float
    final_psnr: float
    final_nmse: float
    best_ssim: float
    best_ssim_epoch: int
    best_psnr: float
    best_psnr_epoch: int
    best_nmse: float
    best_nmse_epoch: int


@dataclass
class DiffRow:
    """``other - reference`` for one split and breakdown: final, best and at the last common epoch."""

    reference: str
    other: str
    split: str
    acquisition: str
    acceleration: str
    d_final_ssim: float
    d_final_psnr: float
    d_final_nmse: float
    d_best_ssim: float
    d_best_psnr: float
    d_best_nmse: float
    common_epoch: Optional[int]
    d_common_ssim: float
    d_common_psnr: float
    d_common_nmse: float


@dataclass
class PairedRow:
    """Paired per-volume comparison ``other - reference`` over volumes matched by ``(fname, acceleration)``.

    ``wins`` counts volumes where ``other`` is better (higher SSIM/PSNR, lower NMSE), ``losses`` where worse.
    """

    reference: str
    other: str
    split: str
    group: str
    metric: str
    n: int
    mean_reference: float
    mean_other: float
    mean_diff: float
    ci_low: float
    ci_high: float
    wins: int
    losses: int
    ties: int


def _best(rows: Sequence[dict], metric: str) -> Tuple[float, int]:
    finite = [r for r in rows if math.isfinite(r.get(metric, math.nan))]
    if not finite:
        return math.nan, -1
    pick = max if HIGHER_IS_BETTER[metric] else min
    row = pick(finite, key=lambda r: r[metric])
    return row[metric], row["epoch"]


def transfer_rows(run: Run) -> List[TransferRow]:
    """:class:`TransferRow` for every split and breakdown the run evaluated."""
    out = []
    for split in VAL_SPLITS:
        for key in run.breakdowns(split):
            rows = run.val_rows(split, key)
            last = rows[-1]
            best = {m: _best(rows, m) for m in METRICS}
            acq, acc = format_breakdown(key)
            vols = last.get("num_volumes")
            out.append(TransferRow(
                run.label, split, acq, acc, int(vols) if vols is not None and math.isfinite(vols) else None,
                len(rows), last["epoch"], last["step"],
                *(last.get(m, math.nan) for m in METRICS),
                *(v for m in METRICS for v in best[m]),
            ))
    return out


def diff_rows(reference: Run, other: Run, notes: List[str]) -> List[DiffRow]:
    """``other - reference`` for every split and breakdown both runs evaluated; the rest goes to ``notes``."""
    ref_rows = {(t.split, t.acquisition, t.acceleration): t for t in transfer_rows(reference)}
    oth_rows = {(t.split, t.acquisition, t.acceleration): t for t in transfer_rows(other)}
    out = []
    for split in VAL_SPLITS:
        keys = sorted(set(reference.breakdowns(split)) | set(other.breakdowns(split)), key=breakdown_sort_key)
        missing = []
        for key in keys:
            fkey = (split, *format_breakdown(key))
            if fkey not in ref_rows or fkey not in oth_rows:
                missing.append("/".join(format_breakdown(key)) + f" (only in "
                               f"{reference.label if fkey in ref_rows else other.label})")
                continue
            a, b = ref_rows[fkey], oth_rows[fkey]
            ea = last_row_per_epoch(reference.val_rows(split, key))
            eb = last_row_per_epoch(other.val_rows(split, key))
            common = max(set(ea) & set(eb), default=None)
            common_d = [eb[common].get(m, math.nan) - ea[common].get(m, math.nan) if common is not None
                        else math.nan for m in METRICS]
            out.append(DiffRow(
                reference.label, other.label, split, *fkey[1:],
                *(getattr(b, f"final_{m}") - getattr(a, f"final_{m}") for m in METRICS),
                *(getattr(b, f"best_{m}") - getattr(a, f"best_{m}") for m in METRICS),
                common, *common_d,
            ))
        if missing and len(missing) < len(keys):
            notes.append(f"{split}: breakdowns not evaluated by both {reference.label} and {other.label}: "
                         + ", ".join(missing))
    return out


def match_volumes(ref: Sequence[VolumeRow], other: Sequence[VolumeRow]) -> Tuple[List[Tuple[VolumeRow, VolumeRow]],
                                                                                 List[str], List[str]]:
    """Pairs of rows with equal ``(fname, acceleration)``, plus the unmatched keys of each side."""
    a = {(v.fname, v.acceleration): v for v in ref}
    b = {(v.fname, v.acceleration): v for v in other}
    pairs = [(a[k], b[k]) for k in sorted(set(a) & set(b))]
    only_a = [f"{f} x{acc}" for f, acc in sorted(set(a) - set(b))]
    only_b = [f"{f} x{acc}" for f, acc in sorted(set(b) - set(a))]
    return pairs, only_a, only_b


def paired_rows(reference: Run, other: Run, split: str, notes: List[str], seed: int = 0
                ) -> Tuple[List[PairedRow], List[Tuple[VolumeRow, VolumeRow]]]:
    """Paired comparison over all matched volumes, per acceleration and (when several) per acquisition.

    Returns:
        ``(rows, pairs)``; both empty when a per-volume table is missing (noted).
    """
    missing = [r.label for r in (reference, other) if split not in r.per_volume]
    if missing:
        notes.append(f"{split}: no per-volume table ({split}_per_volume.csv) for {', '.join(missing)}; "
                     f"paired comparison {other.label} − {reference.label} skipped")
        return [], []
    pairs, only_a, only_b = match_volumes(reference.per_volume[split], other.per_volume[split])
    for label, only in ((reference.label, only_a), (other.label, only_b)):
        if only:
            notes.append(f"{split}: {len(only)} volume(s) only in {label}, left out of the paired comparison: "
                         + ", ".join(only))
    if not pairs:
        notes.append(f"{split}: no volume of {reference.label} and {other.label} matches by (fname, acceleration)")
        return [], []
    groups: List[Tuple[str, List[Tuple[VolumeRow, VolumeRow]]]] = [("all", pairs)]
    for acc in sorted({a.acceleration for a, _ in pairs}):
        groups.append((f"x{acc}", [p for p in pairs if p[0].acceleration == acc]))
    acquisitions = sorted({a.acquisition for a, _ in pairs})
    if len(acquisitions) > 1:
        groups += [(acq, [p for p in pairs if p[0].acquisition == acq]) for acq in acquisitions]
    rows = []
    for group, members in groups:
        for metric in METRICS:
            va = np.array([getattr(a, metric) for a, _ in members])
            vb = np.array([getattr(b, metric) for _, b in members])
            ok = np.isfinite(va) & np.isfinite(vb)
            va, vb = va[ok], vb[ok]
            d = vb - va
            better = d if HIGHER_IS_BETTER[metric] else -d
            low, high = mean_ci(d, seed=seed)
            rows.append(PairedRow(
                reference.label, other.label, split, group, metric, int(d.size),
                float(va.mean()) if d.size else math.nan, float(vb.mean()) if d.size else math.nan,
                float(d.mean()) if d.size else math.nan, low, high,
                int((better > 0).sum()), int((better < 0).sum()), int((better == 0).sum()),
            ))
    if len(pairs) < 5:
        notes.append(f"{split}: only {len(pairs)} matched volume(s) for {other.label} − {reference.label}; the "
                     "bootstrap interval is very rough")
    return rows, pairs

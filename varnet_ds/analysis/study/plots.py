"""Figures of a study report: per-arm curves (mean ± sd over seeds) and the per-volume paired differences.

Inputs are loaded runs (:class:`varnet_ds.analysis.study.load.Study`) and the seed x volume difference matrix of
:func:`varnet_ds.analysis.stats.delta_matrix` (the one the contrasts are computed from). matplotlib object API only.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from varnet_ds.analysis.plots import ema, empty_axes, integer_x, new_figure, run_color, save_figure
from varnet_ds.analysis.runs import Run, last_row_per_epoch
from varnet_ds.analysis.study.load import Study, selected_epoch

VAL_PANELS = (("val_knee", "ssim", "knee validation SSIM"), ("val_brain", "ssim", "brain SSIM"),
              ("val_brain", "psnr", "brain PSNR (dB)"))
ACQ_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f"]


def arm_color(study: Study, arm: str) -> str:
    """Colour of an arm: the reference arm first, the same in every study figure."""
    return run_color(study.arm_order().index(arm))


def across_seeds(series: Sequence[Mapping[float, float]]) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Mean and sd (ddof=1, NaN with one value) over seeds at each x that any seed has.

    Args:
        series: one ``{x: value}`` per seed (finite values only).

    Returns:
        ``(x [N], mean [N], sd [N], n [N])`` sorted by x; ``n`` = number of seeds with a value at x.
    """
    xs = sorted({x for s in series for x in s})
    mean, sd, n = [], [], []
    for x in xs:
        vals = np.array([s[x] for s in series if x in s], dtype=np.float64)
        mean.append(vals.mean())
        sd.append(vals.std(ddof=1) if vals.size > 1 else math.nan)
        n.append(vals.size)
    return (np.array(xs, dtype=np.float64), np.array(mean), np.array(sd), np.array(n, dtype=np.int64))


def val_series(run: Run, split: str, metric: str) -> Dict[float, float]:
    """Epoch -> overall ``metric`` of the run's last evaluation of that epoch (finite values only)."""
    rows = last_row_per_epoch(run.val_rows(split))
    return {float(e): float(r[metric]) for e, r in rows.items() if math.isfinite(r.get(metric, math.nan))}


def loss_series(run: Run, smooth: float) -> Tuple[Dict[float, float], Dict[float, float]]:
    """``(raw, smoothed)`` training loss per optimizer step; smoothed = :func:`varnet_ds.analysis.plots.ema` of the
    run."""
    pts = sorted((float(r["step"]), float(r["loss"])) for r in run.train_rows() if math.isfinite(r.get("loss",
                                                                                                          math.nan)))
    if not pts:
        return {}, {}
    steps, loss = (np.array(v) for v in zip(*pts))
    return dict(zip(steps.tolist(), loss.tolist())), dict(zip(steps.tolist(), ema(loss, smooth).tolist()))


def _band(ax, x: np.ndarray, mean: np.ndarray, sd: np.ndarray, color: str, label: str, marker: str = "o") -> None:
    ax.plot(x, mean, color=color, marker=marker, markersize=4, linewidth=1.8, label=label)
    ok = np.isfinite(sd)
    if ok.any():
        ax.fill_between(x[ok], (mean - sd)[ok], (mean + sd)[ok], color=color, alpha=0.2, linewidth=0)


def plot_val_curves(study: Study, path: Path) -> Optional[Path]:
    """Knee val SSIM, brain SSIM and brain PSNR vs epoch per arm: mean over seeds (line) ± sd (band); each
    seed's selected epoch is marked on the knee panel. ``None`` when no run has evaluations."""
    fig, axes = new_figure(len(VAL_PANELS), width=4.6, height=3.6)
    drawn = False
    for ax, (split, metric, title) in zip(axes[0], VAL_PANELS):
        xs: List[float] = []
        for arm in study.arm_order():
            runs = [study.runs[(arm, s)] for s in study.seeds]
            x, mean, sd, _ = across_seeds([val_series(r.run, split, metric) for r in runs])
            if not x.size:
                continue
            xs += x.tolist()
            _band(ax, x, mean, sd, arm_color(study, arm), f"{arm} ({len(runs)} seeds)")
            drawn = True
            if split == "val_knee":
                sel = [(float(e), r.run) for r in runs if (e := selected_epoch(r)) is not None]
                ys = [val_series(run, split, metric).get(e, math.nan) for e, run in sel]
                ax.scatter([e for e, _ in sel], ys, marker="v", s=46, facecolor="none",
                           edgecolor=arm_color(study, arm), zorder=5)
        if not xs:
            empty_axes(ax, f"no {split} evaluations")
        ax.set_title(title + (" (▽ = a seed's selected epoch)" if split == "val_knee" else ""), fontsize=9)
        ax.set_xlabel("epoch")
        integer_x(ax, xs)
        ax.grid(alpha=0.3)
        if xs:
            ax.legend(fontsize=8)
    return save_figure(fig, path) if drawn else None


def plot_train_loss(study: Study, path: Path, smooth: float) -> Optional[Path]:
    """Training loss vs optimizer step per arm: mean over seeds of each seed's EMA (line) ± sd (band), and the
    mean of the raw losses (faint). ``None`` when no run has training rows."""
    fig, axes = new_figure(1, width=9.0, height=3.6)
    ax = axes[0, 0]
    xs: List[float] = []
    for arm in study.arm_order():
        series = [loss_series(study.runs[(arm, s)].run, smooth) for s in study.seeds]
        x, mean, sd, _ = across_seeds([smoothed for _, smoothed in series])
        if not x.size:
            continue
        xs += x.tolist()
        color = arm_color(study, arm)
        raw_x, raw_mean, _, _ = across_seeds([raw for raw, _ in series])
        ax.plot(raw_x, raw_mean, color=color, alpha=0.25, linewidth=0.8)
        _band(ax, x, mean, sd, color, f"{arm} ({len(series)} seeds, EMA {smooth:g})", marker="")
    if not xs:
        return None
    integer_x(ax, xs)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (1 − SSIM, knee)")
    ax.set_title("Training loss: mean over seeds ± sd", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9)
    return save_figure(fig, path)


def plot_volume_deltas(panels: Sequence[Tuple[str, np.ndarray, List[str], Mapping[str, str], Mapping[str, float]]],
                       path: Path, title: str) -> Optional[Path]:
    """The paired per-volume figure: one point per brain volume = its difference averaged over seeds, coloured
    by acquisition; each seed's difference as a small dot; the contrast's mean and 95 % interval as a line and
    band; zero as a grey line.

    Args:
        panels: ``(metric label, Δ [n_seeds, n_volumes], fnames [n_volumes], fname -> acquisition,
            {"mean", "ci_low", "ci_high"} of the contrast)`` per panel.
        path: PNG to write.
        title: figure title (arm − reference).

    Returns:
        ``path``, or ``None`` when no panel has a volume.
    """
    panels = [p for p in panels if p[1].size]
    if not panels:
        return None
    n_vol = max(p[1].shape[1] for p in panels)
    fig, axes = new_figure(1, width=min(12.0, 4.5 + 0.45 * n_vol), height=2.9, nrows=len(panels))
    for ax, (label, delta, fnames, acq_of, rec) in zip(axes[:, 0], panels):
        order = sorted(range(len(fnames)), key=lambda j: (acq_of[fnames[j]], fnames[j]))
        acqs = sorted({acq_of[f] for f in fnames})
        x = np.arange(len(order), dtype=np.float64)
        mean_v = delta.mean(axis=0)[order]
        for i in range(delta.shape[0]):
            ax.scatter(x, delta[i, order], s=9, color="0.55", alpha=0.6, zorder=2,
                       label="one seed" if i == 0 else None)
        for k, acq in enumerate(acqs):
            sel = [i for i, j in enumerate(order) if acq_of[fnames[j]] == acq]
            ax.scatter(x[sel], mean_v[sel], s=48, color=ACQ_COLORS[k % len(ACQ_COLORS)], zorder=3,
                       edgecolor="k", linewidth=0.5, label=f"{acq} (mean over seeds)")
        ax.axhline(0.0, color="0.4", linewidth=0.9)
        lo, hi, mean = (float(rec.get(k, math.nan)) for k in ("ci_low", "ci_high", "mean"))
        if math.isfinite(mean):
            ax.axhline(mean, color="k", linewidth=1.3, linestyle="--", label="mean Δ (study.json)")
        if math.isfinite(lo) and math.isfinite(hi):
            ax.axhspan(lo, hi, color="k", alpha=0.08, label="95 % CI")
        ax.set_xticks(x, [Path(fnames[j]).stem.removeprefix("file_brain_") for j in order], rotation=35,
                      ha="right", fontsize=7)
        ax.set_xlim(-0.6, len(order) - 0.4)
        ax.set_ylabel(f"Δ {label}")
        ax.grid(alpha=0.3, axis="y")
    axes[0, 0].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    axes[0, 0].set_title(title, fontsize=10)
    return save_figure(fig, path)

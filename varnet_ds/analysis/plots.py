"""Curves of the comparison as PNGs: train loss, validation SSIM/PSNR, MRAugment p, knee->brain gap, paired
per-volume scatter. Uses matplotlib's object API (no pyplot state), so it is safe to call repeatedly."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from varnet_ds.analysis.runs import VAL_SPLITS, Run, last_row_per_epoch
from varnet_ds.files import atomic_path
from varnet_ds.run_folder import VolumeRow

SPLIT_TITLES = {"val_knee": "knee (validation)", "val_brain": "brain (transfer)"}
DPI = 100


def run_color(index: int) -> str:
    """Colour of the ``index``-th run, the same in every figure."""
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]
    return palette[index % len(palette)]


def new_figure(ncols: int, width: float = 5.2, height: float = 3.6, nrows: int = 1) -> Tuple[Figure, np.ndarray]:
    """A figure with an Agg canvas and a ``[nrows, ncols]`` array of axes."""
    fig = Figure(figsize=(width * ncols, height * nrows))
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def save_figure(fig: Figure, path: Path) -> Path:
    """Write a PNG atomically (deterministic: no timestamp metadata)."""
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, metadata={"Software": None})
    return path


def ema(values: np.ndarray, smooth: float) -> np.ndarray:
    """Bias-corrected exponential moving average (TensorBoard-style); ``smooth = 0`` returns the input.

    Args:
        values: ``[N]`` finite values in order.
        smooth: weight of the past in ``[0, 1)``.
    """
    out = np.empty(len(values), dtype=np.float64)
    acc = 0.0
    for i, v in enumerate(values):
        acc = smooth * acc + (1.0 - smooth) * float(v)
        out[i] = acc / (1.0 - smooth ** (i + 1))
    return out


def integer_x(ax, values: Sequence[float]) -> None:
    """Integer ticks on the x axis (epochs, steps), padded so that a single point still gets whole numbers."""
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if len(values) and max(values) - min(values) < 2:
        ax.set_xlim(min(values) - 0.5, max(values) + 0.5)


def empty_axes(ax, text: str) -> None:
    """Grey centred ``text`` on an axis that has nothing to draw."""
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")


def plot_train_loss(runs: Sequence[Run], path: Path, smooth: float) -> Optional[Path]:
    """Training loss vs step: raw (faint) and EMA-smoothed per run; ``None`` if no run has train rows."""
    fig, axes = new_figure(1, width=9.0)
    ax = axes[0, 0]
    drawn, xs = False, []
    for i, run in enumerate(runs):
        pts = [(r["step"], r["loss"]) for r in run.train_rows() if math.isfinite(r.get("loss", math.nan))]
        if not pts:
            continue
        steps, loss = np.array(pts, dtype=np.float64).T
        xs += list(steps)
        ax.plot(steps, loss, color=run_color(i), alpha=0.25, linewidth=0.8)
        ax.plot(steps, ema(loss, smooth), color=run_color(i), linewidth=1.8, label=f"{run.label} (EMA {smooth:g})")
        drawn = True
    if not drawn:
        return None
    integer_x(ax, xs)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (1 - SSIM)")
    ax.set_title("Training loss (knee)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9)
    return save_figure(fig, path)


def _epoch_series(run: Run, split: str, metric: str) -> Tuple[np.ndarray, np.ndarray]:
    per_epoch = last_row_per_epoch(run.val_rows(split))
    epochs = sorted(e for e, r in per_epoch.items() if math.isfinite(r.get(metric, math.nan)))
    return np.array(epochs, dtype=np.float64), np.array([per_epoch[e][metric] for e in epochs])


def plot_val_metric(runs: Sequence[Run], metric: str, path: Path) -> Optional[Path]:
    """Overall validation ``metric`` vs epoch, knee and brain side by side; ``None`` without evaluations."""
    fig, axes = new_figure(len(VAL_SPLITS))
    drawn = False
    for ax, split in zip(axes[0], VAL_SPLITS):
        here, xs = False, []
        for i, run in enumerate(runs):
            x, y = _epoch_series(run, split, metric)
            xs += list(x)
            if x.size:
                ax.plot(x, y, marker="o", color=run_color(i), label=run.label)
                here = True
        if here:
            ax.legend(fontsize=9)
        else:
            empty_axes(ax, f"no {split} evaluations")
        drawn |= here
        ax.set_title(f"{metric.upper()} — {SPLIT_TITLES[split]}")
        ax.set_xlabel("epoch")
        integer_x(ax, xs)
        ax.set_ylabel(metric.upper() + (" (dB)" if metric == "psnr" else ""))
        ax.grid(alpha=0.3)
    return save_figure(fig, path) if drawn else None


def plot_aug_p(runs: Sequence[Run], path: Path) -> Optional[Path]:
    """Mean MRAugment probability ``aug_p`` per epoch (train rows); ``None`` if no run logged it."""
    fig, axes = new_figure(1, width=7.0)
    ax = axes[0, 0]
    drawn, top, xs = False, 0.0, []
    for i, run in enumerate(runs):
        by_epoch: Dict[int, List[float]] = {}
        for r in run.train_rows():
            if math.isfinite(r.get("aug_p", math.nan)):
                by_epoch.setdefault(r["epoch"], []).append(r["aug_p"])
        if not by_epoch:
            continue
        epochs = sorted(by_epoch)
        means = [float(np.mean(by_epoch[e])) for e in epochs]
        top, xs = max(top, *means), xs + epochs
        ax.plot(epochs, means, marker="o", color=run_color(i), label=run.label)
        drawn = True
    if not drawn:
        return None
    ax.set_xlabel("epoch")
    integer_x(ax, xs)
    ax.set_ylabel("augmentation probability p")
    ax.set_title("MRAugment strength (mean p per epoch)")
    ax.set_ylim(-0.02, max(0.6, 1.1 * top))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9)
    return save_figure(fig, path)


def gap_series(run: Run, metric: str) -> Tuple[np.ndarray, np.ndarray]:
    """``(epochs, knee - brain)`` of the overall ``metric`` at epochs where both splits were evaluated."""
    knee = last_row_per_epoch(run.val_rows("val_knee"))
    brain = last_row_per_epoch(run.val_rows("val_brain"))
    epochs = sorted(set(knee) & set(brain))
    gap = np.array([knee[e].get(metric, math.nan) - brain[e].get(metric, math.nan) for e in epochs])
    ok = np.isfinite(gap)
    return np.array(epochs, dtype=np.float64)[ok], gap[ok]


def plot_gap(runs: Sequence[Run], path: Path) -> Optional[Path]:
    """Knee->brain gap (knee minus brain) of SSIM and PSNR per run vs epoch; ``None`` if no run has both."""
    fig, axes = new_figure(2)
    drawn = False
    for ax, metric in zip(axes[0], ("ssim", "psnr")):
        xs = []
        for i, run in enumerate(runs):
            x, y = gap_series(run, metric)
            xs += list(x)
            if x.size:
                ax.plot(x, y, marker="o", color=run_color(i), label=run.label)
                drawn = True
        ax.axhline(0.0, color="0.5", linewidth=0.8)
        ax.set_title(f"Knee→brain gap: knee {metric.upper()} − brain {metric.upper()}")
        ax.set_xlabel("epoch")
        integer_x(ax, xs)
        ax.set_ylabel("gap" + (" (dB)" if metric == "psnr" else ""))
        ax.grid(alpha=0.3)
        if drawn:
            ax.legend(fontsize=9)
    return save_figure(fig, path) if drawn else None


def plot_paired(comparisons: Sequence[Tuple[str, str, List[Tuple[VolumeRow, VolumeRow]]]],
                path: Path) -> Optional[Path]:
    """Per-volume scatter (reference on x, other on y) of brain SSIM and PSNR, one row per comparison.

    Args:
        comparisons: ``(reference label, other label, matched pairs)``; empty pair lists are skipped.
    """
    comparisons = [c for c in comparisons if c[2]]
    if not comparisons:
        return None
    fig, axes = new_figure(2, width=4.6, height=4.4, nrows=len(comparisons))
    for row, (ref, other, pairs) in zip(axes, comparisons):
        accs = sorted({a.acceleration for a, _ in pairs})
        for ax, metric in zip(row, ("ssim", "psnr")):
            for j, acc in enumerate(accs):
                pts = np.array([(getattr(a, metric), getattr(b, metric)) for a, b in pairs if a.acceleration == acc])
                ax.scatter(pts[:, 0], pts[:, 1], s=22, color=run_color(j + 2), label=f"x{acc}", alpha=0.8)
            vals = np.array([(getattr(a, metric), getattr(b, metric)) for a, b in pairs], dtype=np.float64)
            vals = vals[np.isfinite(vals).all(axis=1)]
            if vals.size:
                lo, hi = float(vals.min()), float(vals.max())
                pad = 0.05 * (hi - lo) if hi > lo else 0.05 * max(abs(hi), 1e-3)
                ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="0.5", linewidth=0.8)
            ax.set_xlabel(f"{ref} {metric.upper()}")
            ax.set_ylabel(f"{other} {metric.upper()}")
            ax.set_title(f"Brain volumes: {metric.upper()} (above line: {other} better)", fontsize=9)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    return save_figure(fig, path)

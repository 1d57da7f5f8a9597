"""Text and figure of a study report, rendered from the ``study.json`` mapping only (so every number shown comes
from that file): ``study.md``, the README results block and ``study_seeds.png``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from varnet_ds.analysis.plots import new_figure, run_color, save_figure
from varnet_ds.analysis.report_doc import DIGITS, fmt
from varnet_ds.analysis.stats import excludes_zero, mean_sd

README_START = "<!-- study-results:start -->"
README_END = "<!-- study-results:end -->"
SPLIT_NAMES = {"val_brain": "brain", "val_knee": "knee val"}


def fmt_p(p: Optional[float]) -> str:
    """A p-value with 3 significant digits (``n/a`` when undefined)."""
    return "n/a" if p is None or not math.isfinite(p) else f"{p:.3g}"


def mean_sd_text(values: Sequence[Optional[float]], metric: str) -> str:
    """``mean ± sd`` over seeds (sd ddof=1; only the mean with one seed)."""
    mean, sd = mean_sd([math.nan if v is None else v for v in values])
    return fmt(mean, metric) + (f" ± {fmt(sd, metric)}" if math.isfinite(sd) else "")


def arm_key(split: str, metric: str) -> str:
    """Key of an arm's per-seed values in ``study.json``: ``brain_ssim``, ``knee_psnr``, ..."""
    return f"{split.removeprefix('val_')}_{metric}"


def find_contrast(summary: Mapping[str, Any], arm: str, split: str, metric: str, checkpoint: str = "selected",
                  group: str = "all") -> Optional[Dict[str, Any]]:
    """The contrast record of ``study.json`` with these keys, or ``None``."""
    for rec in summary["contrasts"]:
        if (rec["arm"], rec["split"], rec["metric"], rec["checkpoint"], rec["group"]) == (arm, split, metric,
                                                                                           checkpoint, group):
            return rec
    return None


def other_arms(summary: Mapping[str, Any]) -> List[str]:
    """Arms other than the reference, in ``study.json`` order."""
    return [a for a in summary["arms"] if a != summary["reference"]]


def _num(value: Optional[float]) -> float:
    return math.nan if value is None else float(value)


def contrast_sentence(rec: Mapping[str, Any], split: str, metric: str) -> str:
    """One line: mean, 95 % interval, p, n, noise floor and whether the interval excludes zero."""
    name = f"{SPLIT_NAMES[split]} {metric.upper()}"
    low, high = _num(rec["ci_low"]), _num(rec["ci_high"])
    excl = excludes_zero({**rec, "ci_low": low, "ci_high": high})
    verdict = {True: "the interval excludes zero", False: "the interval includes zero",
               None: "no interval (fewer than 2 seeds or volumes)"}[excl]
    return (f"{name}, {rec['arm']} − {rec['reference']} ({rec['checkpoint']} checkpoint, paired by seed): "
            f"**{fmt(_num(rec['mean']), metric, True)}** (95 % interval [{fmt(low, metric, True)}, "
            f"{fmt(high, metric, True)}], Wilcoxon p = {fmt_p(_num(rec['p_value']))}, {rec['n_seeds']} seeds, "
            f"{rec['n_volumes']} volumes); {rec['reference']} seed-to-seed sd (noise floor) "
            f"{fmt(_num(rec['noise_floor_sd']), metric)}; {verdict}; better on {rec['wins']}, worse on "
            f"{rec['losses']} of {rec['n_volumes']} volumes.")


def arms_table(summary: Mapping[str, Any], checkpoints: Sequence[str] = ("selected", "final")) -> List[str]:
    """Markdown table: arm | seeds | knee val SSIM | brain SSIM per checkpoint (mean ± sd over seeds)."""
    head = ["arm", "seeds"] + [f"{SPLIT_NAMES[s]} SSIM ({c})" for c in checkpoints for s in ("val_knee", "val_brain")]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 2 + "---:|" * (len(head) - 2)]
    for arm, rec in summary["arms"].items():
        cells = [arm, str(len(rec["seeds"]))]
        cells += [mean_sd_text(rec[arm_key(s, "ssim")][c], "ssim") for c in checkpoints
                  for s in ("val_knee", "val_brain")]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def render_study_md(summary: Mapping[str, Any]) -> str:
    """``study.md``: per-arm table, primary contrasts, all contrasts with breakdowns, the method."""
    out = [f"# Study {summary['study']}", "",
           f"Device: {summary['device']}. Generated {summary['generated']} (UTC). Reference arm: "
           f"{summary['reference']}. Primary checkpoint: {summary['primary']} (weights of the best knee "
           "validation SSIM evaluation); `final` = weights after the last epoch.", "",
           "## Per arm (mean ± sd over seeds)", ""]
    head = ["arm", "checkpoint", "seeds"] + [f"{SPLIT_NAMES[s]} {m.upper()}" for m in DIGITS
                                             for s in ("val_knee", "val_brain")]
    out += ["| " + " | ".join(head) + " |", "|---|---|---|" + "---:|" * (len(head) - 3)]
    for arm, rec in summary["arms"].items():
        for ckpt in ("selected", "final"):
            cells = [arm, ckpt, ", ".join(str(s) for s in rec["seeds"])]
            cells += [mean_sd_text(rec[arm_key(s, m)][ckpt], m) for m in DIGITS for s in ("val_knee", "val_brain")]
            out.append("| " + " | ".join(cells) + " |")
    epochs = "; ".join(f"{a}: {', '.join(str(e) for e in r['selected_epoch'])}" for a, r in summary["arms"].items())
    out += ["", f"Selected epochs per seed: {epochs}.", "", "## Primary contrasts (selected checkpoint, all volumes)",
            ""]
    for arm in other_arms(summary):
        for split in ("val_brain", "val_knee"):
            for metric in DIGITS:
                rec = find_contrast(summary, arm, split, metric)
                if rec is not None:
                    out.append("- " + contrast_sentence(rec, split, metric))
    out += ["", "## All contrasts and breakdowns", "",
            "| checkpoint | split | metric | arm − reference | group | mean Δ | 95 % interval | p | seeds | volumes "
            "| noise floor sd | better/worse | excludes 0 |",
            "|---|---|---|---|---|---:|---|---:|---:|---:|---:|---|---|"]
    for rec in summary["contrasts"]:
        m = rec["metric"]
        excl = excludes_zero({**rec, "ci_low": _num(rec["ci_low"]), "ci_high": _num(rec["ci_high"])})
        verdict = {True: "yes", False: "no", None: "n/a"}[excl]
        out.append(f"| {rec['checkpoint']} | {SPLIT_NAMES[rec['split']]} | {m.upper()} | {rec['arm']} − "
                   f"{rec['reference']} | {rec['group']} | {fmt(_num(rec['mean']), m, True)} | "
                   f"[{fmt(_num(rec['ci_low']), m, True)}, {fmt(_num(rec['ci_high']), m, True)}] | "
                   f"{fmt_p(_num(rec['p_value']))} | {rec['n_seeds']} | {rec['n_volumes']} | "
                   f"{fmt(_num(rec['noise_floor_sd']), m)} | {rec['wins']}/{rec['losses']} | "
                   f"{verdict} |")
    out += ["", "## Method", ""] + [f"- **{k}**: {v}" for k, v in summary["methods"].items()]
    out += ["", "![seeds per arm](study_seeds.png)", ""]
    return "\n".join(out)


def render_readme_block(summary: Mapping[str, Any], figure_link: str, study_json: str,
                        stability: Sequence[str] = ()) -> str:
    """Text between the README markers (without the markers); ``stability``: lines about a rerun, placed last."""
    ref = summary["reference"]
    lines = [f"Study `{summary['study']}` on {summary['device']}, generated {summary['generated']} (UTC) "
             f"from `{study_json}`; mean ± sd over seeds; `selected` = weights of the best knee validation SSIM "
             "evaluation, `final` = after the last epoch.", ""]
    lines += arms_table(summary) + [""]
    for arm in other_arms(summary):
        for split in ("val_brain", "val_knee"):
            rec = find_contrast(summary, arm, split, "ssim")
            if rec is not None:
                lines.append("- " + contrast_sentence(rec, split, "ssim"))
        lines.append("")
    lines.append(f"The noise floor is the seed-to-seed sd of the {ref} arm's mean SSIM: a contrast much smaller "
                 "than it is not distinguishable from a different seed.")
    if stability:
        lines += ["", *stability]
    lines += ["", f"![study: one point per seed and arm]({figure_link})"]
    return "\n".join(lines)


def replace_block(text: str, block: str, where: str) -> str:
    """``text`` with the lines between the start and end markers replaced by ``block``.

    Raises:
        ValueError: a marker is missing, repeated or out of order (the message names ``where``).
    """
    lines = text.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if line.strip() == README_START]
    ends = [i for i, line in enumerate(lines) if line.strip() == README_END]
    if len(starts) != 1 or len(ends) != 1 or starts[0] > ends[0]:
        raise ValueError(f"{where}: needs exactly one line '{README_START}' followed by one line '{README_END}' "
                         f"(found {len(starts)} start and {len(ends)} end marker line(s))")
    newline = "\r\n" if lines[starts[0]].endswith("\r\n") else "\n"
    body = [line + newline for line in block.split("\n")]
    return "".join(lines[:starts[0] + 1] + body + lines[ends[0]:])


def plot_seeds(summary: Mapping[str, Any], path: Path) -> Path:
    """``study_seeds.png``: per-seed brain and knee val SSIM (selected checkpoint) per arm, seeds joined by lines."""
    arms = [summary["reference"]] + other_arms(summary)
    fig, axes = new_figure(2, width=4.8, height=3.8)
    seeds = sorted({s for a in arms for s in summary["arms"][a]["seeds"]})
    x = np.arange(len(arms), dtype=np.float64)
    for ax, split in zip(axes[0], ("val_brain", "val_knee")):
        key = arm_key(split, "ssim")
        for j, seed in enumerate(seeds):
            ys = []
            for arm in arms:
                rec = summary["arms"][arm]
                value = rec[key]["selected"][rec["seeds"].index(seed)] if seed in rec["seeds"] else None
                ys.append(math.nan if value is None else value)
            ax.plot(x, ys, marker="o", color=run_color(j), label=f"seed {seed}", alpha=0.85)
        for i, arm in enumerate(arms):
            mean = mean_sd([math.nan if v is None else v for v in summary["arms"][arm][key]["selected"]])[0]
            ax.hlines(mean, i - 0.2, i + 0.2, color="k", linewidth=2)
        ax.set_xticks(x, arms)
        ax.set_xlim(-0.5, len(arms) - 0.5)
        ax.set_ylabel("SSIM")
        ax.set_title(f"{SPLIT_NAMES[split]} SSIM per seed (selected; bar = mean)", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"study {summary['study']} — {summary.get('device') or 'unknown device'} — "
                 f"{summary.get('generated', '')}", fontsize=8)
    return save_figure(fig, path)

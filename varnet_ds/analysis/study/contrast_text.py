"""A study contrast (one record of ``study.json``'s ``contrasts``) in words a reader understands.

Every number comes from the record as :mod:`varnet_ds.analysis.study.contrasts` wrote it; nothing is recomputed.
Used by the study's ``report.md``/``report.html`` (:mod:`varnet_ds.analysis.study.page`) and the W&B Report
(:mod:`varnet_ds.analysis.wandb_report.report`).
A record holds ``arm, reference, split, metric, checkpoint, group, mean, ci_low, ci_high, p_value, n_seeds,
n_volumes, noise_floor_sd, wins, losses`` (floats may be ``None`` = not defined).
"""

from __future__ import annotations

import math
from typing import Any, List, Mapping, Optional

from varnet_ds.analysis.report_doc import DIGITS
from varnet_ds.analysis.stats import HIGHER_IS_BETTER, excludes_zero

SPLIT_WORDS = {"val_brain": "brain", "val_knee": "knee val"}
UNITS = {"ssim": "", "psnr": " dB", "nmse": ""}


def number(value: Any) -> float:
    """``value`` as a float; NaN for ``None`` or anything that is not a number."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def value_text(value: Any, metric: str, signed: bool = False) -> str:
    """A metric value with the metric's digits and a true minus sign (``−0.0100``); ``n/a`` when undefined."""
    v = number(value)
    if not math.isfinite(v):
        return "n/a"
    return f"{v:{'+' if signed else ''}.{DIGITS[metric]}f}".replace("-", "−")


def p_text(value: Any) -> str:
    """A p-value with 2 significant digits (``p < 0.001`` below that); ``n/a`` when undefined."""
    p = number(value)
    if not math.isfinite(p):
        return "n/a"
    return "< 0.001" if p < 1e-3 else f"= {p:.2g}"


def metric_name(rec: Mapping[str, Any]) -> str:
    """``brain SSIM``, ``knee val PSNR``, ..."""
    return f"{SPLIT_WORDS.get(rec['split'], rec['split'])} {str(rec['metric']).upper()}"


def interval_text(rec: Mapping[str, Any]) -> str:
    """``95 % CI −0.0180 to +0.0010``."""
    m = rec["metric"]
    return f"95 % CI {value_text(rec['ci_low'], m, True)} to {value_text(rec['ci_high'], m, True)}"


def _verdict(rec: Mapping[str, Any]) -> Optional[bool]:
    return excludes_zero({**rec, "ci_low": number(rec.get("ci_low")), "ci_high": number(rec.get("ci_high"))})


def plural(n: Any, word: str) -> str:
    """``1 seed``, ``3 seeds``."""
    return f"{n} {word}{'' if n == 1 else 's'}"


def sizes(rec: Mapping[str, Any]) -> str:
    """``3 seeds × 12 volumes``."""
    return f"{plural(rec['n_seeds'], 'seed')} × {plural(rec['n_volumes'], 'volume')}"


def headline(rec: Mapping[str, Any]) -> str:
    """One short sentence: ``mraugment − baseline, brain SSIM: −0.0137 (95 % CI −0.0210 to −0.0069, excludes
    zero; p = 0.012; 3 seeds × 12 volumes).``"""
    m = rec["metric"]
    verdict = _verdict(rec)
    interval = ("no interval, which needs 2 seeds and 2 volumes" if verdict is None
                else f"{interval_text(rec)}, {'excludes' if verdict else 'includes'} zero")
    return (f"{rec['arm']} − {rec['reference']}, {metric_name(rec)}: {value_text(rec['mean'], m, True)}{UNITS[m]} "
            f"({interval}; p {p_text(rec['p_value'])}; {sizes(rec)}).")


def _direction(rec: Mapping[str, Any]) -> str:
    """``better`` / ``worse`` for the arm, from the sign of the mean and whether higher is better."""
    better = number(rec["mean"]) > 0 if HIGHER_IS_BETTER[rec["metric"]] else number(rec["mean"]) < 0
    return "better" if better else "worse"


def lead_sentences(rec: Mapping[str, Any]) -> List[str]:
    """The contrast in plain words, one sentence per item: the change, the interval and what it means, the
    signed-rank p, the volumes won and lost, the noise floor.

    Example: ``mraugment changed brain SSIM by **−0.0100** relative to baseline (selected checkpoints, mean over 3
    seeds × 12 brain volumes).`` ``The 95 % CI runs from −0.0180 to +0.0010: it includes zero, so this study
    cannot tell whether mraugment helps or hurts brain SSIM.`` ...
    """
    m, arm, ref = rec["metric"], rec["arm"], rec["reference"]
    name = metric_name(rec)
    where = "brain" if rec["split"] == "val_brain" else "knee validation"
    unit = UNITS[m]
    out = [f"{arm} changed {name} by **{value_text(rec['mean'], m, True)}{unit}** relative to {ref} "
           f"({rec['checkpoint']} checkpoints, mean over {plural(rec['n_seeds'], 'seed')} × "
           f"{plural(rec['n_volumes'], where + ' volume')}"
           f"{'' if rec.get('group', 'all') == 'all' else ', ' + str(rec['group'])})."]
    verdict = _verdict(rec)
    if verdict is None:
        out.append("There is no interval: it needs at least 2 seeds and 2 volumes.")
    else:
        span = f"The 95 % CI runs from {value_text(rec['ci_low'], m, True)} to {value_text(rec['ci_high'], m, True)}"
        if verdict:
            out.append(f"{span}: it excludes zero, so in this study {arm} made {name} {_direction(rec)} than {ref}.")
        else:
            out.append(f"{span}: it includes zero, so this study cannot tell whether {arm} makes {name} better or "
                       "worse.")
    p = number(rec["p_value"])
    out.append(f"Wilcoxon signed-rank test over the seed-averaged per-volume differences: p {p_text(p)}"
               + ("." if math.isfinite(p) else " (fewer than 2 volumes, or no difference at all)."))
    out.append(f"{arm} was better on {rec['wins']} and worse on {rec['losses']} of "
               f"{plural(rec['n_volumes'], 'volume')}.")
    floor = number(rec["noise_floor_sd"])
    if math.isfinite(floor):
        ratio = abs(number(rec["mean"])) / floor if floor > 0 else math.inf
        size = (f"the change is {ratio:.1f}× that" if math.isfinite(ratio) else "the seeds agree exactly")
        out.append(f"Noise floor (seed-to-seed sd of {ref}'s mean {name}): {value_text(floor, m)}{unit}; {size}.")
    else:
        out.append("Noise floor: not defined (fewer than 2 seeds).")
    return out

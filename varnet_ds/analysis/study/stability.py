"""Did the study's conclusion hold in a rerun? The same study (arms, reference, seeds, data) trained again in another
execution layout or environment (e.g. 2 threads per run, one run at a time: float summation order changes every
loss), compared contrast by contrast from the two ``study.json`` files alone.

For each primary contrast (every non-reference arm, ``val_brain`` and ``val_knee`` SSIM of the selected weights) it
says whether the sign of the mean difference held and whether "the 95 % interval excludes zero" held. A rerun of
another study (other arms, seeds, design or data) is refused, naming what differs: it would not say anything about
stability.

The design (``study.json``'s ``design``, from ``study.yaml``) is the base config, each arm's overrides and the
common overrides, less the keys a machine may set differently: the data folders' paths (their content is compared
through the provenance block's data identity) and logging (``varnet_ds.study_folder.may_differ``).
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional

from varnet_ds.analysis.provenance import check_block, compare_blocks
from varnet_ds.analysis.report_doc import fmt
from varnet_ds.analysis.runs import CompareError
from varnet_ds.analysis.stats import excludes_zero
from varnet_ds.analysis.study.markdown import SPLIT_NAMES, find_contrast, other_arms
from varnet_ds.study_folder import may_differ, override_key

SPLITS = ("val_brain", "val_knee")
METRIC = "ssim"
DATA_PATHS = ("data.train_path", "data.val_path", "data.transfer_path")


def _trained(overrides: List[str]) -> List[str]:
    """Overrides that set what is trained, here: a rerun with other epochs is another design (unlike the runner's
    ``studies.runner._fixed``, which lets a rerun of the same study extend its length)."""
    return [o for o in overrides if override_key(o) not in DATA_PATHS and not may_differ(override_key(o))]


def design(spec: Mapping[str, Any]) -> Dict[str, Any]:
    """``study.json``'s ``design`` from a ``study.yaml`` mapping: what the runs train, less machine keys."""
    return {"config": spec.get("config"), "overrides": _trained(list(spec.get("overrides") or [])),
            "arms": {arm: _trained(list(o)) for arm, o in (spec.get("arms") or {}).items()}}


def _seeds(summary: Mapping[str, Any]) -> Dict[str, List[int]]:
    return {arm: sorted(block.get("seeds", [])) for arm, block in summary["arms"].items()}


def check_same_study(summary: Mapping[str, Any], rerun: Mapping[str, Any], where: str,
                     here: str = "study.json") -> None:
    """Refuse a rerun that is another study: other arms, reference, seeds, design or data.

    Args:
        where, here: the rerun's and this study's ``study.json`` paths (named in the message).

    Raises:
        CompareError: naming ``where`` and every difference.
    """
    problems = []
    if summary["reference"] != rerun["reference"]:
        problems.append(f"reference arm {summary['reference']!r} vs {rerun['reference']!r}")
    if _seeds(summary) != _seeds(rerun):
        problems.append(f"arms and seeds {_seeds(summary)} vs {_seeds(rerun)}")
    for doc, path in ((summary, here), (rerun, where)):
        if not isinstance(doc.get("design"), Mapping):
            raise CompareError(f"{path}: no 'design' (written before study.json recorded it): rerun "
                               "`varnet-ds study-report` on its study folder")
    for key in ("config", "overrides", "arms"):
        if summary["design"].get(key) != rerun["design"].get(key):
            problems.append(f"design.{key} {summary['design'].get(key)!r} vs {rerun['design'].get(key)!r}")
    data = compare_blocks(check_block(summary.get("provenance"), here),
                          check_block(rerun.get("provenance"), where))["data"]
    problems += data
    if problems:
        raise CompareError(f"{where} is not a rerun of study {summary['study']!r}: " + "; ".join(problems))


def compare(summary: Mapping[str, Any], rerun: Mapping[str, Any]) -> List[Dict[str, Any]]:
    """Per primary contrast: both means and intervals, ``sign_held`` and ``excludes_zero_held`` (None: undefined)."""
    out = []
    for arm in other_arms(summary):
        for split in SPLITS:
            a, b = find_contrast(summary, arm, split, METRIC), find_contrast(rerun, arm, split, METRIC)
            if a is None or b is None:
                continue
            signs = [None if r["mean"] is None or r["mean"] == 0 else r["mean"] > 0 for r in (a, b)]
            excl = [excludes_zero(r) for r in (a, b)]
            out.append({"arm": arm, "reference": summary["reference"], "split": split, "metric": METRIC,
                        "this": a, "rerun": b,
                        "sign_held": None if None in signs else signs[0] == signs[1],
                        "excludes_zero_held": None if None in excl else excl[0] == excl[1],
                        "excludes_zero": excl})
    return out


def _held(value: Optional[bool]) -> str:
    return {True: "held", False: "did not hold", None: "undefined"}[value]


def _interval(rec: Mapping[str, Any]) -> str:
    return (f"{fmt(rec['mean'], METRIC, True)} [{fmt(rec['ci_low'], METRIC, True)}, "
            f"{fmt(rec['ci_high'], METRIC, True)}]")


def stability_lines(summary: Mapping[str, Any], rerun: Mapping[str, Any], rerun_json: str,
                    command: Optional[str] = None) -> List[str]:
    """README/markdown lines: where the rerun ran and, per contrast, whether sign and "excludes zero" held."""
    how = f" (`{command}`)" if command else ""
    lines = [f"Rerun of the same study on {rerun['device']}{how}, from `{rerun_json}`:", ""]
    for rec in compare(summary, rerun):
        zero = {True: "excludes", False: "includes", None: "n/a"}
        lines.append(f"- {SPLIT_NAMES[rec['split']]} {METRIC.upper()}, {rec['arm']} − {rec['reference']}: "
                     f"{_interval(rec['this'])} here, {_interval(rec['rerun'])} in the rerun; the sign "
                     f"{_held(rec['sign_held'])}; the interval {zero[rec['excludes_zero'][0]]} zero here and "
                     f"{zero[rec['excludes_zero'][1]]} zero in the rerun (\"excludes zero\" "
                     f"{_held(rec['excludes_zero_held'])}).")
    return lines

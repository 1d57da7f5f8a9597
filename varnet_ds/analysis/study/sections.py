"""The study report's content as :mod:`varnet_ds.analysis.report_doc` blocks: the contrasts in words, the acquisition x
acceleration breakdown, per-arm numbers, model selection, all contrasts, the method and the provenance.

Numbers of contrasts come from the ``study.json`` mapping (``summary``); the inner cells of the breakdown (one
acquisition at one acceleration, which ``study.json`` does not hold) are means of the same seed x volume difference
matrix (:func:`varnet_ds.analysis.study.contrasts.delta_matrix`) the contrasts are computed from.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Mapping, Optional, Tuple

from varnet_ds.analysis.report_doc import Block, Bullets, Heading, Para, Table
from varnet_ds.analysis.runs import flatten, last_row_per_epoch
from varnet_ds.analysis.stats import excludes_zero, wins_losses
from varnet_ds.analysis.study.contrast_text import headline, lead_sentences, metric_name, p_text, value_text
from varnet_ds.analysis.study.contrasts import delta_matrix
from varnet_ds.analysis.study.load import Study, selected_epoch
from varnet_ds.analysis.study.markdown import arm_key, find_contrast, mean_sd_text, other_arms

SECONDARY = (("val_brain", "psnr"), ("val_brain", "nmse"), ("val_knee", "ssim"))
EVENT_SKIP = ("step", "epoch", "split", "event", "time", "provenance")


def primary(summary: Mapping[str, Any], arm: str, split: str = "val_brain", metric: str = "ssim",
            group: str = "all") -> Optional[Dict[str, Any]]:
    """The contrast record of ``arm`` at the study's primary checkpoint (``None`` when absent)."""
    return find_contrast(summary, arm, split, metric, summary.get("primary", "selected"), group)


def lead_blocks(summary: Mapping[str, Any]) -> List[Block]:
    """Per non-reference arm: the primary contrast (brain SSIM) in plain words, then the other metrics briefly."""
    blocks: List[Block] = []
    for arm in other_arms(summary):
        rec = primary(summary, arm)
        if rec is None:
            blocks.append(Para(f"study.json has no primary contrast for {arm} (brain SSIM, "
                               f"{summary.get('primary', 'selected')} checkpoint, all volumes).", css="lead"))
            continue
        blocks.append(Para(" ".join(lead_sentences(rec)), css="lead"))
        others = [r for split, metric in SECONDARY if (r := primary(summary, arm, split, metric)) is not None]
        if others:
            blocks.append(Bullets([headline(r) for r in others]))
    return blocks


def breakdown_table(summary: Mapping[str, Any], study: Study, arm: str, metric: str) -> Table:
    """Brain ``metric`` Δ (arm − reference, primary checkpoint) by acquisition x acceleration.

    Cells: mean Δ over the cell's volumes and seeds, ``(better/worse volumes)``; row and column margins and the
    corner: the ``study.json`` contrast of that acquisition / acceleration / all volumes with its 95 % CI and p.
    """
    ckpt = summary.get("primary", "selected")
    ref_tables = study.tables(study.reference, ckpt, "val_brain")
    arm_tables = study.tables(arm, ckpt, "val_brain")
    rows = [r for table in ref_tables.values() for r in table]
    acqs = sorted({r.acquisition for r in rows})
    accs = sorted({r.acceleration for r in rows})

    def margin(group: str) -> str:
        rec = find_contrast(summary, arm, "val_brain", metric, ckpt, group) or find_contrast(
            summary, arm, "val_brain", metric, ckpt, "all")  # a factor with one level has no group of its own
        if rec is None:
            return "n/a"
        return (f"{value_text(rec['mean'], metric, True)} [{value_text(rec['ci_low'], metric, True)}, "
                f"{value_text(rec['ci_high'], metric, True)}], p {p_text(rec['p_value'])}")

    body = []
    for acq in acqs:
        cells = [acq]
        for acc in accs:
            delta, _, fnames = delta_matrix(ref_tables, arm_tables, metric, acq, acc)
            if not delta.size:
                cells.append("—")
                continue
            wins, losses = wins_losses(delta.mean(axis=0), metric)
            cells.append(f"{value_text(delta.mean(), metric, True)} ({wins}/{losses} of {len(fnames)})")
        body.append(cells + [margin(f"acquisition={acq}")])
    body.append(["all acquisitions", *(margin(f"acceleration={acc}") for acc in accs), margin("all")])
    caption = (f"**{metric_name({'split': 'val_brain', 'metric': metric})}, {arm} − {study.reference}** ({ckpt} "
               "checkpoints). Inner cells: mean Δ over the cell's volumes and seeds (volumes better/worse for "
               f"{arm} of n). Last row and column: study.json's contrast of that acceleration / acquisition, with "
               "95 % CI and Wilcoxon p.")
    return Table(["acquisition", *(f"×{acc}" for acc in accs), "all accelerations"], body, caption=caption)


def arms_table(summary: Mapping[str, Any]) -> Table:
    """Per arm and checkpoint: knee val SSIM, brain SSIM, brain PSNR (mean ± sd over seeds, from study.json)."""
    cols = (("val_knee", "ssim"), ("val_brain", "ssim"), ("val_brain", "psnr"), ("val_brain", "nmse"))
    body = []
    for arm, rec in summary["arms"].items():
        for ckpt in ("selected", "final"):
            body.append([arm, ckpt, str(len(rec["seeds"])),
                         *(mean_sd_text(rec[arm_key(s, m)][ckpt], m) for s, m in cols)])
    return Table(["arm", "checkpoint", "seeds", *(metric_name({"split": s, "metric": m}) for s, m in cols)], body,
                 caption="Mean ± sd over seeds of each run's mean over its (volume, acceleration) rows.")


def selection_blocks(study: Study) -> List[Block]:
    """Which evaluation each run's model selection picked, and whether it was the last one."""
    body, early = [], 0
    for r in study.ordered_runs():
        evals = sorted(last_row_per_epoch(r.run.val_rows("val_knee")))
        epoch = selected_epoch(r)
        last = evals[-1] if evals else None
        is_last = "n/a" if epoch is None or last is None else ("yes" if epoch == last else "no")
        early += is_last == "no"
        value = r.selected.get("value")
        body.append([r.name, ", ".join(str(e) for e in evals) or "none",
                     "unknown" if epoch is None else str(epoch), str(r.selected.get("step", "n/a")),
                     str(r.selected.get("criterion", "n/a")),
                     f"{value:.4f}" if isinstance(value, (int, float)) else "n/a", is_last])
    text = (f"Model selection picked an evaluation before the last in {early} of {len(body)} runs; the `selected` "
            "checkpoint is the study's primary one, `final` the weights after the last epoch.")
    return [Para(text), Table(["run", "knee val evaluations (epochs)", "selected epoch", "selected step", "criterion",
                               "criterion value", "selected = last"], body)]


def contrasts_table(summary: Mapping[str, Any]) -> Table:
    """The contrast records of study.json: every group at the primary checkpoint, group ``all`` at the others
    (their breakdowns are in study.md and study.json)."""
    ckpt = summary.get("primary", "selected")
    recs = [r for r in summary["contrasts"] if r["checkpoint"] == ckpt or r["group"] == "all"]
    several = len({r["arm"] for r in recs}) > 1
    body = []
    for rec in recs:
        m = rec["metric"]
        excl = {True: "yes", False: "no", None: "n/a"}[excludes_zero(
            {**rec, "ci_low": _f(rec["ci_low"]), "ci_high": _f(rec["ci_high"])})]
        body.append([*([f"{rec['arm']} − {rec['reference']}"] if several else []), rec["checkpoint"],
                     metric_name(rec), rec["group"], value_text(rec["mean"], m, True),
                     f"[{value_text(rec['ci_low'], m, True)}, {value_text(rec['ci_high'], m, True)}]",
                     p_text(rec["p_value"]).removeprefix("= "), f"{rec['n_seeds']} × {rec['n_volumes']}",
                     value_text(rec["noise_floor_sd"], m), f"{rec['wins']}/{rec['losses']}", excl])
    arms = {f"{r['arm']} − {r['reference']}" for r in recs}
    caption = ("" if several else f"**{next(iter(arms), '')}**. ") + (
        f"Every breakdown at the `{ckpt}` checkpoint, the overall contrast at the others. noise floor sd = "
        "seed-to-seed sd of the reference arm's mean; better/worse = volumes.")
    return Table([*(["arms"] if several else []), "checkpoint", "metric", "group", "mean Δ", "95 % CI", "p",
                  "seeds × volumes", "noise floor sd", "better/worse", "excludes 0"], body, caption=caption)


def _f(value: Any) -> float:
    return float("nan") if value is None else float(value)


def text_of(value: Any) -> str:
    """A provenance value as one table cell: strings as they are, lists joined, mappings as compact JSON."""
    if value is None:
        return "null"
    if isinstance(value, str):
        return value or '""'
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return ", ".join(text_of(v) for v in value) if value else "none"
    if isinstance(value, Mapping):
        return json.dumps(value, sort_keys=True, default=str) if value else "none"
    return str(value)


def collapse(rows: Mapping[str, Mapping[str, Any]]) -> Tuple[Dict[str, Any], List[str]]:
    """``name -> {column: value}`` split into the columns with one value in every row and those that vary."""
    cols = list(dict.fromkeys(c for r in rows.values() for c in r))
    same = {c: next(iter(rows.values())).get(c) for c in cols
            if len({text_of(r.get(c)) for r in rows.values()}) == 1}
    return same, [c for c in cols if c not in same]


def mapping_blocks(title: str, value: Mapping[str, Any], level: int = 3) -> List[Block]:
    """Any mapping as a heading and tables: scalars and lists as ``key | value`` rows, sub-mappings flattened to
    dotted keys; a sub-mapping whose values are all mappings (``{run: {key: value}}``, ``{folder: identity}``)
    becomes a table with one row per entry, its columns that hold one value in every row shown once as
    ``key.column | value (all N)``."""
    blocks: List[Block] = [Heading(title, level)]
    plain: List[List[str]] = []
    nested: List[Block] = []
    for key, v in value.items():
        if isinstance(v, Mapping) and v and all(isinstance(x, Mapping) for x in v.values()):
            flat = {str(k): flatten(x) for k, x in v.items()}
            same, varying = collapse(flat)
            if len(flat) > 1:
                plain += [[f"{key}.{c}", f"{text_of(x)} (all {len(flat)})"] for c, x in same.items()]
            else:
                varying = list(dict.fromkeys([*same, *varying]))
            if varying:
                nested.append(Table(["", *varying], [[k, *(text_of(x.get(c)) for c in varying)]
                                                     for k, x in flat.items()], caption=f"**{key}**"))
        elif isinstance(v, Mapping) and v:
            plain += [[f"{key}.{k}", text_of(x)] for k, x in flatten(v).items()]
        else:
            plain.append([str(key), text_of(v)])
    if plain:
        blocks.append(Table(["key", "value"], plain))
    return blocks + nested


def provenance_blocks(summary: Mapping[str, Any], study: Study) -> List[Block]:
    """study.yaml, the runs' start events (without their provenance) and study.json's ``provenance`` mapping."""
    blocks: List[Block] = [Para(f"Study folder `{study.folder}`; study.json generated {summary.get('generated')} "
                                f"(UTC); device: {summary.get('device')}.")]
    blocks += mapping_blocks("study.yaml", study.spec)
    starts = {}
    for r in study.ordered_runs():
        event = next((e for e in r.run.events() if e.get("event") == "start"), None)
        starts[r.name] = {k: v for k, v in (event or {"start event": "none"}).items() if k not in EVENT_SKIP}
    blocks += mapping_blocks("Start events of the runs", {"start": starts})
    prov = summary.get("provenance")
    if isinstance(prov, Mapping):
        blocks += mapping_blocks("Provenance (study.json)", prov)
    else:
        blocks.append(Para("study.json has no `provenance` mapping."))
    return blocks


def method_bullets(summary: Mapping[str, Any]) -> Bullets:
    """study.json's ``methods``, one bullet per entry."""
    return Bullets([f"**{k}**: {v}" for k, v in summary.get("methods", {}).items()])


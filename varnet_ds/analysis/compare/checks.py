"""Consistency checks across the compared runs; every finding becomes a line of the report's Warnings section."""

from __future__ import annotations

from collections import Counter
from typing import List, Sequence

from varnet_ds.analysis.runs import VAL_SPLITS, Run, cfg_get, flatten

# Config sections expected to differ between the arms of the study (names, output folders, W&B, augmentation).
IGNORED_CONFIG_PREFIXES = ("run.name", "run.out_dir", "log.", "aug.", "train.resume", "train.init_weights")
PROBLEM_EVENTS = ("nonfinite_loss_skipped", "skipped_bad_files")


def last_epoch(run: Run) -> int:
    """Highest epoch of any evaluation row (-1 without evaluations)."""
    return max((r["epoch"] for r in run.rows if r["split"] in VAL_SPLITS), default=-1)


def last_step(run: Run) -> int:
    """Highest step of any row (-1 for an empty run)."""
    return max((r["step"] for r in run.rows), default=-1)


def event_counts(run: Run) -> Counter:
    """Event name -> count."""
    return Counter(str(r.get("event", "?")) for r in run.events())


def run_status(run: Run) -> str:
    """``finished`` if the last event is ``end``, else ``unfinished (last event: ...)``."""
    events = [str(r.get("event", "?")) for r in run.events()]
    if events and events[-1] == "end":
        return "finished"
    return f"unfinished (last event: {events[-1]})" if events else "unfinished (no events)"


def check_runs(runs: Sequence[Run]) -> List[str]:
    """Missing splits, different lengths, unfinished runs, problem events, config differences, aug mismatch."""
    notes: List[str] = []
    for run in runs:
        if not run.train_rows():
            notes.append(f"{run.label}: no train rows in its metrics")
        for split in VAL_SPLITS:
            if not run.val_rows(split):
                notes.append(f"{run.label}: no {split} evaluations (missing split); its {split} curves and tables "
                             "are empty and its knee→brain gap cannot be computed")
        status = run_status(run)
        if status != "finished":
            notes.append(f"{run.label}: run did not finish: {status}")
        counts = event_counts(run)
        for event in PROBLEM_EVENTS:
            if counts.get(event):
                notes.append(f"{run.label}: {counts[event]} '{event}' event(s) during training")
        enabled = cfg_get(run.config, "aug.enabled")
        p_values = [r["aug_p"] for r in run.train_rows() if "aug_p" in r]
        if enabled is False and any(p > 0 for p in p_values):
            notes.append(f"{run.label}: aug.enabled is false but aug_p > 0 was logged")
    if len(runs) > 1:
        epochs = {run.label: last_epoch(run) for run in runs}
        steps = {run.label: last_step(run) for run in runs}
        if len(set(epochs.values())) > 1 or len(set(steps.values())) > 1:
            notes.append("runs differ in length: " + ", ".join(
                (f"{label} last evaluated at epoch {epochs[label]}" if epochs[label] >= 0 else f"{label} never "
                 "evaluated") + f" (last step {steps[label]})" for label in epochs)
                + "; 'final' compares different training lengths, see the 'last common epoch' columns")
        ref = runs[0]
        if cfg_get(ref.config, "aug.enabled") is True and any(cfg_get(r.config, "aug.enabled") is False
                                                              for r in runs[1:]):
            notes.append(f"the reference (first) run {ref.label} uses MRAugment while a later run does not: "
                         "differences are later run minus first run, so their sign is reversed from "
                         "'MRAugment − baseline'")
        notes += _config_differences(runs)
    return notes


def _config_differences(runs: Sequence[Run]) -> List[str]:
    flat = [flatten(r.config) for r in runs]
    if not all(flat):
        return []
    keys = sorted(set().union(*flat))
    differing = [k for k in keys if not k.startswith(IGNORED_CONFIG_PREFIXES)
                 and len({repr(f.get(k, "<unset>")) for f in flat}) > 1]
    if not differing:
        return []
    shown = [f"{k} (" + ", ".join(f"{r.label}: {f.get(k, '<unset>')!r}" for r, f in zip(runs, flat)) + ")"
             for k in differing[:12]]
    more = f" and {len(differing) - 12} more" if len(differing) > 12 else ""
    return ["the runs' configs differ outside run/aug/log settings, so more than augmentation may explain the "
            "differences: " + "; ".join(shown) + more]

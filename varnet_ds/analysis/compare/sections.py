"""The report's content: the comparison results laid out as a :class:`~varnet_ds.analysis.report_doc.Document`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from varnet_ds.analysis.compare.checks import event_counts, last_epoch, last_step, run_status
from varnet_ds.analysis.compare.rows import DiffRow, PairedRow, TransferRow
from varnet_ds.analysis.report_doc import Bullets, Document, Figure, Heading, Para, Table, fmt
from varnet_ds.analysis.runs import METRICS, VAL_SPLITS, Run, cfg_get
from varnet_ds.analysis.stats import N_RESAMPLES

SPLIT_NAMES = {"val_knee": "knee (val_knee)", "val_brain": "brain (val_brain, transfer)"}


@dataclass
class Results:
    """Everything the report shows.

    Attributes:
        runs: compared runs; ``runs[0]`` is the reference of every difference.
        transfer: final/best rows of every run, split and breakdown.
        diffs: other run label -> its differences to the reference.
        paired: ``(other label, split)`` -> paired per-volume rows.
        figures: figure key (``train_loss``, ``val_ssim``, ...) -> figure block.
        warnings: Warnings section lines.
        note: the "what this shows / does not show" text.
        files: data files written beside the report.
    """

    runs: List[Run]
    transfer: List[TransferRow]
    diffs: Dict[str, List[DiffRow]]
    paired: Dict[Tuple[str, str], List[PairedRow]]
    figures: Dict[str, Figure]
    warnings: List[str]
    note: str
    files: List[str] = field(default_factory=list)
    seed: int = 0


def _find(transfer: Sequence[TransferRow], label: str, split: str) -> Optional[TransferRow]:
    return next((t for t in transfer if t.label == label and t.split == split and t.acquisition == "all"
                 and t.acceleration == "all"), None)


def _ci_text(row: PairedRow) -> str:
    if row.n < 2 or not math.isfinite(row.ci_low):
        return "interval not available"
    inside = "includes 0" if row.ci_low <= 0.0 <= row.ci_high else "excludes 0"
    return (f"95% bootstrap interval [{fmt(row.ci_low, row.metric, True)}, {fmt(row.ci_high, row.metric, True)}] "
            f"({inside})")


def key_results(res: Results) -> List[str]:
    """Headline bullets: final SSIM per split, paired brain SSIM difference and the knee→brain gap."""
    items = []
    ref = res.runs[0]
    for other in res.runs[1:]:
        for split in reversed(VAL_SPLITS):
            a, b = _find(res.transfer, ref.label, split), _find(res.transfer, other.label, split)
            if a is None or b is None:
                continue
            items.append(f"**{SPLIT_NAMES[split]}** final SSIM: {ref.label} {fmt(a.final_ssim, 'ssim')} (epoch "
                         f"{a.final_epoch}) vs {other.label} {fmt(b.final_ssim, 'ssim')} (epoch {b.final_epoch}), "
                         f"difference {fmt(b.final_ssim - a.final_ssim, 'ssim', True)}; best "
                         f"{fmt(a.best_ssim, 'ssim')} vs {fmt(b.best_ssim, 'ssim')}.")
            row = next((p for p in res.paired.get((other.label, split), [])
                        if p.group == "all" and p.metric == "ssim"), None)
            if row is not None:
                items.append(f"Paired per-volume {split} SSIM ({other.label} − {ref.label}) over {row.n} volume(s): "
                             f"mean {fmt(row.mean_diff, 'ssim', True)}, {_ci_text(row)}; {other.label} better on "
                             f"{row.wins}, worse on {row.losses}, tied on {row.ties}.")
    for run in res.runs:
        knee, brain = _find(res.transfer, run.label, "val_knee"), _find(res.transfer, run.label, "val_brain")
        if knee is not None and brain is not None:
            items.append(f"Knee→brain SSIM gap of {run.label} at its final evaluations: "
                         f"{fmt(knee.final_ssim - brain.final_ssim, 'ssim', True)} (knee {fmt(knee.final_ssim, 'ssim')}"
                         f", brain {fmt(brain.final_ssim, 'ssim')}).")
    return items or ["No run pair with evaluations of the same split; see Warnings."]


def runs_table(runs: Sequence[Run]) -> Table:
    rows = []
    for run in runs:
        counts = event_counts(run)
        aug = cfg_get(run.config, "aug.enabled")
        aug_text = "n/a" if aug is None else ("MRAugment" if aug else "off")
        if aug:
            aug_text += f" ({cfg_get(run.config, 'aug.schedule', '?')}, p_max {cfg_get(run.config, 'aug.p_max', '?')})"
        evals = "/".join(str(len({r["step"] for r in run.val_rows(s)})) for s in VAL_SPLITS)
        rows.append([run.label, run.source, aug_text, str(cfg_get(run.config, "train.epochs", "n/a")),
                     str(last_epoch(run)), str(last_step(run)), evals, run_status(run),
                     ", ".join(f"{k} ×{v}" for k, v in sorted(counts.items())) or "none"])
    return Table(["run", "source", "augmentation", "epochs (config)", "last eval epoch", "last step",
                  "evaluations knee/brain", "status", "events"], rows)


def transfer_table(transfer: Sequence[TransferRow], split: str) -> Table:
    rows = [[t.label, t.acquisition, t.acceleration, "n/a" if t.num_volumes is None else str(t.num_volumes),
             str(t.final_epoch), *(fmt(getattr(t, f"final_{m}"), m) for m in METRICS),
             *(f"{fmt(getattr(t, f'best_{m}'), m)} ({getattr(t, f'best_{m}_epoch')})" for m in METRICS)]
            for t in transfer if t.split == split]
    return Table(["run", "acquisition", "acceleration", "volumes", "final epoch", "final SSIM", "final PSNR",
                  "final NMSE", "best SSIM (epoch)", "best PSNR (epoch)", "best NMSE (epoch)"], rows,
                 caption=f"**{SPLIT_NAMES[split]}**")


def diff_table(rows: Sequence[DiffRow]) -> Table:
    header = ["split", "acquisition", "acceleration", "Δ final SSIM", "Δ final PSNR", "Δ final NMSE",
              "Δ best SSIM", "Δ best PSNR", "Δ best NMSE", "last common epoch", "Δ SSIM @common", "Δ PSNR @common",
              "Δ NMSE @common"]
    body = [[d.split, d.acquisition, d.acceleration,
             *(fmt(getattr(d, f"d_final_{m}"), m, True) for m in METRICS),
             *(fmt(getattr(d, f"d_best_{m}"), m, True) for m in METRICS),
             "n/a" if d.common_epoch is None else str(d.common_epoch),
             *(fmt(getattr(d, f"d_common_{m}"), m, True) for m in METRICS)] for d in rows]
    return Table(header, body)


def paired_table(rows: Sequence[PairedRow]) -> Table:
    body = [[p.group, p.metric.upper(), str(p.n), fmt(p.mean_reference, p.metric), fmt(p.mean_other, p.metric),
             fmt(p.mean_diff, p.metric, True),
             f"[{fmt(p.ci_low, p.metric, True)}, {fmt(p.ci_high, p.metric, True)}]", f"{p.wins}/{p.losses}/{p.ties}"]
            for p in rows]
    ref, other = (rows[0].reference, rows[0].other) if rows else ("reference", "other")
    return Table(["volumes", "metric", "n", f"mean {ref}", f"mean {other}", f"mean Δ ({other} − {ref})",
                  "95% bootstrap interval", f"{other} better/worse/tied"], body)


def build_document(res: Results, smooth: float) -> Document:
    """Assemble the report; figures absent from ``res.figures`` are left out (their reason is in Warnings)."""
    ref = res.runs[0]
    doc = Document("Knee → brain transfer: " + " vs ".join(r.label for r in res.runs))
    direction = (f"Reference run: **{ref.label}**. Every difference is **later run − {ref.label}** (for SSIM and "
                 "PSNR positive means the later run is better, for NMSE negative does)." if len(res.runs) > 1 else
                 f"Single run **{ref.label}**: no differences are computed.")
    doc.add(Para(direction), Heading("What this shows / does not show"), Para(res.note, css="note"),
            Heading("Key results"), Bullets(key_results(res)), Heading("Warnings"))
    if res.warnings:
        doc.add(Bullets(list(res.warnings), css="warnings"))
    else:
        doc.add(Para("None: all runs have both splits, the same length and comparable configs.", css="ok"))
    doc.add(Heading("Runs"), runs_table(res.runs))
    fig = res.figures
    doc.add(Heading("Training"))
    doc.add(*(fig[k] for k in ("train_loss", "aug_p") if k in fig))
    doc.add(Heading("Validation curves"))
    doc.add(*(fig[k] for k in ("val_ssim", "val_psnr", "gap") if k in fig))
    doc.add(Heading("Transfer table"),
            Para("Final = the run's last evaluation; best = best value over its evaluations (epoch in brackets). "
                 "Rows: overall ('all'), per acceleration, per acquisition, per acquisition × acceleration. "
                 "Means over (volume, acceleration) pairs, as fastMRI's evaluation."))
    for split in VAL_SPLITS:
        if any(t.split == split for t in res.transfer):
            doc.add(transfer_table(res.transfer, split))
    for other, rows in res.diffs.items():
        doc.add(Heading(f"Differences {other} − {ref.label}", level=3))
        doc.add(diff_table(rows) if rows else Para("No split/breakdown was evaluated by both runs."))
    doc.add(Heading("Paired per-volume comparison"),
            Para(f"Volumes matched by (fname, acceleration) in the runs' per-volume tables (final evaluation). "
                 f"Interval: percentile bootstrap of the mean difference over volumes (scipy.stats.bootstrap, "
                 f"{N_RESAMPLES} resamples, seed {res.seed}); it reflects the spread over volumes only, not "
                 "training-run randomness."))
    for (other, split), rows in sorted(res.paired.items(), key=lambda kv: (kv[0][0], kv[0][1] != "val_brain")):
        doc.add(Heading(f"{SPLIT_NAMES[split]}: {other} − {ref.label}", level=3))
        doc.add(paired_table(rows) if rows else Para("Not available (see Warnings)."))
    if "paired" in fig:
        doc.add(fig["paired"])
    doc.add(Heading("Reconstructions"))
    doc.add(fig["recon"] if "recon" in fig else Para("No reconstruction panels available (see Warnings)."))
    doc.add(Heading("Files"), Para(f"Written beside this report (training-loss EMA weight {smooth:g}, bootstrap "
                                   f"seed {res.seed}):"), Bullets([f"`{name}`" for name in res.files]))
    return doc

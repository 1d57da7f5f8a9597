"""Knee->brain comparison report of training runs (e.g. baseline vs MRAugment).

Usage::

    varnet-ds report RUN_A RUN_B [...] --out DIR [--labels a b] [--smooth 0.9] [--note TEXT]
    varnet-ds report --wandb ENTITY/PROJECT --runs ID_A ID_B --out DIR
    varnet-ds report runs/<study> --out DIR    # a study folder (with study.yaml)

(the same: ``python -m varnet_ds.analysis.compare.report``; in a source checkout ``python analysis/compare.py``)

writes into DIR: PNG curves (train loss, validation SSIM/PSNR, MRAugment p, knee->brain gap, paired per-volume
scatter, reconstruction panels), CSV tables (``transfer_table.csv``, ``transfer_diff.csv``,
``paired_comparison.csv``, ``paired_volumes.csv``), ``report.md`` and a self-contained ``report.html``.
The first run is the reference: differences are later run minus first run.

A study folder (with ``study.yaml``, a multi-seed study: :mod:`varnet_ds.analysis.study.report`) given alone gets the
study's own report instead (:mod:`varnet_ds.analysis.study.page`): ``report.md``/``report.html`` lead with the
study's contrasts from
``study.json`` (written into DIR with ``per_volume.csv``, ``study_seeds.png`` and ``study.md``), and its runs are
never compared one against another. Several study folders get one such report each, in ``DIR/<study folder
name>``. A study folder given together with run folders stands for its run folders (labels ``<arm>-s<seed>``)
in the run comparison, and its study outputs are written beside it. Reads files only (numpy, matplotlib, h5py,
yaml); never imports the training engine.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from varnet_ds.analysis import plots
from varnet_ds.analysis.compare.checks import check_runs
from varnet_ds.analysis.compare.rows import DiffRow, PairedRow, TransferRow, diff_rows, paired_rows, transfer_rows
from varnet_ds.analysis.compare.sections import Results, build_document
from varnet_ds.analysis.recon import recon_panels
from varnet_ds.analysis.report_doc import Figure, render_html, render_markdown
from varnet_ds.analysis.runs import VAL_SPLITS, CompareError, Run, assign_labels, load_run
from varnet_ds.analysis.study.load import load_study
from varnet_ds.analysis.study.page import build_study_page
from varnet_ds.analysis.study.report import build_study_report
from varnet_ds.exits import entry_point
from varnet_ds.files import atomic_write_csv, atomic_write_text
from varnet_ds.study_folder import is_study

DEFAULT_NOTE = (
    "What this shows: how VarNets trained on knee data only (the reference run and the other run(s), e.g. without "
    "and with MRAugment) reconstruct brain data they never saw in training: validation SSIM/PSNR/NMSE over "
    "epochs for knee and brain, final and best values, the knee→brain gap, and a paired comparison on the same "
    "brain volumes. What it does not show: a general claim about MRAugment. Each arm is one training run (one "
    "seed), so the bootstrap interval covers the spread over volumes, not over training runs. On the demo data "
    "the knees are procedural phantoms and the brain coils are simulated (synthetic sensitivities on a template "
    "brain), so the demo numbers show that the pipeline runs end to end, not how the methods compare on real "
    "fastMRI scans."
)
FIGURES = {
    "train_loss": ("train_loss.png", "Training loss (1 − SSIM on knee) per optimizer step: raw values faint, "
                   "bias-corrected EMA solid."),
    "aug_p": ("aug_p.png", "MRAugment augmentation probability p, mean over each epoch's steps (0 for runs "
              "without augmentation)."),
    "val_ssim": ("val_ssim.png", "Validation SSIM vs epoch (overall; last evaluation of each epoch): knee "
                 "validation set and brain transfer set."),
    "val_psnr": ("val_psnr.png", "Validation PSNR (dB) vs epoch (overall; last evaluation of each epoch)."),
    "gap": ("gap.png", "Knee→brain gap per run: knee minus brain, overall SSIM and PSNR, at epochs where both "
            "were evaluated (smaller = better transfer)."),
    "paired": ("paired_brain.png", "Per-volume brain SSIM and PSNR: reference run on x, other run on y, one point "
               "per (volume, acceleration); points above the line favour the other run."),
    "recon": ("recon_panels.png", ""),
}
TABLE_FILES = ("transfer_table.csv", "transfer_diff.csv", "paired_comparison.csv", "paired_volumes.csv")


def _write_csv(path: Path, rows: Sequence[Any], columns: Sequence[str]) -> None:
    atomic_write_csv(path, columns, ([dataclasses.asdict(row)[c] for c in columns] if dataclasses.is_dataclass(row)
                                     else row for row in rows))


def _columns(cls: Any) -> List[str]:
    return [f.name for f in dataclasses.fields(cls)]


def build_report(run_dirs: Sequence[Path | str], out_dir: Path | str, labels: Optional[Sequence[str]] = None,
                 note: Optional[str] = None, *, smooth: float = 0.9, seed: int = 0) -> Path:
    """Compare run folders and write the report.

    Args:
        run_dirs: run folders; the first is the reference (differences are later minus first). Study folders
            (with ``study.yaml``) given alone get the study report
            (:func:`varnet_ds.analysis.study.page.build_study_page`, in ``out_dir/<study>`` when several); a study
            folder among run folders expands to its runs, and its study outputs are written into ``out_dir`` too.
        out_dir: output folder (created; this function's own files in it are replaced).
        labels: display names, one per run (default: ``run.name`` of each config, else the folder name).
        note: "what this shows / does not show" text (default: :data:`DEFAULT_NOTE` for runs, none for a study).
        smooth: EMA weight of the training-loss curves, in ``[0, 1)``.
        seed: seed of the bootstrap resampling.

    Returns:
        Path of ``report.md`` (``report.html`` is beside it; the first study's when several are given).

    Raises:
        CompareError: a run folder or its ``metrics.jsonl`` is missing or malformed, a bad study folder, or bad
            arguments (``labels`` with study folders only).
    """
    return build_reports(run_dirs, out_dir, labels, note, smooth=smooth, seed=seed)[0]


def build_reports(run_dirs: Sequence[Path | str], out_dir: Path | str, labels: Optional[Sequence[str]] = None,
                  note: Optional[str] = None, *, smooth: float = 0.9, seed: int = 0) -> List[Path]:
    """:func:`build_report`, returning every ``report.md`` written (one per study when only studies are given)."""
    if not run_dirs:
        raise CompareError("no run folders given")
    if all(is_study(d) for d in run_dirs):
        if labels:
            raise CompareError("--labels names run folders; the runs of a study folder are named <arm>-s<seed>")
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        for name in [f for f, _ in FIGURES.values()] + list(TABLE_FILES):
            (out / name).unlink(missing_ok=True)  # no run-comparison files left over from an earlier report
        return [build_study_page(d, out if len(run_dirs) == 1 else out / Path(d).resolve().name, note,
                                 smooth=smooth, seed=seed) for d in run_dirs]
    runs: List[Run] = []
    studies: List[Path] = []
    for d in run_dirs:
        if is_study(d):
            studies.append(Path(d))
            runs += [r.run for r in load_study(d).ordered_runs()]
        else:
            runs.append(load_run(d))
    md = build_report_from_runs(runs, out_dir, labels, note, smooth=smooth, seed=seed)
    for study_dir in studies:
        build_study_report(study_dir, Path(out_dir) / study_dir.resolve().name if len(studies) > 1 else out_dir,
                           seed=seed)
    return [md]


def build_report_from_runs(runs: List[Run], out_dir: Path | str, labels: Optional[Sequence[str]] = None,
                           note: Optional[str] = None, *, smooth: float = 0.9, seed: int = 0) -> Path:
    """:func:`build_report` for already loaded runs (run folders or W&B)."""
    if not runs:
        raise CompareError("no runs to compare")
    if not 0.0 <= smooth < 1.0:
        raise CompareError(f"--smooth = {smooth}: must be in [0, 1)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name in [f for f, _ in FIGURES.values()] + list(TABLE_FILES) + ["report.md", "report.html"]:
        (out / name).unlink(missing_ok=True)  # no stale outputs from an earlier report in the same folder

    warnings: List[str] = []
    assign_labels(runs, labels, warnings)
    for run in runs:
        warnings += run.notes
    warnings += check_runs(runs)
    ref = runs[0]
    transfer = [t for run in runs for t in transfer_rows(run)]
    diffs: Dict[str, List[DiffRow]] = {other.label: diff_rows(ref, other, warnings) for other in runs[1:]}
    paired: Dict[Any, List[PairedRow]] = {}
    pairs_for_plot = []
    volume_rows: List[List[Any]] = []
    for other in runs[1:]:
        for split in reversed(VAL_SPLITS):
            rows, pairs = paired_rows(ref, other, split, warnings, seed=seed)
            paired[(other.label, split)] = rows
            if split == "val_brain":
                pairs_for_plot.append((ref.label, other.label, pairs))
            volume_rows += [[ref.label, other.label, split, a.fname, a.acquisition, a.acceleration,
                             *(getattr(x, m) for m in ("ssim", "psnr", "nmse") for x in (a, b))] for a, b in pairs]

    figures: Dict[str, Figure] = {}
    made = {
        "train_loss": plots.plot_train_loss(runs, out / FIGURES["train_loss"][0], smooth),
        "aug_p": plots.plot_aug_p(runs, out / FIGURES["aug_p"][0]),
        "val_ssim": plots.plot_val_metric(runs, "ssim", out / FIGURES["val_ssim"][0]),
        "val_psnr": plots.plot_val_metric(runs, "psnr", out / FIGURES["val_psnr"][0]),
        "gap": plots.plot_gap(runs, out / FIGURES["gap"][0]),
        "paired": plots.plot_paired(pairs_for_plot, out / FIGURES["paired"][0]),
    }
    for key, path in made.items():
        if path is not None:
            figures[key] = Figure(path, FIGURES[key][1], alt=key)
        elif key != "paired" or len(runs) > 1:
            warnings.append(f"figure {FIGURES[key][0]} not drawn: no run has the data it needs")
    panels = recon_panels(runs, out / FIGURES["recon"][0], warnings)
    if panels is not None:
        figures["recon"] = Figure(panels.path, panels.caption, alt="reconstruction panels")

    _write_csv(out / "transfer_table.csv", transfer, _columns(TransferRow))
    _write_csv(out / "transfer_diff.csv", [d for rows in diffs.values() for d in rows], _columns(DiffRow))
    _write_csv(out / "paired_comparison.csv", [p for rows in paired.values() for p in rows], _columns(PairedRow))
    _write_csv(out / "paired_volumes.csv", volume_rows,
               ["reference", "other", "split", "fname", "acquisition", "acceleration", "ssim_reference",
                "ssim_other", "psnr_reference", "psnr_other", "nmse_reference", "nmse_other"])

    res = Results(runs=runs, transfer=transfer, diffs=diffs, paired=paired, figures=figures,
                  warnings=list(dict.fromkeys(warnings)), note=note or DEFAULT_NOTE,
                  files=[*(f.path.name for f in figures.values()), *TABLE_FILES, "report.md", "report.html"],
                  seed=seed)
    doc = build_document(res, smooth)
    md_path = out / "report.md"
    atomic_write_text(md_path, render_markdown(doc))
    atomic_write_text(out / "report.html", render_html(doc, out))
    return md_path


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser( description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="*", type=Path,
                        help="run folders or study folders (with study.yaml); the first run is the reference")
    parser.add_argument("--out", type=Path, required=True, help="output folder of the report")
    parser.add_argument("--labels", nargs="+", help="display names, one per run (default: run.name)")
    parser.add_argument("--smooth", type=float, default=0.9, help="EMA weight of the train-loss curve [0, 1)")
    parser.add_argument("--note", help="'what this shows / does not show' text (default: demo-data caveats)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.add_argument("--wandb", metavar="ENTITY/PROJECT", help="read runs from the W&B API instead of folders")
    parser.add_argument("--runs", nargs="+", metavar="ID", help="W&B run ids (with --wandb)")
    return parser.parse_args(argv)


@entry_point
def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry; returns the exit status (2 on bad input, with the reason on stderr)."""
    args = parse_args(argv)
    try:
        if args.wandb:
            if args.run_dirs:
                raise CompareError("give either run folders or --wandb ENTITY/PROJECT --runs ID ..., not both")
            from varnet_ds.analysis.compare.wandb_source import load_wandb_runs

            runs = load_wandb_runs(args.wandb, args.runs or [])
            mds = [build_report_from_runs(runs, args.out, args.labels, args.note, smooth=args.smooth,
                                          seed=args.seed)]
        else:
            if args.runs:
                raise CompareError("--runs needs --wandb ENTITY/PROJECT")
            if not args.run_dirs:
                raise CompareError("give run folders (RUN_A RUN_B ...) or --wandb ENTITY/PROJECT --runs ID ...")
            mds = build_reports(args.run_dirs, args.out, args.labels, args.note, smooth=args.smooth,
                                seed=args.seed)
    except CompareError as err:
        print(f"{os.path.basename(sys.argv[0])}: error: {err}", file=sys.stderr)  # argparse's prog
        return 2
    for md in mds:
        print(f"report: {md}\n        {md.with_suffix('.html')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

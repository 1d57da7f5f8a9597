"""``report.md`` / ``report.html`` of a study folder: the study's answer first, then what it rests on.

``varnet-ds report runs/<study> --out DIR`` (what ``make demo`` runs) calls :func:`build_study_page`: it writes
the study outputs (``study.json``, ``per_volume.csv``, ``study_seeds.png``, ``study.md``;
:mod:`varnet_ds.analysis.study.report`),
then a report that leads with each arm's primary contrast (brain SSIM, selected checkpoint) in words, taken from
``study.json``, and shows the per-volume paired differences, the acquisition x acceleration breakdown, per-arm
curves as mean ± sd over seeds, one fixed brain slice reconstructed by each arm with its error map, the epoch each
run selected, all contrasts, the method and the provenance. Runs are never compared one against another: a study's
runs differ in seed and arm by design. Reads files only (no torch): the reconstructions are the runs' ``recon/*.h5``
written by ``python -m varnet_ds.evaluate`` (the demo writes them for the first seed of each arm).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

from varnet_ds.analysis.recon import Panels, h5_panels, image_panels, recon_files
from varnet_ds.analysis.report_doc import Block, Bullets, Document, Figure, Heading, Para, render_html, render_markdown
from varnet_ds.analysis.runs import CompareError
from varnet_ds.analysis.stats import BOOTSTRAP_SEED, N_RESAMPLES
from varnet_ds.analysis.study.contrasts import delta_matrix
from varnet_ds.analysis.study.load import Study, load_study
from varnet_ds.analysis.study.markdown import other_arms
from varnet_ds.analysis.study.plots import plot_train_loss, plot_val_curves, plot_volume_deltas
from varnet_ds.analysis.study.report import FIGURE as SEEDS_FIGURE
from varnet_ds.analysis.study.report import OUTPUT_FILES, build_study_report
from varnet_ds.analysis.study.sections import (
    arms_table,
    breakdown_table,
    contrasts_table,
    lead_blocks,
    method_bullets,
    primary,
    provenance_blocks,
    selection_blocks,
)
from varnet_ds.files import atomic_write_text

FIGURES = {
    "volumes": "study_volumes.png",
    "val": "study_val_curves.png",
    "loss": "study_train_loss.png",
    "recon": "study_recon.png",
}
PAGE_FILES = ("report.md", "report.html")
CONSISTENCY_TOL = 1e-9


def volume_figure(summary: Mapping[str, Any], study: Study, arm: str, path: Path) -> Optional[Path]:
    """Per brain volume Δ (arm − reference, primary checkpoint), SSIM and PSNR panels.

    Raises:
        CompareError: the run folders' differences do not average to study.json's mean (a stale study.json).
    """
    ckpt = summary.get("primary", "selected")
    ref, oth = study.tables(study.reference, ckpt, "val_brain"), study.tables(arm, ckpt, "val_brain")
    acq_of = {r.fname: r.acquisition for rows in ref.values() for r in rows}
    panels = []
    for metric in ("ssim", "psnr"):
        rec = primary(summary, arm, "val_brain", metric)
        delta, _, fnames = delta_matrix(ref, oth, metric)
        if rec is None or not delta.size:
            continue
        mean = rec.get("mean")
        if mean is None or not math.isclose(float(delta.mean()), float(mean), rel_tol=0, abs_tol=CONSISTENCY_TOL):
            raise CompareError(f"{study.folder}: study.json's brain {metric} mean for {arm} ({mean}) differs from "
                               f"the run folders' ({float(delta.mean())}); rebuild it with varnet-ds study-report")
        panels.append((metric.upper() + (" (dB)" if metric == "psnr" else ""), delta, fnames, acq_of, rec))
    return plot_volume_deltas(panels, path, f"{arm} − {study.reference} per brain volume ({ckpt} checkpoints)")


def recon_settings(run_dir: Optional[Path]) -> str:
    """What ``recon/metrics.json`` says about the weights and mask of a run's reconstructions."""
    path = None if run_dir is None else run_dir / "recon" / "metrics.json"
    if path is None or not path.is_file():
        return "weights and mask not recorded (no recon/metrics.json)"
    try:
        settings = json.loads(path.read_text(encoding="utf-8")).get("settings", {})
    except (OSError, json.JSONDecodeError, AttributeError) as err:
        return f"{path} unreadable ({err})"
    ckpt = Path(str(settings.get("checkpoint", "?"))).name
    kind = {"model_fp32.pt": "final", "model_selected.pt": "selected"}.get(ckpt, "other")
    step = settings.get("checkpoint_step")
    return (f"weights `{ckpt}` ({kind}{'' if step is None else f', step {step}'}), "
            f"{settings.get('mask_type', '?')} mask ×{settings.get('acceleration', '?')}")


def recon_figure(study: Study, path: Path, notes: List[str]) -> Optional[Panels]:
    """One fixed brain slice reconstructed by each arm: the first seed whose runs of every arm have ``recon/*.h5``,
    the first volume (by file name) they all reconstructed, its middle slice; else each arm's last logged brain
    panel (first seed). ``None`` when neither exists."""
    for seed in study.seeds:
        runs = [study.runs[(arm, seed)].run for arm in study.arm_order()]
        if all(recon_files(r) for r in runs):
            panels = h5_panels(runs, path, notes, max_volumes=1)
            if panels is not None:
                used = "; ".join(f"{r.label}: {recon_settings(r.folder)}" for r in runs)
                return Panels(panels.path, panels.caption + " The slice is fixed in advance (first volume by file "
                              f"name, middle slice), not picked by result. Runs: {used}.")
    runs = [study.runs[(arm, study.seeds[0])].run for arm in study.arm_order()]
    notes.append("no seed has recon/*.h5 for every arm (python -m varnet_ds.evaluate --run RUN --data BRAIN --out "
                 "RUN/recon); showing the brain panel each run logged during training")
    return image_panels(runs, path, notes)


def _figure(made: Optional[Path], caption: str, alt: str, notes: List[str]) -> List[Block]:
    if made is None:
        notes.append(f"figure '{alt}' not drawn: the runs lack the data it needs")
        return [Para(f"No {alt} figure (see Notes).")]
    return [Figure(made, caption, alt=alt)]


def build_document(summary: Mapping[str, Any], study: Study, out: Path, note: Optional[str], smooth: float,
                   notes: List[str]) -> Document:
    """The report: lead (contrasts in words), what was compared, figures and tables, method, provenance."""
    arms = other_arms(summary)
    doc = Document(f"Study {summary['study']}: " + ", ".join(f"{a} vs {summary['reference']}" for a in arms))
    doc.add(*lead_blocks(summary))
    seeds = ", ".join(str(s) for s in study.seeds)
    doc.add(Para(f"{len(study.arms)} arms × {len(study.seeds)} seeds ({seeds}); run `<arm>-s<seed>` is paired with "
                 f"`{study.reference}-s<seed>` (same seed, same initial weights). Primary checkpoint: "
                 f"`{summary.get('primary', 'selected')}` (the evaluation with the best knee validation SSIM). "
                 f"Device: {summary.get('device')}. Numbers from `study.json`; method at the end."))
    if note:
        doc.add(Para(note, css="note"))
    doc.add(Heading("Per brain volume"))
    for arm in arms:
        name = FIGURES["volumes"] if len(arms) == 1 else FIGURES["volumes"].replace(".png", f"_{arm}.png")
        doc.add(*_figure(volume_figure(summary, study, arm, out / name),
                         f"{arm} − {summary['reference']}: seed-averaged difference per brain volume (large dots, "
                         "coloured by acquisition; small grey dots: each seed), the study's mean (dashed) and 95 % CI "
                         "(band); above zero the arm scores higher (better for SSIM and PSNR).",
                         "per-volume differences", notes))
    doc.add(Heading("By acquisition and acceleration"))
    for arm in arms:
        doc.add(breakdown_table(summary, study, arm, "ssim"), breakdown_table(summary, study, arm, "psnr"))
    doc.add(Heading("Curves"))
    doc.add(*_figure(plot_val_curves(study, out / FIGURES["val"]),
                     "Overall knee validation SSIM, brain SSIM and brain PSNR per evaluation epoch: mean over seeds "
                     "(line) ± sd (band).", "validation curves", notes))
    doc.add(*_figure(plot_train_loss(study, out / FIGURES["loss"], smooth),
                     f"Training loss per optimizer step: mean over seeds of each seed's bias-corrected EMA (weight "
                     f"{smooth:g}; line) ± sd (band); faint: mean of the raw losses.", "training loss", notes))
    doc.add(Heading("Reconstructions"))
    panels = recon_figure(study, out / FIGURES["recon"], notes)
    doc.add(Figure(panels.path, panels.caption, alt="reconstructions") if panels is not None
            else Para("No reconstructions: no run has recon/*.h5 files or logged brain images."))
    doc.add(Heading("Per arm"), arms_table(summary),
            Figure(out / SEEDS_FIGURE, "Per-seed brain and knee val SSIM (selected checkpoint) per arm; seeds "
                   "joined by lines, bar = mean.", alt="seeds per arm"))
    doc.add(Heading("Model selection"), *selection_blocks(study))
    doc.add(Heading("All contrasts"), contrasts_table(summary))
    doc.add(Heading("Method"), method_bullets(summary))
    doc.add(Heading("Provenance"), *provenance_blocks(summary, study))
    if notes:
        doc.add(Heading("Notes"), Bullets(list(dict.fromkeys(notes)), css="warnings"))
    files = [*OUTPUT_FILES, *(f.path.name for f in doc.figures() if f.path.name not in OUTPUT_FILES), *PAGE_FILES]
    doc.add(Heading("Files"), Bullets([f"`{name}`" for name in dict.fromkeys(files)]))
    return doc


def build_study_page(study_dir: Path | str, out_dir: Path | str, note: Optional[str] = None, *, smooth: float = 0.9,
                     seed: int = BOOTSTRAP_SEED, n_resamples: int = N_RESAMPLES) -> Path:
    """Write the study outputs and the study report into ``out_dir``.

    Args:
        study_dir: the study folder (``study.yaml``).
        out_dir: output folder (created; this function's own files in it are replaced).
        note: "what this shows / does not show" text shown under the lead (``None``: none).
        smooth: EMA weight of the training-loss curves, in ``[0, 1)``.
        seed: seed of the bootstrap of the contrast intervals.
        n_resamples: bootstrap resamples.

    Returns:
        Path of ``report.md`` (``report.html`` beside it).

    Raises:
        CompareError: a bad or incomplete study folder, or ``smooth`` outside ``[0, 1)``.
    """
    if not 0.0 <= smooth < 1.0:
        raise CompareError(f"--smooth = {smooth}: must be in [0, 1)")
    out = Path(out_dir)
    study: Study = load_study(study_dir)  # refuses a bad folder before anything is written
    json_path = build_study_report(study_dir, out, n_resamples=n_resamples, seed=seed)
    for path in [*(out / n for n in (*FIGURES.values(), *PAGE_FILES)), *out.glob("study_volumes_*.png")]:
        path.unlink(missing_ok=True)  # no stale outputs of an earlier report in the same folder
    summary: Dict[str, Any] = json.loads(json_path.read_text(encoding="utf-8"))
    notes: List[str] = [n for r in study.ordered_runs() for n in r.run.notes]
    doc = build_document(summary, study, out, note, smooth, notes)
    md_path = out / "report.md"
    atomic_write_text(md_path, render_markdown(doc))
    atomic_write_text(out / "report.html", render_html(doc, out))
    return md_path

"""A W&B Report of one study (arms x seeds), built with wandb-workspaces (``wandb_workspaces.reports.v2``).

    varnet-ds wandb-report --entity E --project P --study NAME [--runs-dir runs] [--dry-run report.json]

(the same: ``python -m varnet_ds.analysis.wandb_report.report``; in a source checkout
``python analysis/wandb_report.py``). Reads ``RUNS/NAME/report/study.json`` (written by ``varnet-ds study-report``)
or, without it, the finished run folders ``RUNS/NAME/*/`` (through the study loader). The report: each primary
contrast in one short sentence (mean, 95 % interval, p-value; :func:`varnet_ds.analysis.study.contrast_text.headline`),
the study summary (arms, seeds, device, noise floor), a panel grid whose run set is the W&B group NAME grouped by
``run.arm`` (line plots of knee val SSIM, brain SSIM and brain PSNR against ``trainer/epoch`` and the training loss
against ``trainer/step``, mean and band over seeds; never W&B's ``_step``), a run comparer, a media browser of the brain
reconstruction panels, a table of the selected and final metrics per arm, and study.json's methods.

Online it saves the report and prints its URL; when W&B does not know the study's runs yet it prints the
``wandb sync`` command for the runs' offline folders and exits 1. ``--dry-run FILE`` writes the report's spec
JSON (the view W&B would store) without network or API key. Bad input (unknown study, no runs, a study name
W&B's run filter cannot express) exits 2 with one line naming it. Keys are the tracker's
(``varnet_ds.tracking``): ``{split}/{metric}``, ``{split}/images/{panel}``, ``trainer/epoch``, ``trainer/step``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import re
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence

from varnet_ds import run_folder
from varnet_ds.analysis.runs import CompareError
from varnet_ds.analysis.study.contrast_text import headline
from varnet_ds.analysis.study.load import StudyRun, finished_runs, read_summary
from varnet_ds.exits import entry_point
from varnet_ds.files import atomic_write_text

STEP_KEY, EPOCH_KEY = "trainer/step", "trainer/epoch"
EPOCH_PLOTS = (("Knee validation SSIM", "val_knee/ssim"), ("Brain (transfer) SSIM", "val_brain/ssim"),
               ("Brain (transfer) PSNR", "val_brain/psnr"))
STEP_PLOTS = (("Training loss (1 - SSIM)", "train/loss"),)
MEDIA_KEYS = tuple(f"val_brain/images/{p}" for p in ("zero_filled", "reconstruction", "target", "error"))
ARM_KEY = "config.run.arm"  # runs are grouped by the config key run.arm
TABLE_COLUMNS = tuple(f"summary:{k}" for k in (
    "selected/val_knee/ssim", "selected/val_brain/ssim", "val_knee/ssim", "val_brain/ssim", "val_knee/ssim_max",
    "val_brain/ssim_max", "val_brain/psnr"))
# = varnet_ds.tracking.wandb_run._GROUP_RE (tests check both agree): safe inside W&B's quoted run-filter values.
_GROUP_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+=:@-]{0,127}")


class ReportError(Exception):
    """A problem the user must fix; ``code`` is the exit status (2 bad input, 1 W&B not ready)."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class ReportInput:
    """What the report is built from: the study's name (= W&B group), ``study.json`` if present, and its finished
    runs as the study loader reads them (:func:`varnet_ds.analysis.study.load.finished_runs`)."""

    name: str
    folder: Path
    summary: Optional[Dict[str, Any]]
    runs: List[StudyRun]


def val_metrics(run: StudyRun, selected: bool = False) -> Dict[str, float]:
    """Overall ``{split}/{metric}`` (SSIM, PSNR) of the run's last evaluation, or of the evaluation its
    ``selected.json`` names (``selected``); empty when it names none."""
    step = run.selected.get("step") if selected else None
    out: Dict[str, float] = {}
    for split in ("val_knee", "val_brain"):
        rows = [r for r in run.run.val_rows(split) if not selected or r["step"] == step]
        for metric in ("ssim", "psnr"):
            values = [r[metric] for r in rows if isinstance(r.get(metric), (int, float)) and math.isfinite(r[metric])]
            if values and (step is not None or not selected):
                out[f"{split}/{metric}"] = float(values[-1])
    return out


def wandb_dirs(run: StudyRun) -> List[Path]:
    """The run's W&B folders (``wandb/run-*``, ``wandb/offline-run-*``)."""
    return sorted(run.run.folder.glob("wandb/*run-*")) if run.run.folder else []


def load_input(runs_dir: Path, name: str) -> ReportInput:
    """The study ``runs_dir/name``.

    Raises:
        ReportError: malformed name, no such folder, no runs, or an unreadable ``study.json`` / run folder.
    """
    if not _GROUP_RE.fullmatch(name):
        raise ReportError(f"study name {name!r} cannot be a W&B group (use letters, digits, _ . + = : @ -)")
    folder = runs_dir / name
    if not folder.is_dir():
        raise ReportError(f"unknown study {name!r}: no folder {folder}")
    summary = None
    study_json = folder / "report" / "study.json"
    if study_json.is_file():
        try:
            summary = read_summary(study_json)
        except CompareError as err:
            raise ReportError(str(err)) from None
        if not isinstance(summary.get("arms"), dict):
            raise ReportError(f"{study_json}: expected an object with 'arms'")
    try:
        runs = finished_runs(folder)
    except (CompareError, OSError, ValueError) as err:
        raise ReportError(str(err).splitlines()[0]) from None
    listed = [r for arm in (summary or {}).get("arms", {}).values() if isinstance(arm, dict)
              for r in arm.get("runs", [])]
    if not runs and not listed:
        raise ReportError(f"study {name!r} has no runs: no finished {folder}/*/ (with {run_folder.FINISHED}) and no "
                          "runs in study.json")
    return ReportInput(name, folder, summary, runs)


def _num(value: Any, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) and math.isfinite(value) else "n/a"


def _primary(study: ReportInput) -> List[Dict[str, Any]]:
    """study.json's primary contrasts: brain SSIM, primary checkpoint, all volumes, one per non-reference arm."""
    s = study.summary or {}
    checkpoint = s.get("primary", "selected")
    return [c for c in s.get("contrasts", []) if isinstance(c, dict) and c.get("split") == "val_brain"
            and c.get("metric") == "ssim" and c.get("checkpoint") == checkpoint and c.get("group") == "all"]


def headline_markdown(study: ReportInput) -> str:
    """The report's first block: each primary contrast in one short sentence (or where to get them)."""
    if not study.summary:
        return f"No `{study.folder}/report/study.json` yet: run `varnet-ds study-report {study.folder}` for the " \
               "study's contrasts."
    primary = _primary(study)
    if not primary:
        return (f"study.json has no primary contrast (brain SSIM, {study.summary.get('primary', 'selected')} "
                "checkpoint, all volumes).")
    return "\n\n".join(f"**{headline(c)}**" for c in primary)


def summary_markdown(study: ReportInput) -> str:
    """Below the headline: arms and seeds, the device, the noise floor and where the method is."""
    s = study.summary
    arms: Dict[str, List[Any]] = {}
    if s:
        arms = {a: list(v.get("seeds", [])) for a, v in s["arms"].items()}
    else:
        for run in study.runs:
            arms.setdefault(run.arm, []).append(run.seed)
    lines = [f"Study **{study.name}** (W&B group `{study.name}`): "
             + ", ".join(f"{a} ({len(seeds)} seed{'s' * (len(seeds) != 1)})" for a, seeds in sorted(arms.items()))
             + "."]
    if not s:
        return "\n\n".join(lines)
    if s.get("device"):
        lines.append(f"Device: {s['device']}.")
    for c in _primary(study):
        lines.append(f"{c.get('arm')} − {c.get('reference')}: paired by seed; the seed-to-seed sd of "
                     f"{c.get('reference')}'s mean brain SSIM (noise floor) is {_num(c.get('noise_floor_sd'))}; "
                     f"{c.get('arm')} was better on {c.get('wins', '?')} and worse on {c.get('losses', '?')} of "
                     f"{c.get('n_volumes', '?')} brain volumes (seed-averaged). Method: at the end of this report.")
    return "\n\n".join(lines)


def method_markdown(study: ReportInput) -> str:
    """study.json's methods, one paragraph each (the contrast's procedure in full)."""
    methods = (study.summary or {}).get("methods", {})
    if not methods:
        return "No study.json methods (run `varnet-ds study-report`)."
    return "\n\n".join(f"**{k}**: {v}" for k, v in methods.items())


def _mean_sd(values: Sequence[Any]) -> str:
    vals = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not vals:
        return "n/a"
    return _num(vals[0]) if len(vals) == 1 else f"{_num(statistics.mean(vals))} ± {_num(statistics.stdev(vals))}"


def metrics_table_markdown(study: ReportInput) -> str:
    """Selected and final knee/brain SSIM per arm (mean ± SD over seeds), from study.json or the run folders."""
    header = ("| arm | seeds | knee SSIM selected | knee SSIM final | brain SSIM selected | brain SSIM final |\n"
              "|---|---:|---:|---:|---:|---:|")
    rows = []
    if study.summary:
        for arm, a in sorted(study.summary["arms"].items()):
            cells = [_mean_sd((a.get(f"{anat}_ssim") or {}).get(ckpt, [])) for anat in ("knee", "brain")
                     for ckpt in ("selected", "final")]
            rows.append(f"| {arm} | {len(a.get('seeds', []))} | " + " | ".join(cells) + " |")
    else:
        for arm in sorted({r.arm for r in study.runs}):
            runs = [r for r in study.runs if r.arm == arm]
            cells = [_mean_sd([val_metrics(r, ckpt == "selected").get(f"{split}/ssim") for r in runs])
                     for split in ("val_knee", "val_brain") for ckpt in ("selected", "final")]
            rows.append(f"| {arm} | {len(runs)} | " + " | ".join(cells) + " |")
    return "\n".join([header, *rows])


def build_report(study: ReportInput, entity: str, project: str) -> Any:
    """The ``wandb_workspaces.reports.v2.Report`` of ``study`` (not saved)."""
    import wandb_workspaces.reports.v2 as wr
    from wandb_workspaces import expr

    runset = wr.Runset(entity=entity, project=project, name=study.name, groupby=[ARM_KEY],
                       filters=[expr.Metric("Group") == study.name], visible_columns=list(TABLE_COLUMNS))
    band = dict(groupby=ARM_KEY, groupby_aggfunc="mean", groupby_rangefunc="stddev")
    panels: List[Any] = [wr.LinePlot(title=title, x=EPOCH_KEY, y=[key], title_x="epoch", layout=wr.Layout(
        x=8 * (i % 3), y=0, w=8, h=6), **band) for i, (title, key) in enumerate(EPOCH_PLOTS)]
    panels += [wr.LinePlot(title=title, x=STEP_KEY, y=[key], title_x="optimizer step", smoothing_factor=0.6,
                           layout=wr.Layout(x=0, y=6, w=12, h=6), **band) for title, key in STEP_PLOTS]
    panels += [wr.RunComparer(diff_only="split", layout=wr.Layout(x=12, y=6, w=12, h=6)),
               wr.MediaBrowser(title="Brain reconstructions", media_keys=list(MEDIA_KEYS), num_columns=4,
                               layout=wr.Layout(x=0, y=12, w=24, h=8))]
    blocks = [wr.MarkdownBlock(text=headline_markdown(study)), wr.MarkdownBlock(text=summary_markdown(study)),
              wr.H2(text="Validation and training curves"), wr.PanelGrid(runsets=[runset], panels=panels),
              wr.H2(text="Selected and final metrics"), wr.MarkdownBlock(text=metrics_table_markdown(study))]
    if study.summary:
        blocks += [wr.H2(text="Method"), wr.MarkdownBlock(text=method_markdown(study))]
    return wr.Report(project=project, entity=entity, title=f"{study.name}: knee -> brain study"[:128],
                     description=f"Arms x seeds of the W&B group {study.name}", blocks=blocks)


@contextlib.contextmanager
def offline_lookup() -> Iterator[None]:
    """Answer wandb-workspaces' one project-id lookup locally and refuse every other W&B request."""
    from wandb_workspaces.reports.v2 import gql, interface

    def execute(api: Any, query: str, variables: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
        if query == gql.projectInternalId:
            return {"project": {"internalId": "dry-run"}}
        raise RuntimeError("dry run: no W&B request allowed")

    saved = interface.execute_graphql, interface._get_api
    interface.execute_graphql, interface._get_api = execute, lambda: None
    try:
        yield
    finally:
        interface.execute_graphql, interface._get_api = saved


def report_spec(report: Any) -> Dict[str, Any]:
    """The report's view JSON (what ``Report.save`` sends, with its metadata), built without network."""
    with offline_lookup():
        return report._to_model().model_dump(mode="json", by_alias=True, exclude_none=True)


def spec_to_report(spec: Mapping[str, Any]) -> Any:
    """The ``Report`` object of a spec written by :func:`report_spec`."""
    from wandb_workspaces.reports.v2 import interface, internal

    return interface.Report._from_model(internal.ReportViewspec.model_validate(dict(spec)))


def _sync_hint(study: ReportInput) -> str:
    dirs = [str(d) for r in study.runs for d in wandb_dirs(r)]
    return f"wandb sync {' '.join(dirs)}" if dirs else f"wandb sync {study.folder}/*/wandb/offline-run-*"


def save_online(report: Any, study: ReportInput, entity: str, project: str) -> str:
    """Check that W&B knows the study's runs, save the report, return its URL.

    Raises:
        ReportError: (code 1) not logged in, W&B unreachable, or the project / group's runs not found.
    """
    import wandb

    try:
        api = wandb.Api()
    except Exception as err:
        raise ReportError(f"cannot use the W&B API ({str(err).splitlines()[0]}); run `wandb login`", 1) from None
    try:
        found = len(api.runs(f"{entity}/{project}", filters={"group": study.name}, per_page=1))
    except Exception as err:
        if "not found" not in str(err).lower() and "could not find" not in str(err).lower():
            raise ReportError(f"cannot query W&B for {entity}/{project} ({str(err).splitlines()[0]})", 1) from None
        found = 0
    if not found:
        raise ReportError(f"W&B has no runs of group {study.name!r} in {entity}/{project}: upload them first "
                          f"with: {_sync_hint(study)}", 1)
    try:
        report.save()
        return str(report.url)
    except Exception as err:
        raise ReportError(f"saving the report failed ({str(err).splitlines()[0]})", 1) from None


@entry_point
def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entity", required=True, help="W&B entity (user or team)")
    parser.add_argument("--project", required=True, help="W&B project of the runs")
    parser.add_argument("--study", required=True, help="study name: runs/<study>/ and the W&B group")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"), help="folder holding the study folder")
    parser.add_argument("--dry-run", type=Path, default=None, metavar="FILE",
                        help="write the report spec JSON to FILE; no network, no API key")
    args = parser.parse_args(argv)
    try:
        study = load_input(args.runs_dir, args.study)
        report = build_report(study, args.entity, args.project)
        if args.dry_run is not None:
            spec = json.dumps(report_spec(report), indent=1, sort_keys=True) + "\n"
            args.dry_run.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(args.dry_run, spec)
            print(f"report spec: {args.dry_run}")
        else:
            print(f"report: {save_online(report, study, args.entity, args.project)}")
    except ReportError as err:
        print(f"wandb_report: {err}", file=sys.stderr)
        return err.code
    return 0


if __name__ == "__main__":
    sys.exit(main())

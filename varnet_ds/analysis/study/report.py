"""Report of a multi-seed study (e.g. knee-trained VarNet with and without MRAugment, transferred to brain).

Usage::

    varnet-ds study-report runs/<study> [--out DIR] [--readme README.md] [--figure-dir docs]

(the same: ``python -m varnet_ds.analysis.study.report``; in a source checkout ``python analysis/study.py``)

reads the study folder written by ``python -m varnet_ds.study`` (``study.yaml`` and one finished run folder
``<arm>-s<seed>`` per arm x seed) and writes into DIR (default ``runs/<study>/report``): ``study.json`` (per-seed
means per arm, seed-paired contrasts with hierarchical bootstrap intervals and Wilcoxon p-values, the methods, the
runs' provenance: :mod:`varnet_ds.analysis.provenance`),
``per_volume.csv`` (every per-volume row of every run), ``study_seeds.png`` and ``study.md``. ``--readme FILE``
rewrites the lines between ``<!-- study-results:start -->`` and ``<!-- study-results:end -->`` of FILE with a
summary taken from ``study.json``; ``--figure-dir DIR`` copies the figure there and links that copy. Reads files
only; never imports the training code.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from varnet_ds.analysis.provenance import provenance_block
from varnet_ds.analysis.runs import METRICS, CompareError
from varnet_ds.analysis.stats import BOOTSTRAP_SEED, N_RESAMPLES
from varnet_ds.analysis.study import stability as stability_mod
from varnet_ds.analysis.study.contrasts import contrast_method, contrast_records, seed_mean
from varnet_ds.analysis.study.load import CHECKPOINTS, STUDY_SPLITS, Study, load_study, read_summary, selected_epoch
from varnet_ds.analysis.study.markdown import (
    README_END,
    README_START,
    arm_key,
    plot_seeds,
    render_readme_block,
    render_study_md,
    replace_block,
)
from varnet_ds.exits import entry_point
from varnet_ds.files import atomic_path, atomic_write_csv, atomic_write_json, atomic_write_text, strict_json

PER_VOLUME_COLUMNS = ("arm", "seed", "checkpoint", "split", "fname", "acquisition", "acceleration", "ssim", "psnr",
                      "nmse")
OUTPUT_FILES = ("study.json", "per_volume.csv", "study_seeds.png", "study.md")
FIGURE = "study_seeds.png"


def methods(n_resamples: int, seed: int) -> Dict[str, str]:
    """The ``methods`` section of ``study.json``."""
    return {
        "per_seed_mean": "for each run <arm>-s<seed>, checkpoint and split: the mean of the metric over all rows "
                         "(volume x acceleration) of its per-volume table (= per_volume.csv rows of that arm, seed, "
                         "checkpoint and split); arms list these per seed; tables show mean and sd (ddof=1) over "
                         "seeds.",
        "checkpoints": "selected = weights of the evaluation with the best knee validation SSIM (selected.json of "
                       "each run, its 'epoch' is selected_epoch); final = weights after the last epoch. The primary "
                       "result is the selected checkpoint, group 'all'.",
        "contrast": contrast_method(n_resamples, seed),
        "groups": "'all' = every shared volume; 'acquisition=X' = rows of that acquisition only; 'acceleration=K' "
                  "= rows of that acceleration only (Δ at that acceleration); a breakdown is listed only when its "
                  "factor has more than one level in the reference arm's rows.",
    }


def arm_summary(study: Study, arm: str) -> Dict[str, Any]:
    """``study.json``'s entry of one arm: seeds, run folders, per-seed means per split/metric/checkpoint."""
    runs = [study.runs[(arm, s)] for s in study.seeds]
    out: Dict[str, Any] = {"seeds": list(study.seeds), "runs": [r.name for r in runs]}
    for split in STUDY_SPLITS:
        for metric in METRICS:
            out[arm_key(split, metric)] = {ckpt: [seed_mean(r.tables[(ckpt, split)], metric) for r in runs]
                                           for ckpt in CHECKPOINTS}
    out["selected_epoch"] = [selected_epoch(r) for r in runs]
    return out


def study_summary(study: Study, n_resamples: int = N_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> Dict[str, Any]:
    """The ``study.json`` mapping (floats may be NaN; see :func:`varnet_ds.files.strict_json`)."""
    contrasts: List[Dict[str, Any]] = []
    for ckpt in CHECKPOINTS:
        for split in STUDY_SPLITS:
            ref = study.tables(study.reference, ckpt, split)
            for arm in study.arm_order()[1:]:
                contrasts += contrast_records(arm, study.reference, split, ckpt, ref, study.tables(arm, ckpt, split),
                                              METRICS, n_resamples=n_resamples, seed=seed)
    return {"study": study.name, "primary": "selected", "reference": study.reference, "device": study.device,
            "generated": dt.datetime.now(dt.timezone.utc).date().isoformat(),
            "methods": methods(n_resamples, seed),
            "design": stability_mod.design(study.spec),
            "arms": {arm: arm_summary(study, arm) for arm in study.arm_order()}, "contrasts": contrasts,
            "provenance": provenance_block({r.name: r.run for r in study.ordered_runs()})}


def per_volume_rows(study: Study) -> List[List[Any]]:
    """Every row of every run's four per-volume tables, as :data:`PER_VOLUME_COLUMNS`."""
    rows = []
    for run in study.ordered_runs():
        for ckpt in CHECKPOINTS:
            for split in STUDY_SPLITS:
                rows += [[run.arm, run.seed, ckpt, split, v.fname, v.acquisition, v.acceleration, v.ssim, v.psnr,
                          v.nmse] for v in run.tables[(ckpt, split)]]
    return rows


def write_per_volume(path: Path, rows: Sequence[Sequence[Any]]) -> None:
    """``per_volume.csv`` (floats with full precision: ``repr`` round-trips), written atomically."""
    atomic_write_csv(path, PER_VOLUME_COLUMNS, rows)


def build_study_report(study_dir: Path | str, out_dir: Path | str | None = None, *, n_resamples: int = N_RESAMPLES,
                       seed: int = BOOTSTRAP_SEED) -> Path:
    """Load a study folder and write ``study.json``, ``per_volume.csv``, ``study_seeds.png`` and ``study.md``.

    Args:
        study_dir: the study folder (with ``study.yaml``).
        out_dir: output folder (default ``<study_dir>/report``; created).
        n_resamples: bootstrap resamples of each contrast interval.
        seed: seed of the bootstrap generator.

    Returns:
        Path of ``study.json``.

    Raises:
        CompareError: bad or incomplete study folder (see :func:`varnet_ds.analysis.study.load.load_study`).
    """
    study = load_study(study_dir)
    out = Path(out_dir) if out_dir is not None else Path(study_dir) / "report"
    out.mkdir(parents=True, exist_ok=True)
    summary = strict_json(study_summary(study, n_resamples, seed))  # what study.json holds: NaN -> null
    write_per_volume(out / "per_volume.csv", per_volume_rows(study))
    plot_seeds(summary, out / FIGURE)
    atomic_write_text(out / "study.md", render_study_md(summary))
    json_path = out / "study.json"
    atomic_write_json(json_path, summary)
    return json_path


def check_readme(readme: Path) -> str:
    """The README's text, after checking that it has the result markers.

    Raises:
        CompareError: the file is missing or lacks the markers (naming the file).
    """
    if not readme.is_file():
        raise CompareError(f"README file not found: {readme}")
    text = readme.read_text(encoding="utf-8")
    try:
        replace_block(text, "", str(readme))
    except ValueError as err:
        raise CompareError(str(err)) from None
    return text


def _rel(target: Path, start: Path) -> str:
    return Path(os.path.relpath(target.resolve(), start.resolve())).as_posix()


def update_readme(readme: Path | str, study_json: Path | str, figure_dir: Path | str | None = None,
                  rerun: Optional[Path | str] = None, rerun_command: Optional[str] = None) -> Path:
    """Rewrite the README's results block from ``study.json`` (only the lines between the markers change).

    Args:
        readme: the markdown file with the :data:`README_START` / :data:`README_END` lines.
        study_json: path of ``study.json`` (its folder holds ``study_seeds.png``).
        figure_dir: when given, ``study_seeds.png`` is copied there and the block links the copy.
        rerun: ``study.json`` of a rerun of the same study elsewhere: the block then says whether each contrast's
            sign and "excludes zero" held (:mod:`varnet_ds.analysis.study.stability`); ``rerun_command`` names
            the command that made it.

    Returns:
        Path of the figure the block links.

    Raises:
        CompareError: missing README, missing markers, unreadable ``study.json`` or a rerun of another study
            (nothing is written then).
    """
    readme, study_json = Path(readme), Path(study_json)
    text = check_readme(readme)
    summary = read_summary(study_json)
    stability: List[str] = []
    if rerun is not None:
        other = read_summary(rerun)
        stability_mod.check_same_study(summary, other, str(rerun), str(study_json))
        stability = stability_mod.stability_lines(summary, other, _rel(Path(rerun), readme.parent), rerun_command)
    figure = study_json.parent / FIGURE
    if figure_dir is not None:
        target_dir = Path(figure_dir)
        target_dir.mkdir(parents=True, exist_ok=True)
        target = target_dir / FIGURE
        with atomic_path(target) as tmp:
            tmp.write_bytes(figure.read_bytes())
        figure = target
    block = render_readme_block(summary, _rel(figure, readme.parent), _rel(study_json, readme.parent), stability)
    atomic_write_text(readme, replace_block(text, block, str(readme)))
    return figure


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Command-line arguments."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("study_dir", type=Path, help="study folder (with study.yaml)")
    parser.add_argument("--out", type=Path, help="output folder (default: STUDY_DIR/report)")
    parser.add_argument("--readme", type=Path, help=f"rewrite the block between {README_START} and {README_END}")
    parser.add_argument("--figure-dir", type=Path, help="copy study_seeds.png here and link it from the README")
    parser.add_argument("--rerun", type=Path, metavar="STUDY_JSON",
                        help="with --readme: study.json of a rerun of this study (other threads/machine); the block "
                             "says whether each contrast's sign and 'excludes zero' held")
    parser.add_argument("--rerun-command", metavar="TEXT", help="the command that made the rerun (named in the block)")
    return parser.parse_args(argv)


@entry_point
def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry; returns the exit status (2 on bad input, with a one-line reason on stderr)."""
    args = parse_args(argv)
    try:
        if args.figure_dir is not None and args.readme is None:
            raise CompareError("--figure-dir needs --readme FILE")
        if args.rerun is not None and args.readme is None:
            raise CompareError("--rerun needs --readme FILE")
        if args.readme is not None:
            check_readme(args.readme)  # refuse before writing anything
        if args.rerun is not None:
            read_summary(args.rerun)
        json_path = build_study_report(args.study_dir, args.out)
        print(f"study report: {json_path}\n              {json_path.with_name('study.md')}")
        if args.readme is not None:
            figure = update_readme(args.readme, json_path, args.figure_dir, args.rerun, args.rerun_command)
            print(f"README block: {args.readme} (figure {figure})")
    except CompareError as err:
        print(f"{os.path.basename(sys.argv[0])}: error: {err}", file=sys.stderr)  # argparse's prog
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

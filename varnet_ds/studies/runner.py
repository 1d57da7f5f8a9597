"""The study runner: plan every arm x seed as its own training run, skip finished runs, launch the rest, analyse.

Each run goes to ``RUNS/<study>/<arm>-s<seed>/`` (``varnet_ds.study_folder.run_dir``) with ``run.seed``,
``run.arm``, ``run.name = <arm>-s<seed>`` and W&B group = the study. Arm *a* with seed *s* is paired with the
reference arm's seed *s* (same initial weights). ``RUNS/<study>/study.yaml`` (``varnet_ds.study_folder``) records
the study; rerunning skips finished runs (``varnet_ds.run_folder``'s ``FINISHED`` marker) and resumes killed ones
(``train.py`` continues from its last checkpoint); a run folder holding another config is refused before any run
starts. When every run has finished, the study statistics (``varnet_ds.analysis.study.report``) write
``RUNS/<study>/report/``. The command line is ``varnet_ds/study.py`` (``python -m varnet_ds.study``).
"""

from __future__ import annotations

import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Sequence

from varnet_ds import run_folder
from varnet_ds.config import (
    EXTENDABLE_KEYS,
    RESUMABLE_KEYS,
    ConfigError,
    check_rerun_config,
    ds_config_path,
    load_config,
)
from varnet_ds.console import say
from varnet_ds.exits import EXIT_REQUEUE, EXIT_USAGE
from varnet_ds.studies.launch import Slot, launch_all
from varnet_ds.study_folder import STUDY_FILE, StudySpec, check_spec, override_key, read_spec, run_dir, write_spec

TRAIN_SCRIPT = Path(__file__).resolve().parent.parent / "train.py"  # launched by path: the DeepSpeed launcher's way


@dataclass
class RunSpec:
    """One training run of the study."""

    index: int
    arm: str
    seed: int
    out_dir: Path
    overrides: List[str]

    @property
    def name(self) -> str:
        return run_folder.run_name(self.arm, self.seed)


def plan_runs(spec: StudySpec, runs_dir: Path) -> List[RunSpec]:
    """Every arm x seed (arm-major, reference arm first), each config loaded and checked (unknown key -> error).

    Raises:
        StudyFolderError: a malformed study (:func:`varnet_ds.study_folder.check_spec`).
        ConfigError: a run's config is invalid or its folder holds another config (naming the run).
    """
    check_spec(spec)
    runs_dir = Path(runs_dir).resolve()  # run.out_dir is compared with the saved config: one spelling
    arms = [spec.reference] + [a for a in spec.arms if a != spec.reference]
    runs: List[RunSpec] = []
    for arm in arms:
        for seed in spec.seeds:
            name = run_folder.run_name(arm, seed)
            out = run_dir(runs_dir / spec.study, arm, seed)
            overrides = [*spec.overrides, *spec.arms[arm], f"run.seed={seed}", f"run.name={name}",
                         f"run.arm={arm}", f"run.out_dir={out}", f"log.wandb.group={spec.study}",
                         f"log.wandb.job_type={arm}"]
            try:
                cfg = load_config(spec.config, overrides)
                check_rerun_config(cfg, out / "config.yaml")
            except ConfigError as err:
                raise ConfigError(f"run {name}: {err}") from None
            runs.append(RunSpec(len(runs), arm, seed, out, overrides))
    return runs


def is_finished(run: RunSpec, spec: StudySpec) -> bool:
    """The run folder's ``FINISHED`` marker (``varnet_ds.run_folder``) is there, for the length asked for."""
    cfg = load_config(spec.config, run.overrides)
    return run_folder.is_finished(run.out_dir, cfg.train.epochs, cfg.train.max_steps)


def merge_saved(spec: StudySpec, study_dir: Path) -> StudySpec:
    """Combine a new invocation with the ``study.yaml`` of an earlier one in ``study_dir``: seeds and arms may be
    added; an existing arm's overrides, the base config and the common overrides may not change (refused, naming
    the field)."""
    if not (Path(study_dir) / STUDY_FILE).is_file():
        return spec
    old = read_spec(study_dir)
    path = Path(study_dir) / STUDY_FILE
    if not spec.arms and not spec.seeds:
        return old  # `--name X` alone: rerun the recorded study
    changed = [f for f in ("config", "reference") if getattr(old, f) != getattr(spec, f)]
    if not _same_ds_config(old.ds_config, spec.ds_config):
        missing = [p for p in (old.ds_config, spec.ds_config) if not ds_config_path(p).is_file()]
        changed.append(f"ds_config {old.ds_config!r} vs {spec.ds_config!r}"
                       + (f"; not found from {Path.cwd()}: {', '.join(missing)}" if missing else ""))
    if _fixed(old.overrides) != _fixed(spec.overrides):
        changed.append("--set overrides")
    changed += [f"arm {a}" for a in old.arms if a in spec.arms and old.arms[a] != spec.arms[a]]
    if changed:
        raise ConfigError(f"{path} records this study with other settings ({', '.join(changed)}); use another "
                          "--name, or the same settings (new seeds and new arms may be added)")
    arms = {**old.arms, **spec.arms}
    seeds = list(dict.fromkeys([*old.seeds, *spec.seeds]))
    return StudySpec(spec.study, spec.config, spec.ds_config, seeds, arms, spec.reference, spec.overrides,
                     spec.device)


def _same_ds_config(old: str, new: str) -> bool:
    """The same DeepSpeed JSON: the same spelling, or two spellings of one content (``zero2`` = the packaged file =
    a checkout's ``ds_configs/zero2.json``, which studies before the packaged name recorded)."""
    if old == new:
        return True
    a, b = ds_config_path(old), ds_config_path(new)
    return a.is_file() and b.is_file() and a.read_bytes() == b.read_bytes()


def _fixed(overrides: Sequence[str]) -> List[str]:
    """Overrides that define what is trained (a rerun may extend the length and change logging)."""
    return sorted(o for o in overrides if not override_key(o).startswith(RESUMABLE_KEYS + EXTENDABLE_KEYS))


def error(message: str) -> int:
    """Print ``varnet_ds.study: error: MESSAGE`` to stderr; returns the usage exit code (2)."""
    print(f"varnet_ds.study: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def run_args(spec: StudySpec, runs: Sequence[RunSpec], index: int) -> int:
    """Print the ``train.py`` arguments of run ``index`` (one SLURM array element per run)."""
    if not 0 <= index < len(runs):
        return error(f"--run-args {index}: the study has runs 0..{len(runs) - 1}")
    print(shlex.join(["--ds_config", spec.ds_config, *(["--config", spec.config] if spec.config else []),
                      *runs[index].overrides]))
    return 0


def analyze(study_dir: Path) -> int:
    """The study statistics of ``study_dir`` (``study.json``, ``per_volume.csv``, ``study.md``, figure in
    ``report/``), in this process; returns their exit status."""
    from varnet_ds.analysis.study.report import main as study_report

    return study_report([str(study_dir)])


def run_study(spec: StudySpec, runs: Sequence[RunSpec], slots: Sequence[Slot], runs_dir: Path, *,
              list_only: bool = False, analysis: bool = True, analysis_only: bool = False) -> int:
    """Record the study, train its pending runs side by side on ``slots``, then analyse it.

    Args:
        spec: the study (merged with its earlier ``study.yaml``).
        runs: its runs (:func:`plan_runs`).
        slots: where runs go side by side (``varnet_ds.studies.launch.machine_slots``).
        runs_dir: parent of the study folder.
        list_only: record ``study.yaml`` and print the runs and their state; train nothing.
        analysis: run the statistics when every run has finished.
        analysis_only: train nothing; analyse the finished study (2 when a run is unfinished).

    Returns:
        0; the first failed run's exit code (75 when every failure was a preemption); the analysis' exit code.
    """
    study_dir = Path(runs_dir) / spec.study
    try:
        pending = [r for r in runs if not is_finished(r, spec)]
    except run_folder.RunFolderError as err:
        return error(str(err))
    if analysis_only:
        if pending:
            return error(f"unfinished runs: {', '.join(r.name for r in pending)}")
        return analyze(study_dir)
    # --list records the study for SLURM array elements, which run train.py directly on their own nodes.
    spec.device = "" if list_only else slots[0].describe(len(slots))
    write_spec(study_dir, spec)
    if list_only:
        for r in runs:
            print(f"{r.index:3d}  {r.name:24s} {'pending' if r in pending else 'finished'}  {r.out_dir}")
        print(f"{len(runs)} runs; on SLURM: sbatch --array=0-{len(runs) - 1} launch/slurm.sbatch --study {spec.study}")
        return 0
    say(f"study {spec.study}: {len(runs)} runs ({len(spec.arms)} arms x {len(spec.seeds)} seeds), "
        f"{len(runs) - len(pending)} finished; {len(slots)} side by side on {spec.device}")
    t0 = time.time()
    failed = launch_all([(r.name, train_command(spec, r), r.out_dir) for r in pending], slots, say)
    say(f"training done in {(time.time() - t0) / 60:.1f} min")
    if failed:  # all preempted: "requeue me"; else the first failure's code (1 bad data, 2 bad config, ...)
        failed = {n: 128 - c if c < 0 else c for n, c in failed.items()}  # killed by signal -c
        codes = [c for c in failed.values() if c != EXIT_REQUEUE]
        say("failed: " + ", ".join(f"{n} (exit {c}, log {study_dir / n / 'train.log'})" for n, c in failed.items()))
        return codes[0] if codes else EXIT_REQUEUE
    return analyze(study_dir) if analysis else 0


def train_command(spec: StudySpec, run: RunSpec) -> List[str]:
    """``train.py`` and its arguments for one run (the launcher of its slot goes in front)."""
    config = ["--config", spec.config] if spec.config else []
    return [str(TRAIN_SCRIPT), "--ds_config", spec.ds_config, *config, *run.overrides]


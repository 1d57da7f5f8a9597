"""Study runner: every arm x seed as its own training run, packed onto the machine, then the statistics.

    python -m varnet_ds.study --name knee2brain --config varnet_ds/conf/baseline.yaml --seeds 1 2 3 \\
        --arm baseline aug.enabled=false --arm mraugment aug.enabled=true \\
        --set data.train_path=/data/knee/multicoil_train --set data.val_path=... --set data.transfer_path=...

Each run goes to ``RUNS/<study>/<arm>-s<seed>/`` with ``run.seed``, ``run.arm``, ``run.name = <arm>-s<seed>`` and
W&B group = the study. Arm *a* with seed *s* is paired with the reference arm's seed *s* (same initial weights).
``RUNS/<study>/study.yaml`` records the study; rerunning the command skips finished runs and resumes killed ones
(``train.py`` continues from its last checkpoint); a run folder holding another config is refused before any
run starts. When every run has finished, ``analysis/study.py`` writes ``RUNS/<study>/report/`` (``study.json``,
``per_volume.csv``, figure). Layout: with GPUs, ``--gpus-per-run K`` runs ``GPUs // K`` runs side by side (one
ZeRO-2 job of K ranks each); without, ``--parallel`` 1-rank runs side by side, the cores split between them
(measured fastest on a 2-core box: ``python -m varnet_ds.study_bench``). ``--run-args I`` prints the
``train.py`` arguments of run I (one SLURM array element per run, ``launch/slurm.sbatch``).
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import yaml

from varnet_ds import run_folder
from varnet_ds.config import EXTENDABLE_KEYS, RESUMABLE_KEYS, ConfigError, check_rerun_config, load_config
from varnet_ds.exits import EXIT_REQUEUE, EXIT_USAGE, entry_point
from varnet_ds.files import atomic_write_text
from varnet_ds.studies.launch import launch_all, machine_slots

ROOT = Path(__file__).resolve().parent.parent
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
OWNED_KEYS = ("run.seed", "run.name", "run.arm", "run.out_dir", "log.wandb.group", "log.wandb.job_type")


@dataclass
class StudySpec:
    """What ``study.yaml`` records: the study's name, base config, seeds, arms and common overrides."""

    study: str
    config: Optional[str]
    ds_config: str
    seeds: List[int]
    arms: Dict[str, List[str]]
    reference: str
    overrides: List[str] = field(default_factory=list)
    device: str = ""


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


def _key(override: str) -> str:
    return override.split("=", 1)[0].strip().lstrip("+~")


def check_spec(spec: StudySpec) -> None:
    """Refuse a malformed study before any run starts; every message names the value."""
    if not NAME_RE.fullmatch(spec.study):
        raise ConfigError(f"--name {spec.study!r}: use letters, digits, '_', '.', '-' (it names folders and the "
                          "W&B group)")
    if not spec.arms:
        raise ConfigError("no arms: give at least one --arm NAME [key=value ...]")
    if not spec.seeds:
        raise ConfigError("no seeds: give --seeds S [S ...]")
    dupes = sorted({s for s in spec.seeds if spec.seeds.count(s) > 1})
    if dupes:
        raise ConfigError(f"--seeds: duplicate seed(s) {dupes}")
    for arm, overrides in spec.arms.items():
        if not NAME_RE.fullmatch(arm):
            raise ConfigError(f"--arm {arm!r}: use letters, digits, '_', '.', '-'")
        for o in overrides:
            if "=" not in o:
                raise ConfigError(f"--arm {arm}: override {o!r} is not key=value")
            if _key(o) in OWNED_KEYS:
                raise ConfigError(f"--arm {arm}: {_key(o)} is set by the study runner (per run)")
    for o in spec.overrides:
        if "=" not in o:
            raise ConfigError(f"--set {o!r} is not key=value")
        if _key(o) in OWNED_KEYS:
            raise ConfigError(f"--set {_key(o)}: set by the study runner (per run)")
    if spec.reference not in spec.arms:
        raise ConfigError(f"--reference {spec.reference!r} is not an arm; arms: {list(spec.arms)}")


def plan_runs(spec: StudySpec, runs_dir: Path) -> List[RunSpec]:
    """Every arm x seed (arm-major, reference arm first), each config loaded and checked (unknown key -> error)."""
    check_spec(spec)
    runs_dir = Path(runs_dir).resolve()  # run.out_dir is compared with the saved config: one spelling
    arms = [spec.reference] + [a for a in spec.arms if a != spec.reference]
    runs: List[RunSpec] = []
    for arm in arms:
        for seed in spec.seeds:
            name = run_folder.run_name(arm, seed)
            out = runs_dir / spec.study / name
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


def merge_saved(spec: StudySpec, path: Path) -> StudySpec:
    """Combine a new invocation with ``study.yaml`` from an earlier one: seeds and arms may be added; an existing
    arm's overrides, the base config and the common overrides may not change (refused, naming the field)."""
    if not path.is_file():
        return spec
    try:
        old = StudySpec(**yaml.safe_load(path.read_text(encoding="utf-8")))
    except (TypeError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: not a study file ({err})") from None
    if not spec.arms and not spec.seeds:
        return old  # `--name X` alone: rerun the recorded study
    changed = [f for f in ("config", "ds_config", "reference") if getattr(old, f) != getattr(spec, f)]
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


def _fixed(overrides: Sequence[str]) -> List[str]:
    """Overrides that define what is trained (a rerun may extend the length and change logging)."""
    return sorted(o for o in overrides if not _key(o).startswith(RESUMABLE_KEYS + EXTENDABLE_KEYS))


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m varnet_ds.study", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--name", required=True, help="study name: folder RUNS/<name>/ and the W&B group")
    p.add_argument("--config", default=None, help="base YAML config of every run (e.g. varnet_ds/conf/baseline.yaml)")
    p.add_argument("--ds_config", default="ds_configs/zero2.json", help="DeepSpeed JSON of every run")
    p.add_argument("--seeds", nargs="+", type=int, default=[], help="run.seed values, e.g. 1 2 3")
    p.add_argument("--arm", nargs="+", action="append", default=[], metavar=("NAME", "KEY=VALUE"),
                   help="an arm: its name and its overrides (repeat for every arm)")
    p.add_argument("--reference", default=None, help="arm the others are compared with (default: the first arm)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override for every run (repeatable)")
    p.add_argument("--runs-dir", type=Path, default=Path("runs"), help="parent of the study folder")
    p.add_argument("--gpus-per-run", type=int, default=None, help="ranks per run on a GPU node (default: all GPUs)")
    p.add_argument("--parallel", type=int, default=None,
                   help="CPU only: 1-rank runs side by side (default: the number of cores)")
    p.add_argument("--run-args", type=int, default=None, metavar="I",
                   help="print the train.py arguments of run I (0-based) and exit: one SLURM array element per run")
    p.add_argument("--list", action="store_true",
                   help="record the study (study.yaml), print its runs and their state, train nothing")
    p.add_argument("--no-analysis", action="store_true", help="train only; skip analysis/study.py")
    p.add_argument("--analysis-only", action="store_true", help="run analysis/study.py on finished runs only")
    return p.parse_args(argv)


def spec_from_args(args: argparse.Namespace) -> StudySpec:
    arms: Dict[str, List[str]] = {}
    for entry in args.arm:
        name, overrides = entry[0], list(entry[1:])
        if name in arms:
            raise ConfigError(f"--arm {name!r} given twice")
        arms[name] = overrides
    reference = args.reference or (next(iter(arms)) if arms else "")
    return StudySpec(args.name, args.config, args.ds_config, list(args.seeds), arms, reference,
                     list(args.overrides))


def analyze(study_dir: Path) -> int:
    """``analysis/study.py STUDY_DIR``: ``study.json``, ``per_volume.csv`` and the figure in ``report/``."""
    cmd = [sys.executable, str(ROOT / "analysis" / "study.py"), str(study_dir)]
    return subprocess.run(cmd, cwd=ROOT).returncode


@entry_point
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    study_file = args.runs_dir / args.name / "study.yaml"
    try:
        spec = merge_saved(spec_from_args(args), study_file)
        if spec.reference == "" and not study_file.is_file():
            raise ConfigError(f"no arms: give at least one --arm NAME [key=value ...] (no {study_file} to rerun)")
        runs = plan_runs(spec, args.runs_dir)
        slots = machine_slots(args.gpus_per_run, args.parallel)
    except ConfigError as err:
        print(f"varnet_ds.study: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    if args.run_args is not None:
        if not 0 <= args.run_args < len(runs):
            print(f"varnet_ds.study: error: --run-args {args.run_args}: the study has runs 0..{len(runs) - 1}",
                  file=sys.stderr)
            return EXIT_USAGE
        print(shlex.join(["--ds_config", spec.ds_config, *(["--config", spec.config] if spec.config else []),
                          *runs[args.run_args].overrides]))
        return 0
    study_dir = args.runs_dir / spec.study
    try:
        pending = [r for r in runs if not is_finished(r, spec)]
    except run_folder.RunFolderError as err:
        print(f"varnet_ds.study: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    if args.analysis_only:
        if pending:
            print(f"varnet_ds.study: error: unfinished runs: {', '.join(r.name for r in pending)}", file=sys.stderr)
            return EXIT_USAGE
        return analyze(study_dir)
    # --list records the study for SLURM array elements, which run train.py directly on their own nodes.
    spec.device = "" if args.list else slots[0].describe(len(slots))
    study_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(study_file, yaml.safe_dump(asdict(spec), sort_keys=False))
    if args.list:
        for r in runs:
            print(f"{r.index:3d}  {r.name:24s} {'pending' if r in pending else 'finished'}  {r.out_dir}")
        print(f"{len(runs)} runs; on SLURM: sbatch --array=0-{len(runs) - 1} launch/slurm.sbatch --study {spec.study}")
        return 0
    say(f"study {spec.study}: {len(runs)} runs ({len(spec.arms)} arms x {len(spec.seeds)} seeds), "
        f"{len(runs) - len(pending)} finished; {len(slots)} side by side on {spec.device}")
    t0 = time.time()
    failed = launch_all([(r.name, _train_cmd(spec, r), r.out_dir) for r in pending], slots, say)
    say(f"training done in {(time.time() - t0) / 60:.1f} min")
    if failed:  # all preempted: "requeue me"; else the first failure's code (1 bad data, 2 bad config, ...)
        failed = {n: 128 - c if c < 0 else c for n, c in failed.items()}  # killed by signal -c
        codes = [c for c in failed.values() if c != EXIT_REQUEUE]
        code = codes[0] if codes else EXIT_REQUEUE
        say("failed: " + ", ".join(f"{n} (exit {c}, log {study_dir / n / 'train.log'})" for n, c in failed.items()))
        return code
    return 0 if args.no_analysis else analyze(study_dir)


def _train_cmd(spec: StudySpec, run: RunSpec) -> List[str]:
    config = ["--config", spec.config] if spec.config else []
    return [str(ROOT / "varnet_ds" / "train.py"), "--ds_config", spec.ds_config, *config, *run.overrides]


def say(msg: str) -> None:
    print(f"[study {time.strftime('%H:%M:%S')}] {msg}", flush=True)


if __name__ == "__main__":
    sys.exit(main())


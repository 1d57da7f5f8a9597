"""Study runner command: every arm x seed as its own training run, packed onto the machine, then the statistics.

    python -m varnet_ds.study --name knee2brain --config varnet_ds/conf/baseline.yaml --seeds 1 2 3 \\
        --arm baseline aug.enabled=false --arm mraugment aug.enabled=true \\
        --set data.train_path=/data/knee/multicoil_train --set data.val_path=... --set data.transfer_path=...

Each run goes to ``RUNS/<study>/<arm>-s<seed>/`` with ``run.seed``, ``run.arm``, ``run.name = <arm>-s<seed>`` and
W&B group = the study. Arm *a* with seed *s* is paired with the reference arm's seed *s* (same initial weights).
``RUNS/<study>/study.yaml`` records the study; rerunning the command skips finished runs and resumes killed ones
(``train.py`` continues from its last checkpoint); a run folder holding another config is refused before any
run starts. When every run has finished, the study statistics (``varnet-ds study-report``) write
``RUNS/<study>/report/`` (``study.json``, ``per_volume.csv``, figure). Layout: with GPUs, ``--gpus-per-run K``
runs ``GPUs // K`` runs side by side (one ZeRO-2 job of K ranks each); without, ``--parallel`` 1-rank runs side by
side, the cores split between them (measured fastest on a 2-core box: ``python -m varnet_ds.study_bench``).
``--run-args I`` prints the ``train.py`` arguments of run I (one SLURM array element per run,
``launch/slurm.sbatch``). The logic is ``varnet_ds.studies.runner``; this module is its command line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from varnet_ds.config import DEFAULT_DS_CONFIG, ConfigError
from varnet_ds.exits import entry_point
from varnet_ds.studies import runner
from varnet_ds.studies.launch import machine_slots
from varnet_ds.study_folder import STUDY_FILE, StudyFolderError, StudySpec


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m varnet_ds.study", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--name", required=True, help="study name: folder RUNS/<name>/ and the W&B group")
    p.add_argument("--config", default=None, help="base YAML config of every run (e.g. varnet_ds/conf/baseline.yaml)")
    p.add_argument("--ds_config", default=DEFAULT_DS_CONFIG,
                   help="DeepSpeed JSON of every run, or a packaged name (default zero2 = ds_configs/zero2.json)")
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
    p.add_argument("--no-analysis", action="store_true", help="train only; skip the study statistics")
    p.add_argument("--analysis-only", action="store_true", help="the study statistics of finished runs only")
    return p.parse_args(argv)


def spec_from_args(args: argparse.Namespace) -> StudySpec:
    """The study the command line describes (checked later by ``plan_runs``)."""
    arms: Dict[str, List[str]] = {}
    for entry in args.arm:
        name, overrides = entry[0], list(entry[1:])
        if name in arms:
            raise ConfigError(f"--arm {name!r} given twice")
        arms[name] = overrides
    reference = args.reference or (next(iter(arms)) if arms else "")
    return StudySpec(args.name, args.config, args.ds_config, list(args.seeds), arms, reference,
                     list(args.overrides))


@entry_point
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    study_dir = args.runs_dir / args.name
    try:
        spec = runner.merge_saved(spec_from_args(args), study_dir)
        if spec.reference == "" and not (study_dir / STUDY_FILE).is_file():
            raise ConfigError(f"no arms: give at least one --arm NAME [key=value ...] (no {study_dir / STUDY_FILE} "
                              "to rerun)")
        runs = runner.plan_runs(spec, args.runs_dir)
        slots = machine_slots(args.gpus_per_run, args.parallel)
    except (ConfigError, StudyFolderError) as err:
        return runner.error(str(err))
    if args.run_args is not None:
        return runner.run_args(spec, runs, args.run_args)
    return runner.run_study(spec, runs, slots, args.runs_dir, list_only=args.list, analysis=not args.no_analysis,
                            analysis_only=args.analysis_only)


if __name__ == "__main__":
    sys.exit(main())

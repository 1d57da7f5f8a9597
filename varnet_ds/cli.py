"""``varnet-ds``: one command for every entry point, as a thin dispatcher.

    varnet-ds train --ds_config ds_configs/zero2.json --config varnet_ds/conf/baseline.yaml data.train_path=...
    varnet-ds check /data/knee/multicoil_train --headers-only
    varnet-ds help study          # = varnet-ds study --help
    varnet-ds --version

``varnet-ds COMMAND ARGS...`` imports only COMMAND's module and calls its ``main(ARGS)``: the arguments are handed
over unchanged (``key=value`` config overrides included), each command parses its own, and ``varnet-ds --help``
imports neither torch nor any command. The modules stay runnable on their own (``python -m varnet_ds.study``,
``deepspeed --num_gpus 8 varnet_ds/train.py ...``, ``python analysis/compare.py``).

``report``, ``study-report``, ``wandb-report`` and ``provenance`` are ``varnet_ds.analysis`` (packaged, torch-free);
``analysis/*.py`` of a source checkout are thin scripts calling the same ``main``. A command whose optional
dependency is missing names what to install (:data:`MISSING_HINTS`). An unknown command or option prints the usage
and exits 2 (``varnet_ds.exits.EXIT_USAGE``).
"""

from __future__ import annotations

import difflib
import importlib
import sys
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import varnet_ds
from varnet_ds.exits import EXIT_USAGE, entry_point

PROG = "varnet-ds"


@dataclass(frozen=True)
class Command:
    """One subcommand: the module whose ``main(argv) -> int`` runs it, and its one-line help.

    Attributes:
        module: dotted module name holding ``main``.
        summary: one line for ``varnet-ds --help``.
    """

    module: str
    summary: str


COMMANDS: Dict[str, Command] = {
    "train": Command("varnet_ds.train", "train one run (ZeRO-2; key=value config overrides; resumes from latest)"),
    "study": Command("varnet_ds.study", "run a study: every arm x seed as its own run, then its statistics"),
    "demo": Command("varnet_ds.demo", "the knee->brain study on simulated data, end to end (make demo)"),
    "evaluate": Command("varnet_ds.evaluate", "trained weights -> fastMRI-format reconstructions + metrics.json"),
    "check": Command("varnet_ds.data.check", "validate folders of fastMRI multicoil HDF5 files before a run"),
    "synth": Command("varnet_ds.sim.synth", "simulate fastMRI-format knee/brain volumes (or a preview PNG)"),
    "augment-preview": Command("varnet_ds.sim.augment_preview", "PNG grid of MRAugment draws of one knee slice"),
    "anatomy": Command("varnet_ds.sim.anatomy", "fetch/check the brain anatomy file (pinned MNI152, sha256-verified)"),
    "bench": Command("varnet_ds.bench", "memory/speed benchmark: fastMRI reference vs the engine's policies"),
    "study-bench": Command("varnet_ds.study_bench", "throughput of the study runner's layout vs a plain loop"),
    "report": Command("varnet_ds.analysis.compare.report",
                      "comparison report (report.html/.md) of run folders or a study folder"),
    "study-report": Command("varnet_ds.analysis.study.report",
                            "a study's statistics: study.json, per_volume.csv, study.md, figure"),
    "wandb-report": Command("varnet_ds.analysis.wandb_report.report",
                            "W&B Report of a study (--dry-run FILE: its spec, offline)"),
    "provenance": Command("varnet_ds.analysis.provenance_cli",
                          "compare two studies or runs: same data? same environment?"),
}

# import name -> distribution of every [project] dependency (tests/test_cli.py holds this to pyproject.toml)
DEPENDENCIES: Dict[str, str] = {
    "torch": "torch", "deepspeed": "deepspeed", "numpy": "numpy", "scipy": "scipy", "h5py": "h5py",
    "omegaconf": "omegaconf", "yaml": "pyyaml", "tqdm": "tqdm", "psutil": "psutil", "matplotlib": "matplotlib",
    "nibabel": "nibabel", "wandb": "wandb", "pandas": "pandas", "requests": "requests", "runstats": "runstats",
    "skimage": "scikit-image",
}
# import name -> extra of pyproject.toml that provides it
EXTRAS: Dict[str, str] = {"fastmri": "fastmri", "wandb_workspaces": "report"}
MISSING_HINTS: Dict[str, str] = {
    "fastmri": "pip install --no-deps fastmri==0.3.0 (what `make install` does: fastmri's declared "
               f"pytorch-lightning and torchvision are not needed), or pip install 'varnet_ds[{EXTRAS['fastmri']}]' "
               "to take them too",
    "wandb_workspaces": f"pip install 'varnet_ds[{EXTRAS['wandb_workspaces']}]' (the W&B Report's extra)",
    **{name: f"it is a dependency of varnet_ds ({dist}): reinstall the package (make install, or pip install .)"
       for name, dist in DEPENDENCIES.items()},
}


def usage() -> str:
    """The top-level help text: synopsis and one line per command."""
    width = max(map(len, COMMANDS))
    lines = [f"usage: {PROG} [-h] [--version] COMMAND [ARGS ...]", "",
             "varnet_ds: memory-optimized DeepSpeed ZeRO-2 training of fastMRI's End-to-End VarNet.", "",
             "commands (`varnet-ds COMMAND --help` for each one's options):"]
    for name, cmd in COMMANDS.items():
        lines.append(f"  {name:<{width}}  {cmd.summary}")
    lines += ["  " + "help".ljust(width) + "  help COMMAND: the same as COMMAND --help", "",
              "options:", "  -h, --help  show this help and exit", "  --version   show the version and exit"]
    return "\n".join(lines)


def _usage_error(message: str) -> int:
    print(f"{usage()}\n\n{PROG}: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def run_command(name: str, args: List[str]) -> int:
    """Import command ``name``'s module and return ``main(args)``'s exit status.

    Args:
        name: a key of :data:`COMMANDS`.
        args: the command's own arguments, unchanged.

    Returns:
        the command's exit status (``None`` from ``main`` counts as 0); 2 when a package it needs is missing.
    """
    cmd = COMMANDS[name]
    argv0, sys.argv[0] = sys.argv[0], f"{PROG} {name}"  # argparse's default prog: "usage: varnet-ds train ..."
    try:
        module = importlib.import_module(cmd.module)
        status = module.main(args)
    except ModuleNotFoundError as err:
        top = (err.name or "").split(".")[0]
        if top not in MISSING_HINTS:
            raise
        print(f"{PROG} {name}: the Python package '{top}' is not installed: {MISSING_HINTS[top]}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        sys.argv[0] = argv0
    return 0 if status is None else int(status)


@entry_point
def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``varnet-ds``: dispatch ``argv[0]`` with the rest of ``argv``.

    Args:
        argv: the arguments after the program name (default ``sys.argv[1:]``).

    Returns:
        the exit status: the command's own, 0 for ``--help``/``--version``, 2 for an unknown command or option.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        return _usage_error("a command is required")
    head, rest = argv[0], argv[1:]
    if head in ("-h", "--help"):
        print(usage())
        return 0
    if head == "--version":
        print(f"{PROG} {varnet_ds.__version__}")
        return 0
    if head == "help":
        if not rest:
            print(usage())
            return 0
        if rest[0] not in COMMANDS:
            return _usage_error(f"help: unknown command {rest[0]!r}")
        return run_command(rest[0], ["--help"])
    if head.startswith("-"):
        return _usage_error(f"unknown option {head!r} (options go after the command: {PROG} COMMAND --help)")
    if head not in COMMANDS:
        close = difflib.get_close_matches(head, list(COMMANDS), n=1)
        return _usage_error(f"unknown command {head!r}" + (f"; did you mean {close[0]!r}?" if close else ""))
    return run_command(head, rest)


if __name__ == "__main__":
    sys.exit(main())

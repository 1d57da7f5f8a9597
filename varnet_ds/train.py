"""Training entry point.

    deepspeed --num_gpus 8 varnet_ds/train.py --ds_config ds_configs/zero2.json --config varnet_ds/conf/baseline.yaml \
        data.train_path=/data/knee/multicoil_train data.val_path=/data/knee/multicoil_val \
        data.transfer_path=/data/brain/multicoil_val

Also runs under ``torchrun --nproc_per_node N varnet_ds/train.py ...`` and as one plain ``python`` process.
Rerunning the same command resumes from ``run.out_dir/checkpoints/latest``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import List, Optional

from varnet_ds import run_folder
from varnet_ds.exits import EXIT_BAD_DATA, EXIT_REQUEUE, EXIT_USAGE, early_signal, entry_point, startup_signals


def _known_key(key: str) -> bool:
    """Whether dotted ``key`` names a key of the config schema (lists are set whole: ``a.b=[1,2]``)."""
    from omegaconf import OmegaConf

    from varnet_ds.config import Config

    node = OmegaConf.to_container(OmegaConf.structured(Config), resolve=False)
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """Parse the command line; ``args.overrides`` is the OmegaConf dotlist (``key=value`` strings).

    Overrides come as ``a.b=value`` or as ``--a.b=value`` (what ``wandb agent`` passes for a sweep's
    parameters, see ``launch/sweep.yaml``). Under a W&B sweep agent (``WANDB_SWEEP_ID`` and ``WANDB_RUN_ID``
    set) without an explicit ``run.out_dir``, each run gets its own folder ``runs/sweep-<sweep>/<run id>``
    (otherwise every sweep run would resume the previous one's checkpoint).

    Raises:
        SystemExit: exit code 2, naming the argument, for anything that is neither an option nor key=value.
    """
    from varnet_ds.config import DEFAULT_DS_CONFIG

    parser = argparse.ArgumentParser(
        description="Train fastMRI's E2E VarNet under DeepSpeed (knee -> brain transfer study).",
        epilog="Trailing key=value (or --key=value, as wandb agent passes them) pairs override the config "
               "(OmegaConf dotlist), e.g. train.epochs=10 --train.lr=0.0003",
        allow_abbrev=False,  # --conf=... must not silently mean --config
    )
    parser.add_argument("--ds_config", "--deepspeed_config", dest="ds_config", default=DEFAULT_DS_CONFIG,
                        help="DeepSpeed JSON (ZeRO stage, buckets), or a packaged name: zero0, zero1, zero2 (default; "
                             "= ds_configs/zero2.json), zero2_offload; batch size/accumulation come from our config")
    parser.add_argument("--config", default=None, help="YAML config (e.g. varnet_ds/conf/baseline.yaml or 'demo')")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None,
                        help="set by the deepspeed launcher; LOCAL_RANK in the environment wins")
    parser.add_argument("overrides", nargs="*", help="config overrides, key=value or --key=value")
    options = {o for action in parser._actions for o in action.option_strings}
    tokens = [t[2:] if t.startswith("--") and "=" in t and t.split("=", 1)[0] not in options else t
              for t in (sys.argv[1:] if argv is None else argv)]  # --a.b=value -> a.b=value, order kept
    args = parser.parse_intermixed_args(tokens)
    overrides = list(args.overrides)
    for override in overrides:
        if "=" not in override:
            parser.error(f"override {override!r} is not key=value")
        key = override.split("=", 1)[0]
        if not _known_key(key):
            parser.error(f"unknown config key {key!r} (in {override!r}); see varnet_ds/config.py for the keys")
    sweep, run_id = os.environ.get("WANDB_SWEEP_ID"), os.environ.get("WANDB_RUN_ID")
    if sweep and run_id and not any(o.split("=", 1)[0] == "run.out_dir" for o in overrides):
        overrides.append(f"run.out_dir=runs/sweep-{sweep}/{run_id}")
    args.overrides = overrides
    return args


@entry_point
def main(argv: Optional[List[str]] = None) -> int:
    """Train (or resume) one run. Returns the exit code (``varnet_ds/exits.py``); a SIGTERM/SIGUSR1 from the
    first line on ends in a state the same command resumes (exit 75)."""
    with startup_signals():  # before the heavy imports: a signal while they run is recorded, not fatal
        return _train(argv)


def _train(argv: Optional[List[str]]) -> int:
    args = parse_args(argv)
    from varnet_ds.config import ConfigError, ds_config_path, load_config

    args.ds_config = str(ds_config_path(args.ds_config))  # a packaged name -> its file (recorded as a path)

    if args.local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    try:
        cfg = load_config(args.config, args.overrides)
        from varnet_ds.config import check_rerun_config
        from varnet_ds.distributed import load_ds_config

        load_ds_config(args.ds_config, cfg.data.batch_size, cfg.train.grad_accum)  # fail before any process group
        check_rerun_config(cfg, os.path.join(cfg.run.out_dir, "config.yaml"))  # a run folder holding another run
    except ConfigError as err:
        print(f"varnet_ds: config error: {err}", file=sys.stderr)
        return EXIT_USAGE
    if "OMP_NUM_THREADS" in os.environ:
        import torch

        torch.set_num_threads(max(int(os.environ["OMP_NUM_THREADS"]), 1))

    from varnet_ds.data.fastmri_file import DataError
    from varnet_ds.distributed import init_distributed
    from varnet_ds.profiling.planner import PlannerError
    from varnet_ds.rendezvous import RendezvousError
    from varnet_ds.trainer.build import build_trainer
    from varnet_ds.trainer.checkpoint import CheckpointError

    try:  # before anything is read or written in the run folder
        dist = init_distributed()
    except RendezvousError as err:
        print(f"varnet_ds [rank {os.environ.get('RANK', '0')}]: {err}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    if _signalled_before_start(cfg.run.out_dir, dist):  # nothing read or written in the run folder yet
        return EXIT_REQUEUE
    if dist.is_main:  # one process per run folder: wait for a leftover one still saving (or for a stop signal)
        try:
            _HELD.append(run_folder.lock(cfg.run.out_dir, stop=lambda: early_signal() is not None))
        except run_folder.RunFolderError as err:
            print(f"varnet_ds: {err}", file=sys.stderr, flush=True)
            return EXIT_USAGE
    if _signalled_before_start(cfg.run.out_dir, dist):  # a stop signal while rank 0 waited for the lock
        return EXIT_REQUEUE
    try:
        return build_trainer(cfg, args.ds_config, dist).fit()
    except (DataError, FloatingPointError) as err:  # the data (or what it does to the loss) is bad
        print(f"varnet_ds [rank {dist.rank}]: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
        return EXIT_BAD_DATA
    except (CheckpointError, ConfigError, FileNotFoundError, ValueError, PlannerError) as err:
        print(f"varnet_ds [rank {dist.rank}]: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
        return EXIT_USAGE


_HELD: List[Optional[int]] = []  # the run-folder lock, held until the process exits


def _signalled_before_start(out_dir: str, dist) -> bool:
    """The ranks agree (an all-reduce) whether any of them got SIGTERM/SIGUSR1 before the process group existed.

    Nothing was trained or written yet, so they stop without a checkpoint; the requeue marker (SLURM) is written
    all the same and the rerun starts (or resumes) as if this start had not happened. A signal after this point
    is adopted by the trainer's ``Preemption``, which stops at its first agreement point with a checkpoint.
    """
    from varnet_ds.distributed import all_reduce_flags
    from varnet_ds.trainer.state import Preemption

    (agreed,) = all_reduce_flags([float(early_signal() or 0)], dist.device)
    if not agreed:
        return False
    if dist.is_main:
        Preemption.write_requeue_marker(Path(out_dir) / "checkpoints")
        print(f"[varnet_ds] signal {int(agreed)} before training started: nothing was trained or written; rerun the "
              f"same command (exit code {EXIT_REQUEUE} = requeue)", flush=True)
    return True


if __name__ == "__main__":
    sys.exit(main())

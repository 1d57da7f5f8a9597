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
from typing import List, Optional


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Train fastMRI's E2E VarNet under DeepSpeed (knee -> brain transfer study).",
        epilog="Trailing key=value pairs override the config (OmegaConf dotlist), e.g. train.epochs=10",
    )
    parser.add_argument("--ds_config", "--deepspeed_config", dest="ds_config", default="ds_configs/zero2.json",
                        help="DeepSpeed JSON (ZeRO stage, buckets); batch size/accumulation come from our config")
    parser.add_argument("--config", default=None, help="YAML config (e.g. varnet_ds/conf/baseline.yaml or 'demo')")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None,
                        help="set by the deepspeed launcher; LOCAL_RANK in the environment wins")
    parser.add_argument("overrides", nargs="*", help="config overrides, key=value")
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    from varnet_ds.config import ConfigError, load_config

    if args.local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    bad = [o for o in args.overrides if "=" not in o]
    try:
        if bad:
            raise ConfigError(f"override {bad[0]!r} is not key=value")
        cfg = load_config(args.config, args.overrides)
        from varnet_ds.distributed import load_ds_config

        load_ds_config(args.ds_config, cfg.data.batch_size, cfg.train.grad_accum)  # fail before any process group
    except ConfigError as err:
        print(f"varnet_ds: config error: {err}", file=sys.stderr)
        return 2
    if "OMP_NUM_THREADS" in os.environ:
        import torch

        torch.set_num_threads(max(int(os.environ["OMP_NUM_THREADS"]), 1))

    from varnet_ds.checkpoint import CheckpointError
    from varnet_ds.data.check import DataError
    from varnet_ds.distributed import init_distributed
    from varnet_ds.engine import Trainer
    from varnet_ds.planner import PlannerError

    dist = init_distributed()
    try:
        return Trainer(cfg, args.ds_config, dist).fit()
    except (DataError, CheckpointError, ConfigError, FileNotFoundError, FloatingPointError, ValueError,
            PlannerError) as err:
        kind = type(err).__name__
        print(f"varnet_ds [rank {dist.rank}]: {kind}: {err}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())

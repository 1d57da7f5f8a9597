"""Helpers that start real training processes for the engine and fault tests."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TINY = ["model.num_cascades=2", "model.chans=4", "model.pools=2", "model.sens_chans=2", "model.sens_pools=2",
        "model.checkpointing=cascades"]  # real-process tests keep exercising activation checkpointing


def env():
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="disabled", PYTHONUNBUFFERED="1")
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    return env


def common(synth_dirs, out_dir, *extra):
    return [
        "--ds_config", str(ROOT / "ds_configs" / "zero2.json"), "--config", "demo", *TINY,
        f"data.train_path={synth_dirs['train']}", f"data.val_path={synth_dirs['val']}",
        f"data.transfer_path={synth_dirs['brain']}", f"run.out_dir={out_dir}", "data.num_workers=0",
        "eval.every_epochs=100", "log.progress=false", "log.wandb.mode=disabled", "train.epochs=5", *extra,
    ]


def run_single(args, timeout=300):
    cmd = [sys.executable, str(ROOT / "varnet_ds" / "train.py"), *args]
    return subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=timeout)


def run_deepspeed(args, nproc=2, timeout=400):
    launcher = Path(sys.executable).parent / "deepspeed"
    cmd = [str(launcher), "--num_gpus", str(nproc), "--master_port", str(free_port()),
           str(ROOT / "varnet_ds" / "train.py"), *args]
    return subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=timeout)


def free_port():
    from varnet_ds.distributed import free_port

    return free_port()


def ok(proc):
    out, err = proc.stdout[-4000:], proc.stderr[-6000:]
    assert proc.returncode == 0, f"exit {proc.returncode}\nSTDOUT:\n{out}\nSTDERR:\n{err}"


def train_rows(run_dir):
    rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if line]
    return [r for r in rows if r["split"] == "train"]

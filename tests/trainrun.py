"""Helpers that start real training processes for the engine and fault tests."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TINY = ["model.num_cascades=2", "model.chans=4", "model.pools=2", "model.sens_chans=2", "model.sens_pools=2",
        "model.checkpointing=cascades"]  # real-process tests keep exercising activation checkpointing
NO_EVAL = ["data.val_path=null", "data.transfer_path=null"]  # for runs whose tests look at training only


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


POISONED_TRAIN = """
import sys, torch
from varnet_ds.config import load_config
from varnet_ds.distributed import init_distributed
from varnet_ds.trainer.build import build_trainer
cfg = load_config("demo", sys.argv[2:])
trainer = build_trainer(cfg, sys.argv[1], init_distributed())
calls = {"n": 0}
def poison(grad):  # the 2nd backward gets an infinite gradient, the loss stays finite
    calls["n"] += 1
    return torch.full_like(grad, float("inf")) if calls["n"] == 2 else grad
next(trainer.engine.module.parameters()).register_hook(poison)
sys.exit(trainer.fit())
"""


def run_poisoned(args, timeout=300):
    """One process like ``train.py`` (``args`` as :func:`common` builds them), with an infinite gradient in the 2nd
    backward: the ZeRO optimizer must skip that step."""
    cmd = [sys.executable, "-c", POISONED_TRAIN, args[1], *args[4:]]
    return subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=timeout)


def free_port():
    from varnet_ds.rendezvous import free_port

    return free_port()


def ok(proc):
    out, err = proc.stdout[-4000:], proc.stderr[-6000:]
    assert proc.returncode == 0, f"exit {proc.returncode}\nSTDOUT:\n{out}\nSTDERR:\n{err}"


def train_rows(run_dir):
    rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if line]
    return [r for r in rows if r["split"] == "train"]


# ------------------------------------------------------------------ 2-rank runs in their own process group


def start(args, log_path, launcher=True, **extra_env):
    """2 CPU ranks in their own process group (killed as a whole): under the deepspeed launcher, or (launcher=False)
    started as srun starts them (``tests/srun_ranks.sh``: the environment only, as ``launch/slurm.sbatch``)."""
    train = [str(ROOT / "varnet_ds" / "train.py"), *args]
    if launcher:
        cmd = [str(Path(sys.executable).parent / "deepspeed"), "--num_gpus", "2", "--master_port", str(free_port()),
               *train]
    else:
        cmd = ["bash", str(ROOT / "tests" / "srun_ranks.sh"), "2", str(free_port()), sys.executable, *train]
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**env(), **extra_env}, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    log.close()
    proc.log_path = log_path
    return proc


def kill_group(proc, sig=signal.SIGKILL):
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def tail(proc):
    return Path(proc.log_path).read_text()[-5000:]


def finish(proc, timeout):
    """Exit code of ``proc``; a run that does not end in ``timeout`` s (a hang) fails the test, group killed."""
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        proc.wait()
        pytest.fail(f"no exit within {timeout} s (hang?)\n{tail(proc)}")
    finally:
        kill_group(proc)  # leftovers of the launcher's group, if any


def rows_of(run_dir):
    """metrics.jsonl rows; a line being written (torn) is left out."""
    path = Path(run_dir) / "metrics.jsonl"
    rows = []
    for line in (path.read_text().splitlines() if path.exists() else []):
        try:
            rows.append(json.loads(line))
        except ValueError:
            break
    return rows


def wait_until(predicate, proc, timeout=240):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if predicate():
            return
        if proc.poll() is not None:
            pytest.fail(f"exited with {proc.returncode} before the awaited point\n{tail(proc)}")
        time.sleep(0.02)
    kill_group(proc)
    pytest.fail(f"awaited point not reached in {timeout} s\n{tail(proc)}")

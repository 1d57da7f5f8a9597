"""The real DeepSpeed ZeRO-2 path on CPU: 1 vs 2 ranks, save -> resume, consolidated weights.

These tests start real processes (``python varnet_ds/train.py`` and the ``deepspeed`` launcher with 2 CPU ranks),
so they are marked slow; ``make test`` runs them.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
TINY = ["model.num_cascades=2", "model.chans=4", "model.pools=2", "model.sens_chans=2", "model.sens_pools=2"]

pytestmark = pytest.mark.slow


def _env():
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
    return subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)


def run_deepspeed(args, nproc=2, timeout=400):
    launcher = Path(sys.executable).parent / "deepspeed"
    cmd = [str(launcher), "--num_gpus", str(nproc), "--master_port", str(_free_port()),
           str(ROOT / "varnet_ds" / "train.py"), *args]
    return subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)


def _free_port():
    from varnet_ds.distributed import free_port

    return free_port()


def _ok(proc):
    out, err = proc.stdout[-4000:], proc.stderr[-6000:]
    assert proc.returncode == 0, f"exit {proc.returncode}\nSTDOUT:\n{out}\nSTDERR:\n{err}"


def train_rows(run_dir):
    rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if line]
    return [r for r in rows if r["split"] == "train"]


@pytest.fixture(scope="module")
def one_rank(synth_dirs, tmp_path_factory):
    """1 process, 2 micro-batches per step (global batch 2), 4 steps."""
    out = tmp_path_factory.mktemp("one_rank")
    _ok(run_single(common(synth_dirs, out, "train.grad_accum=2", "train.max_steps=4")))
    return out


def test_two_rank_zero2_matches_one_rank(one_rank, synth_dirs, tmp_path):
    proc = run_deepspeed(common(synth_dirs, tmp_path, "train.grad_accum=1", "train.max_steps=4"))
    _ok(proc)
    a, b = train_rows(one_rank), train_rows(tmp_path)
    assert [r["step"] for r in a] == [1, 2, 3, 4] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        assert ra["loss"] == pytest.approx(rb["loss"], rel=1e-4, abs=1e-6), (ra, rb)
    assert a[0]["loss"] != a[-1]["loss"]
    wa = torch.load(one_rank / "model_fp32.pt", weights_only=False)["state_dict"]
    wb = torch.load(tmp_path / "model_fp32.pt", weights_only=False)["state_dict"]
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-5, rtol=1e-4), k
    # every rank saved its ZeRO shard
    tag = (tmp_path / "checkpoints" / "latest").read_text().strip()
    shards = sorted(p.name for p in (tmp_path / "checkpoints" / tag).glob("*optim_states.pt"))
    assert len(shards) == 2, shards


def test_resume_continues_exactly(one_rank, synth_dirs, tmp_path):
    _ok(run_single(common(synth_dirs, tmp_path, "train.grad_accum=2", "train.max_steps=2")))
    proc = run_single(common(synth_dirs, tmp_path, "train.grad_accum=2", "train.max_steps=4"))
    _ok(proc)
    assert "resumed from" in proc.stdout
    rows = train_rows(tmp_path)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]  # nothing duplicated or missing
    ref = train_rows(one_rank)
    for ra, rb in zip(ref, rows):
        assert ra["loss"] == pytest.approx(rb["loss"], rel=1e-6, abs=1e-9)
    wa = torch.load(one_rank / "model_fp32.pt", weights_only=False)["state_dict"]
    wb = torch.load(tmp_path / "model_fp32.pt", weights_only=False)["state_dict"]
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def test_run_folder_and_consolidated_weights(one_rank):
    from fastmri.models import VarNet

    from varnet_ds.config import load_config

    cfg = load_config(one_rank / "config.yaml")
    assert cfg.train.max_steps == 4
    payload = torch.load(one_rank / "model_fp32.pt", weights_only=False)
    model = VarNet(num_cascades=2, chans=4, pools=2, sens_chans=2, sens_pools=2)
    model.load_state_dict(payload["state_dict"], strict=True)
    assert all(v.dtype == torch.float32 for v in payload["state_dict"].values())
    rows = [json.loads(line) for line in (one_rank / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["split"] == "train"]
    for key in ("step", "epoch", "loss", "lr", "aug_p", "samples_per_s", "peak_mem_gib"):
        assert all(key in r for r in train), key
    splits = {r["split"] for r in rows}
    assert {"train", "val_knee", "val_brain"} <= splits
    val = [r for r in rows if r["split"] == "val_brain" and "acquisition" not in r and "acceleration" not in r]
    assert val and all(0 < r["ssim"] <= 1 and r["psnr"] > 0 and r["nmse"] > 0 for r in val)
    assert (one_rank / "checkpoints" / "latest").is_file()


def test_init_weights_from_consolidated(one_rank, synth_dirs, tmp_path):
    weights = one_rank / "model_fp32.pt"
    _ok(run_single(common(synth_dirs, tmp_path / "ok", "train.max_steps=1", f"train.init_weights={weights}")))
    first = train_rows(tmp_path / "ok")[0]["loss"]
    fresh = train_rows(one_rank)[0]["loss"]
    assert first != pytest.approx(fresh, rel=1e-6)  # started from trained weights, not from scratch
    proc = run_single(common(synth_dirs, tmp_path / "bad", "train.max_steps=1", "model.chans=6",
                             f"train.init_weights={weights}"))
    assert proc.returncode == 2
    assert "train.init_weights" in proc.stderr and "does not match" in proc.stderr

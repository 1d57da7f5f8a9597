"""Reliability: bad data at start-up, non-finite losses and gradients (under CPU offload), rank-count mismatch, atomic
checkpoints, config errors. Real processes and signals. Kill -9 of one rank, preemption and the bit-identical
continuation are in tests/test_epochs.py (2 ranks, across epochs) and tests/test_preempt_eval.py; a busy port and a
signal at start-up in tests/test_startup.py."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from trainrun import NO_EVAL, ROOT, common, env, ok, run_poisoned, run_single, train_rows

from varnet_ds.distributed import DistInfo
from varnet_ds.exits import EXIT_BAD_DATA
from varnet_ds.trainer import checkpoint as ckpt

pytestmark = pytest.mark.slow


def _copy_data(synth_dirs, tmp_path):
    dirs = {}
    for key in ("train", "val", "brain"):
        dirs[key] = tmp_path / f"data_{key}"
        shutil.copytree(synth_dirs[key], dirs[key])
    return dirs


def test_bad_file_fails_fast(synth_dirs, tmp_path):
    dirs = _copy_data(synth_dirs, tmp_path)
    (dirs["train"] / "file_broken.h5").write_bytes(b"this is not an HDF5 file")
    proc = run_single(common(dirs, tmp_path / "run", "train.max_steps=1"))
    assert proc.returncode == EXIT_BAD_DATA == 1
    assert "file_broken.h5" in proc.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()  # failed before training


def test_nonfinite_loss_skipped_then_stop_with_checkpoint(synth_dirs, tmp_path):
    dirs = _copy_data(synth_dirs, tmp_path)
    for f in dirs["train"].glob("*.h5"):
        with h5py.File(f, "r+") as hf:
            k = hf["kspace"][()]
            k[:] = np.nan
            hf["kspace"][...] = k
    proc = run_single(common(dirs, tmp_path / "run", "train.max_steps=4", "data.check_on_start=false",
                             "train.max_bad_steps=2"))
    assert proc.returncode == EXIT_BAD_DATA
    assert "non-finite losses/gradients in a row" in proc.stderr
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert sum(r.get("event") == "nonfinite_loss_skipped" for r in rows) == 2
    assert ckpt.find_latest(tmp_path / "run" / "checkpoints") is not None


def test_config_errors_before_any_process_group(tmp_path):
    cmd = [sys.executable, str(ROOT / "varnet_ds" / "train.py"), "--config", "demo", "train.epochz=3"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "train.epochz" in proc.stderr
    ds = tmp_path / "fp16.json"
    ds.write_text(json.dumps({"fp16": {"enabled": True}}))
    cmd = [sys.executable, str(ROOT / "varnet_ds" / "train.py"), "--ds_config", str(ds), "--config", "demo"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "fp16.enabled" in proc.stderr
    assert "init_distributed" not in proc.stderr and "Initializing TorchBackend" not in proc.stdout + proc.stderr


def test_world_size_mismatch_explains_the_way_out(tmp_path):
    root = tmp_path / "checkpoints"
    (root / "step000000010").mkdir(parents=True)
    (root / "step000000010" / ckpt.COMPLETE).write_text(json.dumps({"step": 10, "world_size": 8}))
    with pytest.raises(ckpt.CheckpointError) as err:
        ckpt.check_world_size(root, "step000000010", 2)
    msg = str(err.value)
    assert "8 ranks" in msg and "2" in msg and "train.init_weights" in msg and "zero_to_fp32" in msg


def test_incomplete_checkpoint_is_ignored(tmp_path):
    root = tmp_path / "checkpoints"
    for step, complete in ((5, True), (10, True), (15, False)):
        d = root / ckpt.tag_for(step)
        d.mkdir(parents=True)
        if complete:
            (d / ckpt.COMPLETE).write_text(json.dumps({"step": step, "world_size": 1}))
    (root / ckpt.LATEST).write_text(ckpt.tag_for(15))  # crash between shard write and COMPLETE
    assert ckpt.find_latest(root) == ckpt.tag_for(10)
    (root / ckpt.LATEST).unlink()
    assert ckpt.find_latest(root) == ckpt.tag_for(10)
    assert ckpt.complete_tags(root) == [ckpt.tag_for(5), ckpt.tag_for(10)]


class _FakeEngine:
    def save_checkpoint(self, root, tag, client_state, save_latest):
        assert save_latest is False
        d = Path(root) / tag
        d.mkdir(parents=True, exist_ok=True)
        torch.save(client_state, d / "mp_rank_00_model_states.pt")


def test_keep_last_k(tmp_path):
    dist = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    for step in range(1, 6):
        ckpt.save(_FakeEngine(), tmp_path, step, {"global_step": step}, dist, keep=2)
    assert ckpt.complete_tags(tmp_path) == [ckpt.tag_for(4), ckpt.tag_for(5)]
    assert (tmp_path / ckpt.LATEST).read_text() == ckpt.tag_for(5)
    assert os.path.exists(tmp_path / ckpt.tag_for(5) / "rng_rank0.pt")


@pytest.fixture(scope="module")
def offload_run(synth_dirs, tmp_path_factory):
    """One launch, three behaviours: ZeRO-2 with the optimizer offloaded to the CPU (ds_configs/zero2_offload.json),
    a broken file skipped (data.skip_bad_files), an infinite gradient in the 2nd step's backward."""
    tmp = tmp_path_factory.mktemp("offload")
    dirs = _copy_data(synth_dirs, tmp)
    (dirs["train"] / "file_broken.h5").write_bytes(b"this is not an HDF5 file")
    args = common(dirs, tmp / "run", "train.max_steps=3", "data.skip_bad_files=true", *NO_EVAL)
    args[1] = str(ROOT / "ds_configs" / "zero2_offload.json")
    ok(run_poisoned(args))
    rows = [json.loads(line) for line in (tmp / "run" / "metrics.jsonl").read_text().splitlines()]
    return {"dir": tmp / "run", "rows": rows, "broken": dirs["train"] / "file_broken.h5"}


def test_offload_config_trains(offload_run):
    (start,) = [r for r in offload_run["rows"] if r.get("event") == "start"]
    assert (start["zero_stage"], start["offload_optimizer"]) == (2, "cpu")
    assert Path(start["ds_config"]).name == "zero2_offload.json"
    assert [r["step"] for r in train_rows(offload_run["dir"])][-1] == 3


def test_bad_file_skipped_when_asked(offload_run):
    skipped = [r for r in offload_run["rows"] if r.get("event") == "skipped_bad_files"]
    assert skipped and skipped[0]["count"] == 1 and "file_broken.h5" in skipped[0]["files"][0]
    assert offload_run["broken"].exists()  # nothing deleted


def test_nonfinite_gradient_step_is_skipped_under_offload(offload_run):  # without: test_engine.py (ZeRO-1)
    skipped = [r for r in offload_run["rows"] if r.get("event") == "nonfinite_grad_skipped"]
    assert len(skipped) == 1
    assert [r["step"] for r in train_rows(offload_run["dir"])] == [1, 3]  # step 2 consumed, not applied or logged
    weights = torch.load(offload_run["dir"] / "model_fp32.pt", weights_only=False)["state_dict"]
    assert all(torch.isfinite(v).all() for v in weights.values())


def test_read_error_mid_run_names_file_and_slice(synth_dirs, tmp_path):
    from varnet_ds.data.datasets import build_eval_dataset
    from varnet_ds.data.fastmri_file import DataError

    data = tmp_path / "val"
    shutil.copytree(synth_dirs["val"], data)
    ds = build_eval_dataset(data, "equispaced", 0.08, 4)
    victim = Path(ds.raw_samples[1][0])
    victim.write_bytes(victim.read_bytes()[:4096])  # the file breaks after the index was built
    with pytest.raises(DataError) as err:
        ds[1]
    assert victim.name in str(err.value) and f"slice {ds.raw_samples[1][1]}" in str(err.value)


def test_memory_budget_on_cpu_refuses_clearly(synth_dirs, tmp_path):
    proc = run_single(common(synth_dirs, tmp_path, "train.max_steps=1", "train.memory_budget_gib=2"))
    assert proc.returncode == 2
    assert "memory planner profiles CUDA memory" in proc.stderr and "model.checkpointing" in proc.stderr


def test_resave_of_same_step_never_overwrites_in_place(tmp_path):
    dist = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    ckpt.save(_FakeEngine(), tmp_path, 7, {"version": 1}, dist, keep=3)
    first = (tmp_path / ckpt.tag_for(7) / "mp_rank_00_model_states.pt").stat().st_ino

    class Crashing(_FakeEngine):
        def save_checkpoint(self, root, tag, client_state, save_latest):
            super().save_checkpoint(root, tag, client_state, save_latest)
            raise KeyboardInterrupt  # killed mid-save

    with pytest.raises(KeyboardInterrupt):
        ckpt.save(Crashing(), tmp_path, 7, {"version": 2}, dist, keep=3)
    assert ckpt.find_latest(tmp_path) == ckpt.tag_for(7)
    assert (tmp_path / ckpt.tag_for(7) / "mp_rank_00_model_states.pt").stat().st_ino == first  # untouched
    ckpt.save(_FakeEngine(), tmp_path, 7, {"version": 3}, dist, keep=3)
    state = torch.load(tmp_path / ckpt.tag_for(7) / "mp_rank_00_model_states.pt", weights_only=False)
    assert state["version"] == 3 and ckpt.complete_tags(tmp_path) == [ckpt.tag_for(7)]

"""The real DeepSpeed path on CPU, one process: the run folder, consolidated weights, ZeRO-1, init weights, a rerun.

These tests start real processes (``python varnet_ds/train.py``), so they are marked slow; ``make test`` runs them.
2 ranks against 1 (same global batch): ``tests/test_elastic.py``; 2 ranks across epochs: ``tests/test_epochs.py``.
"""

import json
from pathlib import Path

import pytest
import torch
from trainrun import NO_EVAL, ROOT, TINY, common, ok, run_poisoned, run_single, train_rows

pytestmark = pytest.mark.slow


def test_run_folder_and_consolidated_weights(one_rank, synth_dirs):
    from fastmri.models import VarNet

    from varnet_ds.config import load_config
    from varnet_ds.provenance import LIBRARIES, folder_identity, git_state

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
    (start,) = [r for r in rows if r.get("event") == "start"]
    prov = start["provenance"]  # the run's provenance (varnet_ds/provenance.py)
    assert prov["data"] == {"train_path": folder_identity(synth_dirs["train"]),
                            "val_path": folder_identity(synth_dirs["val"]),
                            "transfer_path": folder_identity(synth_dirs["brain"])}
    assert prov["data"]["train_path"]["files"] == 3 and prov["data"]["transfer_path"]["files"] == 2
    assert (prov["world_size"], prov["threads_per_rank"], prov["gpu"]) == (1, 1, None)  # OMP_NUM_THREADS=1, CPU
    assert set(prov["libraries"]) == set(LIBRARIES) and all(prov["libraries"].values())
    assert prov["varnet_ds"] and prov["cpu"] and prov["python"]
    here = git_state(ROOT / "varnet_ds")
    assert (prov["git"] or {}).get("commit") == (here or {}).get("commit")  # None outside a checkout


def test_init_weights_under_zero1_and_a_nonfinite_gradient_skipped(one_rank, synth_dirs, tmp_path):
    """One launch: trained weights as the start, the other shipped DeepSpeed config (ZeRO-1), an infinite gradient in
    step 2 (skipped by the ZeRO optimizer; under CPU offload: tests/test_faults.py)."""
    weights = one_rank / "model_fp32.pt"
    args = common(synth_dirs, tmp_path, "train.max_steps=3", *NO_EVAL, f"train.init_weights={weights}")
    args[1] = str(ROOT / "ds_configs" / "zero1.json")
    ok(run_poisoned(args))
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    (start,) = [r for r in rows if r.get("event") == "start"]
    assert (start["zero_stage"], start["offload_optimizer"], Path(start["ds_config"]).name) == (1, "none", "zero1.json")
    assert [r["step"] for r in train_rows(tmp_path)] == [1, 3]  # step 2 consumed, not applied or logged
    assert len([r for r in rows if r.get("event") == "nonfinite_grad_skipped"]) == 1
    assert all(torch.isfinite(v).all() for v in torch.load(tmp_path / "model_fp32.pt", weights_only=False)[
        "state_dict"].values())
    fresh = train_rows(one_rank)[0]["loss"]
    assert train_rows(tmp_path)[0]["loss"] != pytest.approx(fresh, rel=1e-6)  # trained weights, not from scratch


def test_init_weights_of_other_sizes_refused_naming_key(one_rank):
    from varnet_ds.config import load_config
    from varnet_ds.model.varnet import build_model
    from varnet_ds.model.weights import load_init_weights

    cfg = load_config("demo", [*TINY, "model.chans=6"])
    with pytest.raises(ValueError, match="does not match") as err:
        load_init_weights(build_model(cfg.model), str(one_rank / "model_fp32.pt"))
    assert "train.init_weights = " in str(err.value) and "chans" in str(err.value)


def test_rerunning_a_finished_run_changes_nothing(one_rank, synth_dirs):
    before = (one_rank / "metrics.jsonl").read_bytes()
    weights = (one_rank / "model_fp32.pt").read_bytes()
    proc = run_single(common(synth_dirs, one_rank, "train.grad_accum=2", "train.max_steps=4"))
    ok(proc)
    assert "already complete" in proc.stdout
    assert (one_rank / "metrics.jsonl").read_bytes() == before
    assert (one_rank / "model_fp32.pt").read_bytes() == weights
    assert not list(one_rank.glob("metrics.stale-*"))

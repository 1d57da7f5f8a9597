"""Tests for varnet_ds.tracking: metrics.jsonl, images, tables, truncation and W&B (offline / disabled)."""

from __future__ import annotations

import csv
import json
import math
import warnings
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
import torch
import wandb
from wandb_files import flushed_records, history_rows, run_summary

from varnet_ds.config import load_config
from varnet_ds.tracking.metrics_file import read_rows as read_metrics
from varnet_ds.tracking.tracker import Tracker
from varnet_ds.tracking.wandb_run import resolve_wandb_mode, wandb_base_url, wandb_credentials


@pytest.fixture
def wandb_env(tmp_path, monkeypatch):
    """No credentials, no network, every W&B side file inside tmp_path."""
    for var in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_BASE_URL", "WANDB_DISABLED", "WANDB_MODE",
                "WANDB_RUN_ID", "WANDB_RESUME", "WANDB_PROJECT", "WANDB_ENTITY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb_home" / var.lower()))
    monkeypatch.setenv("WANDB_SILENT", "true")
    return tmp_path


def _cfg(mode=None, name="unit"):
    overrides = [f"run.name={name}", "log.wandb.tags=[unit,test]"]
    if mode is not None:
        overrides.append(f"log.wandb.mode={mode}")
    return load_config(None, overrides)


def _netrc(path: Path, host: str) -> None:
    path.write_text(f"machine {host}\n  login user\n  password {'k' * 40}\n")


def test_resolve_wandb_mode(wandb_env, monkeypatch):
    assert resolve_wandb_mode("disabled")[0] == "disabled"
    with pytest.raises(ValueError, match="log.wandb.mode"):
        resolve_wandb_mode("sometimes")
    assert not wandb_credentials()[0]
    mode, fallback = resolve_wandb_mode(None)
    assert mode == "offline" and fallback.startswith("no API key for ")
    assert resolve_wandb_mode("offline") == ("offline", None)
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    assert resolve_wandb_mode(None)[0] == "online"
    monkeypatch.setenv("WANDB_MODE", "dryrun")
    assert resolve_wandb_mode(None)[0] == "offline"
    assert resolve_wandb_mode("online")[0] == "online"  # the config value wins over the environment
    monkeypatch.setenv("WANDB_MODE", "bogus")
    with pytest.raises(ValueError, match="WANDB_MODE"):
        resolve_wandb_mode(None)
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("WANDB_DISABLED", "true")
    assert resolve_wandb_mode(None)[0] == "disabled"


def test_login_is_decided_by_wandb(wandb_env, monkeypatch):
    """`wandb login` writes its netrc entry for wandb's default server (not api.wandb.ai in wandb >= 0.31)."""
    from wandb.sdk.lib import urls

    default_host = urlsplit(urls.DEFAULT_BASE_URL).netloc
    assert wandb_base_url() == urls.DEFAULT_BASE_URL
    assert wandb_credentials() == (False, urls.DEFAULT_BASE_URL)
    _netrc(wandb_env / "netrc", default_host)
    assert wandb_credentials()[0] and resolve_wandb_mode(None)[0] == "online"
    _netrc(wandb_env / "netrc", "wandb.example.org")  # a key for another server only
    assert not wandb_credentials()[0]
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.org")  # self-hosted server
    assert wandb_credentials() == (True, "https://wandb.example.org") and resolve_wandb_mode(None)[0] == "online"
    (wandb_env / "netrc").unlink()
    monkeypatch.setenv("HOME", str(wandb_env / "home"))  # ~/.netrc is the file when NETRC is unset
    monkeypatch.delenv("NETRC")
    (wandb_env / "home").mkdir()
    assert resolve_wandb_mode(None)[0] == "offline"
    _netrc(wandb_env / "home" / ".netrc", "wandb.example.org")
    assert resolve_wandb_mode(None)[0] == "online"
    monkeypatch.setenv("WANDB_API_KEY", "short")  # malformed: wandb refuses it, so do we (with the reason)
    found, detail = wandb_credentials()
    assert not found and "API key" in detail


def test_offline_fallback_prints_one_line(wandb_env, capsys):
    tracker = Tracker(_cfg(None), wandb_env / "run", rank=0)  # no key anywhere: online falls back to offline
    lines = capsys.readouterr().out.splitlines()
    assert tracker.mode == "offline" and len(lines) == 1, lines
    assert "offline" in lines[0] and "no API key" in lines[0]
    (wandb_dir,) = (wandb_env / "run" / "wandb").glob("offline-run-*")
    assert lines[0].endswith(f"wandb sync {wandb_dir}")
    tracker.finish()
    capsys.readouterr()
    explicit = Tracker(_cfg("offline"), wandb_env / "run2", rank=0)  # asked for offline: nothing to say
    assert explicit.mode == "offline" and capsys.readouterr().out == ""
    explicit.finish()


def test_disabled_tracker_files(wandb_env):
    run_dir = wandb_env / "run"
    tracker = Tracker(_cfg("disabled"), run_dir, rank=0, resume_id="abc123")
    assert tracker.mode == "disabled" and tracker.wandb_id == "abc123"
    rows = [
        {"step": 1, "epoch": 0, "split": "train", "loss": np.float32(0.5), "lr": 3e-4, "grad_norm": torch.tensor(2.0)},
        {"step": 2, "epoch": 0, "split": "train", "loss": float("nan")},
        {"step": 2, "epoch": 0, "split": "val_brain", "acquisition": "AXT2", "acceleration": np.int64(4),
         "ssim": 0.9, "num_volumes": 3},
        {"step": 3, "epoch": 1, "split": "event", "event": "resume", "time": 123.0},
    ]
    for row in rows:
        tracker.log(row)
    with pytest.raises(ValueError, match="split"):
        tracker.log({"step": 3, "epoch": 1, "split": "test"})
    with pytest.raises(ValueError, match="'epoch'"):
        tracker.log({"step": 3, "split": "train"})

    panels = {"zero_filled": np.random.rand(24, 20), "reconstruction": torch.rand(1, 24, 20),
              "target": np.random.rand(24, 20) * 2, "error": np.random.randn(24, 20)}
    png = tracker.log_images(3, 1, "val_knee", panels)
    assert png == run_dir / "images" / "val_knee_epoch001.png"
    import matplotlib.image

    image = matplotlib.image.imread(png)
    assert image.ndim == 3 and image.shape[1] > 3 * image.shape[0]  # four panels side by side

    columns = ["fname", "acceleration", "ssim"]
    table = [["a.h5", 4, np.float64(0.91)], ["b.h5", 8, 0.83]]
    csv_path = tracker.log_table("transfer_volumes", columns, table)
    with open(csv_path, newline="") as f:
        assert list(csv.reader(f)) == [columns, ["a.h5", "4", "0.91"], ["b.h5", "8", "0.83"]]
    with pytest.raises(ValueError, match="row 0"):
        tracker.log_table("bad", columns, [["a.h5", 4]])
    assert tracker.finish() is None and tracker.finish() is None
    with pytest.raises(RuntimeError, match="finished"):
        tracker.log(rows[0])

    back = read_metrics(run_dir / "metrics.jsonl")
    assert len(back) == len(rows)
    assert back[0]["loss"] == 0.5 and back[0]["grad_norm"] == 2.0 and back[0]["lr"] == 3e-4
    assert back[1]["loss"] is None  # non-finite -> null
    assert back[2]["acceleration"] == 4 and back[2]["acquisition"] == "AXT2"
    assert back[3]["time"] == 123.0 and all(isinstance(r["time"], float) for r in back)
    assert not (run_dir / "wandb").exists()
    assert sorted(p.name for p in run_dir.iterdir()) == ["images", "metrics.jsonl", "transfer_volumes.csv"]


def test_other_ranks_write_nothing(wandb_env):
    tracker = Tracker(_cfg(None), wandb_env / "run", rank=1)
    tracker.log({"step": 1, "epoch": 0, "split": "train", "loss": 1.0})
    assert tracker.log_images(1, 0, "val_knee", {"target": np.ones((8, 8))}) is None
    assert tracker.log_table("t", ["a"], [[1]]) is None
    assert tracker.truncate_rows(0) == 0 and tracker.set_aside_rows() is None
    assert tracker.wandb_id is None and tracker.finish() is None
    assert not (wandb_env / "run").exists()


def test_truncate_rows_and_torn_line(wandb_env):
    run_dir = wandb_env / "run"
    tracker = Tracker(_cfg("disabled"), run_dir, rank=0)
    for step in range(1, 7):
        tracker.log({"step": step, "epoch": step // 3, "split": "train", "loss": 1.0 / step})
    tracker.flush()
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write('{"step": 7, "epoch": 2, "spl')  # killed mid-write
    with pytest.warns(RuntimeWarning, match="torn last line"):
        assert [r["step"] for r in read_metrics(run_dir / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]
    with pytest.warns(RuntimeWarning, match="torn last line"):
        assert tracker.truncate_rows(4) == 2
    tracker.log({"step": 5, "epoch": 1, "split": "train", "loss": 0.3})  # resumed run appends after truncation
    tracker.finish()
    assert [r["step"] for r in read_metrics(run_dir / "metrics.jsonl")] == [1, 2, 3, 4, 5]
    assert not [p for p in run_dir.iterdir() if "tmp" in p.name]
    (run_dir / "metrics.jsonl").write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(ValueError, match="metrics.jsonl:2"):
        read_metrics(run_dir / "metrics.jsonl")


def test_offline_wandb_run_and_resume(wandb_env, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    run_dir = wandb_env / "run"
    tracker = Tracker(_cfg(None, name="offline_unit"), run_dir, rank=0)
    assert tracker.mode == "offline" and tracker.wandb_id
    run_id = tracker.wandb_id
    tracker.log({"step": 10, "epoch": 0, "split": "train", "loss": 0.25})
    tracker.log({"step": 10, "epoch": 0, "split": "val_brain", "acquisition": "AXT2", "acceleration": 4,
                 "ssim": 0.875})
    tracker.log_images(10, 0, "val_brain", {"target": np.random.rand(16, 16), "error": np.random.rand(16, 16)})

    run = tracker._wb.run  # what reached wandb.init (the file's run record is written by W&B's service)
    identity = (run.id, run.name, run.group, tuple(run.tags), run.config["run"]["name"],
                run.config["log"]["wandb"]["project"])

    def broken(*args, **kwargs):
        raise RuntimeError("simulated W&B failure")

    real_log = tracker._wb.run.log
    tracker._wb.run.log = broken
    with pytest.warns(RuntimeWarning, match="simulated W&B failure"):
        tracker.log({"step": 11, "epoch": 0, "split": "train", "loss": 0.5})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once only
        tracker.log({"step": 12, "epoch": 0, "split": "train", "loss": 0.5})
    tracker._wb.run.log = real_log
    tracker.log({"step": 13, "epoch": 0, "split": "train", "loss": 0.75})
    with pytest.warns(RuntimeWarning, match="2 W&B calls failed"):
        command = tracker.finish()
    wandb.teardown()  # W&B's service process flushes the .wandb file before it exits
    assert [r["step"] for r in read_metrics(run_dir / "metrics.jsonl")] == [10, 10, 11, 12, 13]

    sync_dirs = list((run_dir / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(sync_dirs) == 1 and command == f"wandb sync {sync_dirs[0]}"
    records = flushed_records(sync_dirs[0] / f"run-{run_id}.wandb", ["history", "metric", "exit"])
    assert identity == (run_id, "offline_unit", "knee2brain", ("unit", "test", "seed-42"), "offline_unit",
                        "varnet_ds")
    history = history_rows(records)
    train = next(h for h in history if "train/loss" in h)
    assert train["train/loss"] == 0.25 and train["trainer/step"] == 10 and train["trainer/epoch"] == 0
    val = next(h for h in history if "val_brain/AXT2/x4/ssim" in h)
    assert val["val_brain/AXT2/x4/ssim"] == 0.875 and val["trainer/step"] == 10
    assert any("val_brain/images/error/path" in h for h in history)
    assert not any(h.get("train/loss") == 0.5 for h in history)  # the failed call
    assert any(h.get("train/loss") == 0.75 for h in history)
    metrics = {(m.metric.glob_name or m.metric.name): m.metric.step_metric
               for m in records if m.WhichOneof("record_type") == "metric"}
    assert metrics["train/*"] == "trainer/step" and metrics["val_brain/*"] == "trainer/epoch"

    # resume: explicit online mode without credentials falls back to offline and continues the same run id
    capsys.readouterr()
    resumed = Tracker(_cfg("online", name="offline_unit"), run_dir, rank=0, resume_id=run_id)
    assert resumed.mode == "offline" and resumed.wandb_id == run_id
    assert "no API key" in capsys.readouterr().out
    assert resumed.truncate_rows(2) == 3
    resumed.log({"step": 11, "epoch": 0, "split": "train", "loss": 0.125})
    resumed.finish()
    # W&B names offline run folders offline-run-<second>-<id>, adding "-1" when that name is taken
    resumed_dirs = list((run_dir / "wandb").glob(f"offline-run-*-{run_id}*"))
    assert len(resumed_dirs) == 2
    assert any(p.suffix == ".wandb" for d in resumed_dirs for p in d.iterdir())
    assert [r["step"] for r in read_metrics(run_dir / "metrics.jsonl")] == [10, 10, 11]


def test_wandb_init_failures_fall_back(wandb_env, monkeypatch):
    import wandb

    calls = []

    class FakeRun:
        id, dir = "fake01", str(wandb_env / "fake" / "files")
        summary: dict = {}

        def define_metric(self, *args, **kwargs):
            pass

        def log(self, payload):
            calls.append(payload)

        def finish(self, exit_code=None):
            pass

    def fake_init(mode, **kwargs):
        calls.append(mode)
        if mode == "online":
            raise ConnectionError("no network")
        return FakeRun()

    monkeypatch.setattr(wandb, "init", fake_init)
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    with pytest.warns(UserWarning, match="no network"):
        tracker = Tracker(_cfg(None), wandb_env / "run", rank=0)
    assert calls == ["online", "offline"] and tracker.mode == "offline" and tracker.wandb_id == "fake01"
    tracker.log({"step": 1, "epoch": 0, "split": "train", "loss": 1.0})
    assert calls[-1] == {"train/loss": 1.0, "trainer/step": 1, "trainer/epoch": 0}
    tracker.finish()

    def always_fails(mode, **kwargs):
        raise RuntimeError(f"init broken ({mode})")

    monkeypatch.setattr(wandb, "init", always_fails)
    monkeypatch.delenv("WANDB_API_KEY")
    with pytest.warns(UserWarning, match="metrics.jsonl only"), pytest.warns(UserWarning, match="init broken"):
        tracker = Tracker(_cfg(None), wandb_env / "run2", rank=0, resume_id="keepme")
    assert tracker.wandb_id == "keepme"
    tracker.log({"step": 1, "epoch": 0, "split": "train", "loss": math.pi})
    tracker.finish()
    assert read_metrics(wandb_env / "run2" / "metrics.jsonl")[0]["loss"] == math.pi


def test_study_run_identity_summaries_and_model_artifacts(wandb_env, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = load_config(None, ["run.name=mraugment-s3", "run.seed=3", "run.arm=mraugment", "log.wandb.group=study-1",
                             "log.wandb.job_type=null", "log.wandb.tags=[knee2brain]"])
    run_dir = wandb_env / "run"
    tracker = Tracker(cfg, run_dir, rank=0)
    run = tracker._wb.run  # what reached wandb.init
    assert (run.name, run.group, run.job_type, list(run.tags)) == (
        "mraugment-s3", "study-1", "mraugment", ["knee2brain", "seed-3", "mraugment"])
    for step, epoch, loss, ssim, nmse in ((10, 0, 0.5, 0.70, 0.05), (20, 1, 0.3, 0.80, 0.03), (30, 2, 0.4, 0.75, 0.04)):
        tracker.log({"step": step, "epoch": epoch, "split": "train", "loss": loss, "lr": 1e-3})
        tracker.log({"step": step, "epoch": epoch, "split": "val_knee", "ssim": ssim, "psnr": 30 + ssim, "nmse": nmse})
    weights = run_dir / "model_selected.pt"
    torch.save({"state_dict": {}}, weights)
    meta = {"config": {"run": {"arm": "mraugment"}}, "val_knee/ssim": 0.8, "val_brain/ssim": float("nan")}
    assert tracker.log_model(weights, aliases=["selected"], metadata=meta) == f"model-{tracker.wandb_id}"
    with pytest.raises(ValueError, match="'bad name'"):
        tracker.log_model(weights, name="bad name")
    with pytest.raises(FileNotFoundError, match="model_fp32.pt"):
        tracker.log_model(run_dir / "model_fp32.pt", aliases=["final"])
    tracker.log_summary({"selected/val_knee/ssim": np.float64(0.8)})
    tracker.finish()
    wandb.teardown()  # W&B's service process flushes the .wandb file before it exits

    records = flushed_records(next((run_dir / "wandb").glob("offline-run-*/*.wandb")), ["summary", "artifact", "exit"])
    summary = run_summary(records)
    assert summary["val_knee/ssim"] == 0.75 and summary["val_knee/ssim_max"] == 0.80  # last and best
    assert summary["val_knee/psnr_max"] == 30.80 and summary["val_knee/nmse_min"] == 0.03
    assert summary["val_knee/nmse"] == 0.04 and summary["train/loss"] == 0.4 and summary["train/loss_min"] == 0.3
    assert "train/lr_min" not in summary and "train/lr_max" not in summary
    assert summary["selected/val_knee/ssim"] == 0.8
    artifact = next(r.artifact for r in records if r.WhichOneof("record_type") == "artifact")
    assert artifact.type == "model" and artifact.name == f"model-{tracker.wandb_id}"
    assert "selected" in list(artifact.aliases)
    assert json.loads(artifact.metadata) == {"config": {"run": {"arm": "mraugment"}}, "val_knee/ssim": 0.8,
                                             "val_brain/ssim": None}
    assert [c.path for c in artifact.manifest.contents] == ["model_selected.pt"]
    staged = Path(artifact.manifest.contents[0].local_path)
    assert staged.is_file() and staged.read_bytes() == weights.read_bytes()  # staged for `wandb sync`


@pytest.mark.parametrize("group", ["it's", 'say "hi"', "a b", "back\\slash", "x" * 129, ""])
def test_bad_group_names_are_refused(wandb_env, group):
    cfg = load_config(None, ["log.wandb.mode=offline"])
    cfg.log.wandb.group = group
    with pytest.raises(ValueError, match="W&B group name") as err:
        Tracker(cfg, wandb_env / "run", rank=0)
    assert repr(group) in str(err.value) and "\n" not in str(err.value)
    assert not (wandb_env / "run").exists()

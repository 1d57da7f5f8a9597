"""Config schema and DeepSpeed JSON checks fail early, naming the key."""

import json
from pathlib import Path

import pytest

from varnet_ds.config import CONF_DIR, DS_CONF_DIR, ConfigError, ds_config_path, load_config, save_config
from varnet_ds.distributed import load_ds_config


@pytest.mark.parametrize("name", ["baseline", "mraugment", "demo"])
def test_shipped_configs_load(name):
    cfg = load_config(CONF_DIR / f"{name}.yaml")
    assert cfg.run.name and cfg.model.checkpointing in ("none", "cascades", "all")


def test_mraugment_differs_from_baseline_only_in_aug_and_names():
    a = load_config("baseline")
    b = load_config("mraugment")
    assert not a.aug.enabled and b.aug.enabled
    for section in ("data", "model", "train", "eval"):
        assert a[section] == b[section], section


@pytest.mark.parametrize(
    "override, key",
    [
        (["train.epochz=3"], "train.epochz"),
        (["train.epochs=abc"], "train.epochs"),
        (["model.checkpointing=some"], "model.checkpointing"),
        (["train.precision=fp16"], "train.precision"),
        (["aug.p_max=1.5"], "aug.p_max"),
        (["data.accelerations=[4]"], "data.center_fractions"),
        (["train.epochs=0"], "train.epochs"),
    ],
)
def test_bad_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config("baseline", override)


def test_unknown_key_in_yaml(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  lr: 0.001\n  warmup: 3\n")
    with pytest.raises(ConfigError, match="train.warmup"):
        load_config(path)


def test_missing_file():
    with pytest.raises(ConfigError, match="not found"):
        load_config("/nonexistent/conf.yaml")


def test_resolved_config_saved(tmp_path):
    cfg = load_config("demo", ["run.name=abc", "run.out_dir=" + str(tmp_path / "${run.name}")])
    assert cfg.run.out_dir == str(tmp_path / "abc")
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again == cfg


@pytest.mark.parametrize("stem", ["zero0", "zero1", "zero2", "zero2_offload"])
def test_shipped_ds_configs(stem):
    cfg = load_ds_config(CONF_DIR.parent.parent / "ds_configs" / f"{stem}.json", batch_size=2, grad_accum=3)
    assert cfg["train_micro_batch_size_per_gpu"] == 2 and cfg["gradient_accumulation_steps"] == 3
    assert not any(k.startswith("_") for k in cfg)
    assert cfg["zero_optimization"]["reduce_bucket_size"] <= 5e7  # small buckets for a 30M-param model


@pytest.mark.parametrize(
    "extra, match",
    [
        ({"bf16": {"enabled": True}}, "bf16.enabled"),
        ({"fp16": {"enabled": True}}, "fp16.enabled"),
        ({"train_batch_size": 16}, "train_batch_size"),
        ({"train_micro_batch_size_per_gpu": 4}, "data.batch_size"),
        ({"optimizer": {"type": "Adam"}}, "optimizer"),
        ({"zero_optimization": {"stage": 3}}, "stage = 3"),
    ],
)
def test_bad_ds_config(tmp_path, extra, match):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"zero_optimization": {"stage": 2}, **extra}))
    with pytest.raises(ConfigError, match=match):
        load_ds_config(path, 1, 1)


def test_ds_config_by_packaged_name(tmp_path, monkeypatch):
    """``--ds_config zero2`` is the packaged file from any directory; a path is a path; a bad name lists the names."""
    monkeypatch.chdir(tmp_path)  # not the checkout: ds_configs/ is not here
    assert ds_config_path("zero2") == DS_CONF_DIR / "zero2.json"
    assert load_ds_config("zero2", 2, 1) == load_ds_config(CONF_DIR.parent.parent / "ds_configs" / "zero2.json", 2, 1)
    (tmp_path / "zero2").mkdir()  # a file or folder of that name in the working directory wins, as with --config
    assert ds_config_path("zero2") == Path("zero2")
    assert ds_config_path("sub/zero1") == Path("sub/zero1")  # only a bare name means a packaged file
    with pytest.raises(ConfigError, match=r"--ds_config zero3: file not found .*zero0, zero1, zero2, zero2_offload"):
        load_ds_config("zero3", 1, 1)


def test_ds_config_not_json(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text("{stage: 2")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_ds_config(path, 1, 1)

"""Model selection by knee val SSIM (varnet_ds.eval.selection) and the rerun guard of run folders (config_changes)."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from varnet_ds.config import ConfigError, check_rerun_config, config_changes, load_config, save_config, to_dict
from varnet_ds.eval.metrics import summarize
from varnet_ds.eval.selection import ModelSelector
from varnet_ds.eval.validate import EvalOutput
from varnet_ds.run_folder import VolumeRow


def _outputs(knee_ssim: float, brain_ssim: float):
    def out(split, ssim):
        vols = [VolumeRow(f"{split}_{i}.h5", "AXT2", 4, 3, ssim + 0.01 * i, 30.0, 0.01) for i in range(2)]
        return EvalOutput(rows=summarize(vols), volumes=vols)

    return {"val_knee": out("knee", knee_ssim), "val_brain": out("brain", brain_ssim)}


def _module(value: float) -> torch.nn.Module:
    module = torch.nn.Linear(2, 1)
    torch.nn.init.constant_(module.weight, value)
    return module


CONFIG = {"model": {"num_cascades": 1}}


def test_selects_by_knee_never_by_brain(tmp_path):
    sel = ModelSelector(tmp_path, is_main=True)
    assert sel.update(10, 1, _outputs(0.50, 0.90), _module(1.0), CONFIG)
    assert not sel.update(20, 2, _outputs(0.49, 0.99), _module(2.0), CONFIG)  # brain better, knee worse
    assert sel.update(30, 3, _outputs(0.60, 0.10), _module(3.0), CONFIG)  # knee better, brain worse
    assert not sel.update(30, 3, _outputs(0.60, 0.10), _module(3.0), CONFIG)  # same evaluation again
    sel.prune()
    best = sel.finalize()
    assert (best["step"], best["epoch"], best["criterion"]) == (30, 3, "val_knee/ssim")
    assert best["value"] == pytest.approx(0.605) and best["metrics"]["val_brain"]["ssim"] == pytest.approx(0.105)
    weights = torch.load(tmp_path / "model_selected.pt", weights_only=False)
    assert float(weights["state_dict"]["weight"][0, 0]) == 3.0 and weights["global_step"] == 30
    rows = list(csv.DictReader(open(tmp_path / "val_brain_per_volume_selected.csv")))
    assert [float(r["ssim"]) for r in rows] == pytest.approx([0.10, 0.11])  # brain scored with the selected model
    assert json.loads((tmp_path / "selected.json").read_text())["step"] == 30
    assert sorted(p.name for p in (tmp_path / "selected").iterdir()) == ["step000000030.json", "step000000030.pt"]


def test_resume_drops_uncommitted_candidates(tmp_path):
    sel = ModelSelector(tmp_path, is_main=True)
    sel.update(10, 1, _outputs(0.5, 0.5), _module(1.0), CONFIG)
    committed = sel.state_dict()  # what a checkpoint at step 15 stores
    sel.prune()
    sel.update(20, 2, _outputs(0.7, 0.5), _module(2.0), CONFIG)  # better, then killed before the next checkpoint
    resumed = ModelSelector(tmp_path, is_main=True)
    resumed.restore(committed)
    assert sorted(p.name for p in (tmp_path / "selected").iterdir()) == ["step000000010.json", "step000000010.pt"]
    assert resumed.finalize()["step"] == 10
    fresh = ModelSelector(tmp_path, is_main=True)
    fresh.restore(None)  # a fresh start in the folder: no stale candidate survives
    assert list((tmp_path / "selected").iterdir()) == []


def test_other_ranks_write_nothing(tmp_path):
    sel = ModelSelector(tmp_path, is_main=False)
    assert sel.update(10, 1, _outputs(0.5, 0.5), _module(1.0), CONFIG)
    assert sel.finalize()["step"] == 10 and not any(tmp_path.iterdir())


def test_config_changes_allowed_and_refused(tmp_path):
    base = to_dict(load_config("demo"))
    assert config_changes(base, base) == {}
    allowed = to_dict(load_config("demo", ["train.epochs=20", "log.every_steps=7", "data.num_workers=3",
                                           "run.resume=force"]))
    assert config_changes(base, allowed) == {}
    refused = to_dict(load_config("demo", ["run.seed=7", "aug.enabled=true", "train.epochs=2"]))
    assert set(config_changes(base, refused)) == {"run.seed", "aug.enabled", "train.epochs"}  # shrinking refused
    capped = to_dict(load_config("demo", ["train.max_steps=10"]))
    assert set(config_changes(capped, base)) == set() and set(config_changes(base, capped)) == {"train.max_steps"}


def test_rerun_with_another_config_refused_unless_forced(tmp_path):
    save_config(load_config("demo"), tmp_path / "config.yaml")
    with pytest.raises(ConfigError, match=r"aug.enabled: False -> True; run.seed: 42 -> 7"):
        check_rerun_config(load_config("demo", ["run.seed=7", "aug.enabled=true"]), tmp_path / "config.yaml")
    forced = check_rerun_config(load_config("demo", ["run.seed=7", "run.resume=force"]), tmp_path / "config.yaml")
    assert forced == {"run.seed": (42, 7)}
    (tmp_path / "config.yaml").write_text("model: [1, 2\n")
    with pytest.raises(ConfigError, match="cannot read the saved config"):
        check_rerun_config(load_config("demo"), tmp_path / "config.yaml")


def test_non_finite_metrics_are_written_as_null(tmp_path):
    outputs = _outputs(0.5, 0.5)
    outputs["val_brain"].volumes[0] = outputs["val_brain"].volumes[0]._replace(psnr=float("inf"), ssim=float("nan"))
    outputs["val_brain"].rows[0]["nmse"] = float("nan")
    sel = ModelSelector(tmp_path, is_main=True)
    assert sel.update(10, 1, outputs, _module(1.0), CONFIG)  # a NaN transfer metric must not crash rank 0
    saved = json.loads((tmp_path / "selected" / "step000000010.json").read_text())
    assert saved["metrics"]["val_brain"]["nmse"] is None and saved["volumes"]["val_brain"][0][4:6] == [None, None]
    sel.finalize()
    assert json.loads((tmp_path / "selected.json").read_text())["metrics"]["val_brain"]["nmse"] is None

"""Whether a study's conclusion held in a rerun (varnet_ds.analysis.study.stability and ``--rerun`` of
``varnet-ds study-report``): sign and "excludes zero" per contrast, a rerun of another study refused."""

from __future__ import annotations

import copy
import json

import pytest

from varnet_ds.analysis.runs import CompareError
from varnet_ds.analysis.study import stability
from varnet_ds.analysis.study.markdown import README_END, README_START
from varnet_ds.analysis.study.report import main as study_main


def _identity(sha: str) -> dict:
    return {"path": f"/somewhere/{sha}", "files": 12, "bytes": 1000, "sha256": sha}


def _contrast(split: str, mean: float, low: float, high: float) -> dict:
    return {"arm": "mraugment", "reference": "baseline", "split": split, "metric": "ssim", "checkpoint": "selected",
            "group": "all", "mean": mean, "ci_low": low, "ci_high": high, "p_value": 0.01, "n_seeds": 5,
            "n_volumes": 12, "noise_floor_sd": 0.01, "wins": 2, "losses": 10}


def _summary(brain=(-0.01, -0.02, -0.005), knee=(0.002, -0.001, 0.004), device="box (1 thread(s) each)",
             seeds=(1, 2, 3, 4, 5), brain_sha="b1", overrides=("train.epochs=4",)) -> dict:
    spec = {"config": "demo", "overrides": [*overrides, "data.train_path=/here/knee_train", "log.every_steps=1"],
            "arms": {"baseline": ["aug.enabled=false"], "mraugment": ["aug.enabled=true"]}}
    return {"study": "demo", "reference": "baseline", "device": device, "generated": "2026-12-03",
            "design": stability.design(spec),
            "arms": {arm: {"seeds": list(seeds), **{f"{split}_ssim": {"selected": [0.6] * len(seeds),
                                                                         "final": [0.59] * len(seeds)}
                                                    for split in ("brain", "knee")}}
                     for arm in ("baseline", "mraugment")},
            "contrasts": [_contrast("val_brain", *brain), _contrast("val_knee", *knee)],
            "provenance": {"runs": ["baseline-s1"], "unrecorded": [], "environment": {"torch": "2.13.0"},
                           "environment_differs": {}, "ranks_threads": {},
                           "data": {"train": _identity("t1"), "transfer": _identity(brain_sha)},
                           "data_differs": {}}}


def test_sign_and_excludes_zero_per_contrast():
    here = _summary()
    rerun = _summary(brain=(-0.004, -0.009, 0.001), knee=(-0.001, -0.003, 0.002))
    recs = {r["split"]: r for r in stability.compare(here, rerun)}
    brain, knee = recs["val_brain"], recs["val_knee"]
    assert (brain["sign_held"], brain["excludes_zero_held"], brain["excludes_zero"]) == (True, False, [True, False])
    assert (knee["sign_held"], knee["excludes_zero_held"], knee["excludes_zero"]) == (False, True, [False, False])
    lines = stability.stability_lines(here, rerun, "runs/x/report/study.json", "make demo-2threads")
    assert "`make demo-2threads`" in lines[0] and "box (1 thread(s) each)" in lines[0]
    brain_line = next(line for line in lines if line.startswith("- brain SSIM"))
    assert "-0.0100 [-0.0200, -0.0050] here, -0.0040 [-0.0090, +0.0010] in the rerun" in brain_line
    assert "the sign held" in brain_line and '"excludes zero" did not hold' in brain_line
    knee_line = next(line for line in lines if line.startswith("- knee val SSIM"))
    assert "the sign did not hold" in knee_line and '"excludes zero" held' in knee_line


@pytest.mark.parametrize("change, named", [
    (dict(seeds=(1, 2, 3)), "arms and seeds"),
    (dict(brain_sha="other"), "data.transfer"),
    (dict(overrides=("train.epochs=8",)), "design.overrides"),
])
def test_a_rerun_of_another_study_is_refused(change, named):
    with pytest.raises(CompareError, match=named):
        stability.check_same_study(_summary(), _summary(**change), "runs/other/report/study.json")


def test_machine_keys_may_differ_in_a_rerun():
    """Another machine (device), other data paths with the same content and other logging are the point."""
    other = _summary(device="elsewhere")
    other["design"] = stability.design({"config": "demo", "overrides": [
        "train.epochs=4", "data.train_path=/there/knee_train", "log.every_steps=50"],
        "arms": {"baseline": ["aug.enabled=false"], "mraugment": ["aug.enabled=true"]}})
    assert other["design"] == _summary()["design"]
    stability.check_same_study(_summary(), other, "ok")
    old = _summary()
    del old["design"]
    with pytest.raises(CompareError, match="old.json: no 'design'"):
        stability.check_same_study(_summary(), old, "old.json")


def test_readme_block_names_the_rerun(tmp_path, monkeypatch):
    """``study-report --readme --rerun``: the block gains the rerun lines; a bad rerun writes nothing."""
    import varnet_ds.analysis.study.report as report

    here, rerun = _summary(), _summary(brain=(-0.003, -0.008, 0.002), device="box (2 thread(s) each)")
    study_json = tmp_path / "study.json"
    study_json.write_text(json.dumps(here))
    (tmp_path / "study_seeds.png").write_bytes(b"png")
    rerun_json = tmp_path / "rerun.json"
    rerun_json.write_text(json.dumps(rerun))
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{README_START}\nold\n{README_END}\nend\n")
    monkeypatch.setattr(report, "build_study_report", lambda study_dir, out: study_json)

    assert study_main([str(tmp_path), "--readme", str(readme), "--rerun", str(rerun_json), "--rerun-command",
                       "make demo-2threads"]) == 0
    text = readme.read_text()
    assert "**-0.0100** (95 % interval [-0.0200, -0.0050]" in text  # the real block, then the rerun's lines
    assert text.index("Rerun of the same study") < text.index("![study: one point per seed and arm]")
    assert "Rerun of the same study on box (2 thread(s) each) (`make demo-2threads`)" in text
    assert "the sign held" in text and '"excludes zero" did not hold' in text
    assert text.startswith("intro\n") and text.endswith(f"{README_END}\nend\n")

    bad = copy.deepcopy(rerun)
    bad["arms"]["mraugment"]["seeds"] = [1, 2]
    rerun_json.write_text(json.dumps(bad))
    before = readme.read_text()
    assert study_main([str(tmp_path), "--readme", str(readme), "--rerun", str(rerun_json)]) == 2
    assert readme.read_text() == before
    assert study_main([str(tmp_path), "--readme", str(readme), "--rerun", str(tmp_path / "missing.json")]) == 2
    assert readme.read_text() == before

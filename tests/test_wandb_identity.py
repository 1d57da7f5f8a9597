"""W&B run identity (``varnet_ds.tracking.wandb_run.run_identity``): a study run's tags come from its own arm and
seed, never from the arm baked into the base YAML (issue 22 part 6: a study on ``baseline.yaml`` with the arm
``mraugment aug.enabled=true`` was tagged ``[knee2brain, baseline, seed-1, mraugment]``).

In-process: the configs are built exactly as the study runner builds them (``varnet_ds.studies.runner.plan_runs``).
"""

from __future__ import annotations

import pytest
import yaml

from varnet_ds.config import CONF_DIR, ConfigError, load_config
from varnet_ds.studies.runner import plan_runs
from varnet_ds.study_folder import StudySpec
from varnet_ds.tracking.wandb_run import run_identity

CONFS = sorted(CONF_DIR.glob("*.yaml"))


def _study(tmp_path, base: str, arms):
    spec = StudySpec(study="knee2brain-test", config=str(CONF_DIR / f"{base}.yaml"), ds_config="ds_configs/zero2.json",
                     seeds=[1, 2], arms=arms, reference=next(iter(arms)))
    return [(run, run_identity(load_config(spec.config, run.overrides))) for run in plan_runs(spec, tmp_path)]


@pytest.mark.parametrize("base", ["baseline", "mraugment"])
def test_study_run_tags_are_its_arm_and_seed(tmp_path, base):
    arms = {"baseline": ["aug.enabled=false"], "mraugment": ["aug.enabled=true"]}
    runs = _study(tmp_path, base, arms)
    assert len(runs) == 4
    for run, identity in runs:
        assert identity["tags"] == ["knee2brain", f"seed-{run.seed}", run.arm], (base, run.name)
        assert identity["job_type"] == run.arm and identity["name"] == run.name
        assert identity["group"] == "knee2brain-test"


def test_baseline_yaml_with_the_mraugment_arm_is_tagged_mraugment_only():
    cfg = load_config("baseline", ["aug.enabled=true", "run.arm=mraugment", "run.seed=1"])
    identity = run_identity(cfg)
    assert identity["tags"] == ["knee2brain", "seed-1", "mraugment"]
    assert identity["job_type"] == "mraugment"  # run.arm wins over the YAML's job_type (baseline)


@pytest.mark.parametrize("conf, arm", [("baseline", "baseline"), ("mraugment", "mraugment"), ("demo", "baseline")])
def test_plain_run_takes_the_arm_of_its_yaml(conf, arm):
    identity = run_identity(load_config(conf))
    assert identity["job_type"] == arm and identity["tags"][-2:] == [f"seed-{load_config(conf).run.seed}", arm]
    without = run_identity(load_config(conf, ["log.wandb.job_type=null"]))
    assert without["job_type"] is None and without["tags"] == identity["tags"][:-1]  # no arm: no arm tag


def test_no_bundled_yaml_carries_an_arm_or_seed_tag():
    arms = {yaml.safe_load(p.read_text())["log"]["wandb"].get("job_type") for p in CONFS} - {None}
    assert {"baseline", "mraugment"} <= arms
    for path in CONFS:
        tags = set(yaml.safe_load(path.read_text())["log"]["wandb"].get("tags", []))
        assert not tags & arms, f"{path.name}: log.wandb.tags {sorted(tags)} names an arm ({sorted(arms)})"
        assert not any(t.startswith("seed-") for t in tags), path.name


@pytest.mark.parametrize("tags, shown", [("[knee2brain,seed-3]", "'seed-3'"), ("[knee2brain,'']", "''"),
                                         ("[seed--1]", "'seed--1'")])
def test_seed_or_empty_yaml_tags_refused_at_load(tmp_path, tags, shown):
    with pytest.raises(ConfigError, match=f"config key 'log.wandb.tags' holds {shown}: .*seed-<run.seed>"):
        load_config("baseline", [f"log.wandb.tags={tags}"])
    spec = StudySpec(study="s", config="baseline", ds_config="ds_configs/zero2.json", seeds=[1],
                     arms={"a": []}, reference="a", overrides=[f"log.wandb.tags={tags}"])
    with pytest.raises(ConfigError, match=f"run a-s1: .*log.wandb.tags' holds {shown}"):
        plan_runs(spec, tmp_path)  # a study is refused before any run starts
    assert not any(tmp_path.iterdir())
    assert run_identity(load_config("baseline", ["log.wandb.tags=[seed-noise]"]))["tags"][0] == "seed-noise"

"""The training command line as the deepspeed launcher and ``wandb agent`` (launch/sweep.yaml) build it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from varnet_ds import train
from varnet_ds.config import load_config

ROOT = Path(__file__).resolve().parents[1]
SWEEP = ROOT / "launch" / "sweep.yaml"


def _agent_argv(sweep: dict, params: dict) -> list:
    """The command ``wandb agent`` runs for one parameter set (wandb's own macro expansion, as in wandb_agent)."""
    from wandb.sdk.launch.sweeps import utils as sweep_utils

    sweep_vars = sweep_utils.create_sweep_command_args({"args": {k: {"value": v} for k, v in params.items()}})
    sweep_vars.update(env=["/usr/bin/env"], program=[sweep["program"]], interpreter=["python"])
    command = []
    for chunk in sweep_utils.create_sweep_command(list(sweep["command"])):
        chunk = str(chunk)
        command += sweep_vars.get(chunk[2:-1], []) if chunk.startswith("${") and chunk.endswith("}") else [chunk]
    return command


@pytest.fixture
def no_sweep_env(monkeypatch):
    for var in ("WANDB_SWEEP_ID", "WANDB_RUN_ID"):
        monkeypatch.delenv(var, raising=False)


def test_sweep_yaml_argv_reaches_the_config(no_sweep_env, monkeypatch):
    sweep = yaml.safe_load(SWEEP.read_text())
    assert sweep["method"] in ("grid", "bayes")
    assert sweep["metric"] == {"name": "val_knee/ssim", "goal": "maximize"}
    params = {}
    for key, spec in sweep["parameters"].items():
        params[key] = spec["value"] if "value" in spec else spec["values"][1]
        load_config(None, [f"{key}={params[key]}"])  # every swept key exists in the schema
    assert {"train.lr", "aug.p_max", "run.seed"} <= set(params)
    argv = _agent_argv(sweep, params)
    assert argv[:5] == ["/usr/bin/env", "deepspeed", "--num_gpus", "8", "varnet_ds/train.py"]
    assert "--train.lr=0.0003" in argv and "--aug.p_max=0.55" in argv and "--run.seed=1" in argv
    script_argv = argv[argv.index("varnet_ds/train.py") + 1:]
    for launcher_argv in (script_argv, ["--local_rank=0", *script_argv], [*script_argv, "--local_rank", "3"]):
        args = train.parse_args(launcher_argv)  # the deepspeed launcher adds --local_rank=N
        assert args.ds_config == "ds_configs/zero2.json" and args.config == "varnet_ds/conf/mraugment.yaml"
        assert args.local_rank in (None, 0, 3)
        cfg = load_config(ROOT / args.config, args.overrides)
        assert cfg.train.lr == 0.0003 and cfg.aug.p_max == 0.55 and cfg.run.seed == 1
        assert cfg.data.train_path == params["data.train_path"] and cfg.aug.enabled is True
        assert cfg.run.out_dir == "runs/mraugment"  # not under an agent: the config's folder

    # under the agent every run gets its own folder (else each would resume the last one's checkpoint)
    monkeypatch.setenv("WANDB_SWEEP_ID", "sw3ep")
    monkeypatch.setenv("WANDB_RUN_ID", "abc123")
    cfg = load_config(ROOT / "varnet_ds/conf/mraugment.yaml", train.parse_args(script_argv).overrides)
    assert cfg.run.out_dir == "runs/sweep-sw3ep/abc123"
    cfg = load_config(None, train.parse_args([*script_argv, "--run.out_dir=/scratch/x"]).overrides)
    assert cfg.run.out_dir == "/scratch/x"


def test_override_forms_and_order(no_sweep_env):
    args = train.parse_args(["train.lr=0.1", "--config=demo", "--train.lr=0.2", "--local-rank=1",
                             "data.accelerations=[6,8]", "--aug.weights.fliph=0.25"])
    assert args.config == "demo" and args.local_rank == 1
    assert args.overrides == ["train.lr=0.1", "train.lr=0.2", "data.accelerations=[6,8]", "aug.weights.fliph=0.25"]
    cfg = load_config(None, args.overrides)
    assert cfg.train.lr == 0.2 and list(cfg.data.accelerations) == [6, 8] and cfg.aug.weights.fliph == 0.25


@pytest.mark.parametrize("argv, named", [
    (["--foo.bar=1"], "'foo.bar'"),
    (["train.lrr=1"], "'train.lrr'"),
    (["--train.lr", "0.1"], "--train.lr"),
    (["train.lr"], "'train.lr'"),
    (["data.accelerations[0]=6"], "'data.accelerations[0]'"),  # OmegaConf cannot merge list items
    (["--conf=demo"], "'conf'"),  # no abbreviation of --config
])
def test_bad_arguments_exit_2_naming_them(no_sweep_env, capsys, argv, named):
    with pytest.raises(SystemExit) as err:
        train.parse_args(["--config", "varnet_ds/conf/mraugment.yaml", *argv])
    assert err.value.code == 2
    assert named in capsys.readouterr().err


def test_main_refuses_unknown_key_before_any_work(no_sweep_env, capsys):
    with pytest.raises(SystemExit) as err:
        train.main(["--config", "varnet_ds/conf/mraugment.yaml", "--train.lr=0.0003", "--foo.bar=1"])
    assert err.value.code == 2 and "unknown config key 'foo.bar'" in capsys.readouterr().err

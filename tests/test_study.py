"""The study runner (python -m varnet_ds.study): refusals before any run, run layout, skip and resume, analysis."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from trainrun import ROOT, TINY, env

from varnet_ds.analysis.runs import CompareError
from varnet_ds.analysis.study.load import load_study
from varnet_ds.analysis.study.load import read_spec as load_study_spec
from varnet_ds.config import load_config, save_config
from varnet_ds.studies.launch import Slot
from varnet_ds.studies.runner import is_finished, merge_saved, plan_runs
from varnet_ds.study import main
from varnet_ds.study_folder import StudyFolderError, StudySpec, read_spec, write_spec


def _common(synth_dirs):
    sets = [*TINY, f"data.train_path={synth_dirs['train']}", f"data.val_path={synth_dirs['val']}",
            f"data.transfer_path={synth_dirs['brain']}", "data.num_workers=0", "log.progress=false",
            "log.wandb.mode=disabled", "eval.every_epochs=1", "data.max_val_volumes=2"]
    return [a for s in sets for a in ("--set", s)]


def _spec(**kw):
    base = dict(study="s", config="demo", ds_config=str(ROOT / "ds_configs" / "zero2.json"), seeds=[1, 2],
                arms={"baseline": ["aug.enabled=false"], "mraugment": ["aug.enabled=true"]}, reference="baseline")
    base.update(kw)
    return StudySpec(**base)


@pytest.mark.parametrize("argv, message", [
    (["--seeds", "1", "1", "--arm", "a", "aug.enabled=false"], "duplicate seed(s) [1]"),
    (["--seeds", "1"], "no arms"),
    (["--seeds", "1", "--arm", "a", "aug.enabld=true"], "aug.enabld"),
    (["--seeds", "1", "--arm", "a", "--set", "train.epochz=3"], "train.epochz"),
    (["--seeds", "1", "--arm", "a", "aug.enabled"], "'aug.enabled' is not key=value"),
    (["--seeds", "1", "--arm", "a", "run.seed=3"], "run.seed is set by the study runner"),
    (["--seeds", "1", "--arm", "a", "--arm", "a"], "--arm 'a' given twice"),
    (["--seeds", "1", "--arm", "a", "--reference", "b"], "--reference 'b' is not an arm"),
    (["--seeds", "1", "--arm", "a b"], "--arm 'a b'"),
])
def test_bad_study_refused_before_any_run(tmp_path, capsys, argv, message):
    code = main(["--name", "bad", "--runs-dir", str(tmp_path), "--config", "demo", *argv])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()  # nothing written, nothing started


def test_runs_are_arm_seed_folders_with_paired_seeds(tmp_path):
    runs = plan_runs(_spec(), tmp_path)
    assert [r.name for r in runs] == ["baseline-s1", "baseline-s2", "mraugment-s1", "mraugment-s2"]
    cfgs = [load_config("demo", r.overrides) for r in runs]
    assert [c.run.seed for c in cfgs] == [1, 2, 1, 2]
    assert [c.aug.enabled for c in cfgs] == [False, False, True, True]
    assert {c.log.wandb.group for c in cfgs} == {"s"}
    assert [c.run.arm for c in cfgs] == ["baseline", "baseline", "mraugment", "mraugment"]
    assert cfgs[2].run.out_dir == str(tmp_path / "s" / "mraugment-s1")
    assert [r.name for r in plan_runs(_spec(reference="mraugment"), tmp_path)][0] == "mraugment-s1"


def test_run_folder_with_another_config_refused_naming_keys(tmp_path, capsys):
    runs = plan_runs(_spec(), tmp_path)
    cfg = load_config("demo", [*runs[0].overrides[:-6], "aug.enabled=true", *runs[0].overrides[-6:]])
    runs[0].out_dir.mkdir(parents=True)
    save_config(cfg, runs[0].out_dir / "config.yaml")  # a baseline folder that holds an augmented run
    code = main(["--name", "s", "--runs-dir", str(tmp_path), "--config", "demo", "--seeds", "1", "2",
                 "--arm", "baseline", "aug.enabled=false", "--arm", "mraugment", "aug.enabled=true"])
    err = capsys.readouterr().err
    assert code == 2 and "baseline-s1" in err and "aug.enabled: True -> False" in err
    assert not (tmp_path / "s" / "study.yaml").exists()


def test_study_file_may_grow_but_not_change(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(vars(_spec(overrides=["train.lr=0.001", "train.epochs=2"]))))
    grown = merge_saved(_spec(seeds=[3], arms={"low": ["data.volume_sample_rate=0.5"]},
                              overrides=["train.lr=0.001", "train.epochs=4"]), tmp_path)
    assert grown.seeds == [1, 2, 3] and list(grown.arms) == ["baseline", "mraugment", "low"]
    assert grown.overrides == ["train.lr=0.001", "train.epochs=4"]
    with pytest.raises(ValueError, match="arm mraugment"):
        merge_saved(_spec(arms={"mraugment": ["aug.enabled=true", "aug.p_max=0.3"]},
                          overrides=["train.lr=0.001", "train.epochs=2"]), tmp_path)
    with pytest.raises(ValueError, match="--set overrides"):
        merge_saved(_spec(overrides=["train.lr=0.01", "train.epochs=2"]), tmp_path)
    assert merge_saved(_spec(seeds=[], arms={}), tmp_path).seeds == [1, 2]  # `--name s` alone reruns the study
    # the packaged name of the same JSON is the same study (make demo recorded ds_configs/zero2.json before)
    same = ["train.lr=0.001", "train.epochs=2"]
    assert merge_saved(_spec(ds_config="zero2", overrides=same), tmp_path).ds_config == "zero2"
    with pytest.raises(ValueError, match=r"other settings \(ds_config .*zero2.json' vs 'zero1'\)"):
        merge_saved(_spec(ds_config="zero1", overrides=same), tmp_path)
    with pytest.raises(ValueError, match=r"not found from .*: gone/zero2.json"):
        merge_saved(_spec(ds_config="gone/zero2.json", overrides=same), tmp_path)


def test_one_study_file_format_for_runner_and_analysis(tmp_path):
    """study.yaml is written and checked by varnet_ds.study_folder: the runner and the analysis refuse the same
    malformed file with the same message, and what the runner writes the analysis reads back unchanged."""
    spec = _spec(device="test box")
    write_spec(tmp_path, spec)
    assert read_spec(tmp_path) == spec and load_study_spec(tmp_path) == spec
    bad = {**vars(_spec()), "arms": {"baseline": ["run.seed=3"]}}
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(StudyFolderError) as runner_err:
        merge_saved(_spec(), tmp_path)
    with pytest.raises(CompareError) as analysis_err:
        load_study(tmp_path)
    assert str(runner_err.value) == str(analysis_err.value)
    assert str(runner_err.value).startswith(f"{tmp_path / 'study.yaml'}: 'arms' baseline: run.seed is set by")
    (tmp_path / "study.yaml").write_text(yaml.safe_dump({**vars(_spec()), "sedes": [1]}))
    with pytest.raises(StudyFolderError, match=r"unknown key\(s\) \['sedes'\]"):
        read_spec(tmp_path)


def _study(tmp_path, synth_dirs, *extra):
    cmd = [sys.executable, "-m", "varnet_ds.study", "--name", "tiny", "--runs-dir", str(tmp_path), "--config",
           "demo", "--seeds", "5", "--arm", "baseline", "aug.enabled=false", "--arm", "mraugment",
           "aug.enabled=true", "--parallel", "2", *_common(synth_dirs), *extra]
    return subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=400)


def test_study_runs_skips_and_resumes(tmp_path, synth_dirs):
    first = _study(tmp_path, synth_dirs, "--set", "train.max_steps=3")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    study = tmp_path / "tiny"
    spec = yaml.safe_load((study / "study.yaml").read_text())
    assert spec["seeds"] == [5] and spec["arms"]["mraugment"] == ["aug.enabled=true"] and spec["device"]
    for run in ("baseline-s5", "mraugment-s5"):
        assert (study / run / "model_selected.pt").is_file() and (study / run / "selected.json").is_file()
        assert (study / run / "val_brain_per_volume_selected.csv").is_file()
    report = json.loads((study / "report" / "study.json").read_text())
    assert set(report["arms"]) == {"baseline", "mraugment"} and report["primary"] == "selected"
    assert (study / "report" / "per_volume.csv").is_file()
    prov = report["provenance"]  # from the runs' start events (analysis/provenance.py)
    assert prov["runs"] == ["baseline-s5", "mraugment-s5"] and not prov["unrecorded"]
    assert [prov["data"][k]["files"] for k in ("train_path", "val_path", "transfer_path")] == [3, 2, 2]
    assert prov["environment"]["libraries.torch"] and "libraries.torch" not in prov["environment_differs"]
    assert all(r["world_size"] == 1 and r["threads_per_rank"] >= 1 for r in prov["ranks_threads"].values())
    stamp = (study / "baseline-s5" / "metrics.jsonl").stat().st_mtime_ns

    again = _study(tmp_path, synth_dirs, "--set", "train.max_steps=3")
    assert again.returncode == 0 and "2 finished" in again.stdout and "start " not in again.stdout
    assert (study / "baseline-s5" / "metrics.jsonl").stat().st_mtime_ns == stamp  # finished runs untouched

    # killed while writing its outputs (after the checkpoint that ends training, before FINISHED): the rerun
    # completes it from that checkpoint without training or scoring anything again
    run = study / "baseline-s5"
    tables = {n: (run / n).read_text() for n in ("val_brain_per_volume.csv", "val_knee_per_volume_selected.csv")}
    rows = (run / "metrics.jsonl").read_text()
    for name in ("FINISHED", "model_fp32.pt", *tables):
        (run / name).unlink()
    again = _study(tmp_path, synth_dirs, "--set", "train.max_steps=3")
    assert again.returncode == 0 and "1 finished" in again.stdout, again.stdout[-3000:] + again.stderr[-3000:]
    assert "writing its outputs and FINISHED" in (run / "train.log").read_text()
    assert {n: (run / n).read_text() for n in tables} == tables and (run / "model_fp32.pt").is_file()
    def untimed(text):
        return [{k: v for k, v in json.loads(x).items() if k != "time"} for x in text.splitlines()]

    redone = [r for r in untimed((run / "metrics.jsonl").read_text()) if r.get("event") != "resume"]
    assert redone == untimed(rows)  # rows after the checkpoint rolled back: the end event logged again, once
    assert json.loads((run / "FINISHED").read_text())["step"] == 3

    longer = _study(tmp_path, synth_dirs, "--set", "train.max_steps=5", "--no-analysis")
    assert longer.returncode == 0, longer.stdout[-3000:]
    assert "0 finished" in longer.stdout
    log = (study / "baseline-s5" / "train.log").read_text()
    assert "resumed from" in log  # continued from the checkpoint, not restarted
    steps = [json.loads(x)["step"] for x in (study / "baseline-s5" / "metrics.jsonl").read_text().splitlines()
             if json.loads(x)["split"] == "train"]
    assert steps == [1, 2, 3, 4, 5]  # every step logged once across the two invocations

    # more epochs for runs that ended by max_steps: nothing to train, but FINISHED must name the new length, or the
    # runner would start these runs on every rerun and its statistics would refuse them
    wider = ("--set", "train.max_steps=5", "--set", "train.epochs=6", "--no-analysis")
    assert _study(tmp_path, synth_dirs, *wider).returncode == 0
    assert json.loads((study / "baseline-s5" / "FINISHED").read_text())["epochs"] == 6
    assert "writing its outputs and FINISHED" in (study / "baseline-s5" / "train.log").read_text()
    settled = _study(tmp_path, synth_dirs, *wider)
    assert settled.returncode == 0 and "2 finished" in settled.stdout, settled.stdout[-2000:]


def test_slurm_array_element_gets_its_run(tmp_path, capsys):
    base = ["--name", "arr", "--runs-dir", str(tmp_path)]
    assert main([*base, "--config", "demo", "--seeds", "1", "2", "--arm", "baseline", "aug.enabled=false",
                 "--arm", "mraugment", "aug.enabled=true", "--list"]) == 0
    out = capsys.readouterr().out
    assert "sbatch --array=0-3 launch/slurm.sbatch --study arr" in out and "3  mraugment-s2" in out
    assert main([*base, "--run-args", "3"]) == 0  # the recorded study, as an array element runs it
    argv = shlex.split(capsys.readouterr().out)
    from varnet_ds.train import parse_args

    args = parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    assert (cfg.run.seed, cfg.run.arm, cfg.aug.enabled) == (2, "mraugment", True)
    assert cfg.run.out_dir == str(tmp_path / "arr" / "mraugment-s2") and cfg.log.wandb.group == "arr"
    assert main([*base, "--run-args", "4"]) == 2
    assert "runs 0..3" in capsys.readouterr().err


def test_layout_benchmark_plain_loop_runs(synth_dirs):
    from varnet_ds.studies.bench import plain_loop

    assert plain_loop(synth_dirs["train"], steps=2, threads=1, warmup=1) > 0  # samples/s of the reference loop


def test_gpu_packing(monkeypatch):
    import torch

    from varnet_ds.config import ConfigError
    from varnet_ds.studies.launch import machine_slots

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    one = machine_slots(1, None)
    assert [s.gpus for s in one] == [[i] for i in range(8)]  # 8 runs side by side
    assert [s.gpus for s in machine_slots(None, None)] == [list(range(8))]  # one ZeRO-2 run on all GPUs
    four = machine_slots(4, None)
    assert [s.gpus for s in four] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert four[1].launcher(29650)[1:] == ["--include", "localhost:4,5,6,7", "--master_port", "29650"]
    with pytest.raises(ValueError, match="needs a port"):
        four[1].launcher()
    with pytest.raises(ConfigError, match="--gpus-per-run 3"):
        machine_slots(3, None)


def test_cpu_packing(monkeypatch):
    import torch

    from varnet_ds.studies.launch import machine_slots

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    slots = machine_slots(None, None)
    assert [(s.ranks, s.threads) for s in slots] == [(1, 1), (1, 1)]  # one 1-rank run per core
    assert [(s.ranks, s.threads) for s in machine_slots(None, 1)] == [(1, 2)]
    assert slots[0].env()["OMP_NUM_THREADS"] == "1" and slots[0].launcher() == [sys.executable]  # no launcher
    monkeypatch.setenv("MASTER_PORT", "29500")  # inherited from a shell: train.py binds a port of its own instead
    assert "MASTER_PORT" not in slots[0].env() and "RANK" not in slots[0].env()
    two_ranks = Slot(None, 2, 1).launcher(29651)  # study_bench's 2-rank layout
    assert Path(two_ranks[0]).name == "deepspeed" and two_ranks[1:3] == ["--num_gpus", "2"]


FORWARDING_RUNNER = """
import sys
from pathlib import Path
from varnet_ds.studies.launch import Slot, launch_all
job = Path(sys.argv[1])
print("failed", launch_all([("job", [str(job)], job.parent / "run")], [Slot(None, 1, 1)], print), flush=True)
"""
FAKE_TRAINING = """
import os, signal, sys, time
from pathlib import Path
out = Path(__file__).parent / "run"
def stop(signum, frame):
    (out / "signal").write_text(str(signum))
    sys.exit(75)  # EXIT_REQUEUE: checkpoint written
if HANDLER:
    signal.signal(signal.SIGTERM, stop)
(out / "started").write_text(str(os.getpid()))
time.sleep(60)
"""


@pytest.mark.parametrize("handler", [True, False], ids=["checkpointed", "before-its-handler"])
def test_sigterm_to_the_runner_reaches_a_cpu_run(tmp_path, handler):
    """Forwarded to the run; it counts as preempted also when the signal killed it (-15) before its handler
    existed (the run resumes from its last checkpoint, or starts again)."""
    import os
    import signal
    import time

    import psutil

    job = tmp_path / "fake_train.py"
    job.write_text(FAKE_TRAINING.replace("HANDLER", str(handler)))
    runner = subprocess.Popen([sys.executable, "-c", FORWARDING_RUNNER, str(job)], cwd=ROOT, env=env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    started = tmp_path / "run" / "started"
    try:
        t0 = time.time()
        while not (started.exists() and started.read_text()):
            assert runner.poll() is None and time.time() - t0 < 60, "the fake job did not start"
            time.sleep(0.05)
        runner.send_signal(signal.SIGTERM)
        out, err = runner.communicate(timeout=30)
    finally:
        runner.kill()
        if started.exists() and started.read_text() and psutil.pid_exists(int(started.read_text())):
            os.kill(int(started.read_text()), signal.SIGKILL)  # a job the runner failed to stop
    if handler:
        assert (tmp_path / "run" / "signal").read_text() == str(int(signal.SIGTERM)), out + err  # forwarded
    assert "preempted job" in out and "failed {'job': 75}" in out and "FAILED" not in out, out + err
    assert f"(exit {75 if handler else -signal.SIGTERM})" in out, out


def test_finished_is_the_marker_for_the_length_asked(tmp_path):
    from varnet_ds.run_folder import write_finished

    spec = _spec(seeds=[1], overrides=["train.max_steps=3"])
    run = plan_runs(spec, tmp_path)[0]
    run.out_dir.mkdir(parents=True)
    save_config(load_config("demo", run.overrides), run.out_dir / "config.yaml")
    (run.out_dir / "model_fp32.pt").write_bytes(b"weights")
    assert not is_finished(run, spec)  # every output but the marker: killed while finishing
    epochs = load_config("demo", run.overrides).train.epochs
    write_finished(run.out_dir, step=3, epoch=0, epochs=epochs, max_steps=3, files=["model_fp32.pt"])
    assert is_finished(run, spec)
    longer = _spec(seeds=[1], overrides=["train.max_steps=5"])
    assert not is_finished(plan_runs(longer, tmp_path)[0], longer)  # an extension asked for: not finished

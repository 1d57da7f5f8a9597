"""A study survives anything: runner and runs interrupted again and again (SIGTERM and kill -9, to the runner or to
one run, at random moments), rerun each time with the same command, ends with exactly the numbers of the same study
run without interruption.

The schedule is drawn from a seeded RNG: ``SURVIVAL_SEED`` (default 22) and ``SURVIVAL_INTERRUPTIONS`` (default 4,
one of each kind in a seeded order) replay or lengthen it by hand, e.g.::

    SURVIVAL_SEED=7 SURVIVAL_INTERRUPTIONS=30 OMP_NUM_THREADS=1 python -m pytest -q tests/test_survival.py -s

A failure prints the seed and every interruption made (what, when, the exit code it caused).
"""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest
from trainrun import ROOT, TINY, env

pytestmark = pytest.mark.slow

SEED = int(os.environ.get("SURVIVAL_SEED", "22"))
INTERRUPTIONS = int(os.environ.get("SURVIVAL_INTERRUPTIONS", "4"))
KINDS = [("runner", signal.SIGTERM), ("runner", signal.SIGKILL), ("run", signal.SIGTERM), ("run", signal.SIGKILL)]
RUNS = ("baseline-s3", "mraugment-s3")
STEPS = 18  # 2 epochs x 9 training slices (batch 1, one rank per run)


def _command(runs_dir: Path, synth_dirs) -> list:
    sets = [*TINY, f"data.train_path={synth_dirs['train']}", f"data.val_path={synth_dirs['val']}",
            f"data.transfer_path={synth_dirs['brain']}", "data.num_workers=0", "log.progress=false",
            "log.wandb.mode=disabled", "train.epochs=2", "eval.every_epochs=1", "eval.every_steps=4",
            "train.checkpoint_every_steps=3", "data.max_val_volumes=2"]
    return [sys.executable, "-m", "varnet_ds.study", "--name", "surv", "--runs-dir", str(runs_dir), "--config",
            "demo", "--seeds", "3", "--arm", "baseline", "aug.enabled=false", "--arm", "mraugment",
            "aug.enabled=true", "--parallel", "2", *[a for s in sets for a in ("--set", s)]]


def _start(cmd, log: Path) -> subprocess.Popen:
    with open(log, "a") as fh:
        return subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=fh, stderr=subprocess.STDOUT)


def _jobs_of(root: Path):
    """Live processes working for the study under ``root`` (training runs, leftovers of a killed runner)."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(str(root) in part for part in (p.info["cmdline"] or [])) and p.pid != os.getpid():
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


def _wait_gone(root: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while _jobs_of(root):
        assert time.monotonic() < deadline, f"processes left behind: {[p.pid for p in _jobs_of(root)]}"
        time.sleep(0.2)


def _shm() -> set:
    return {p.name for p in Path("/dev/shm").glob("deepspeed_*")} if Path("/dev/shm").is_dir() else set()


def _numbers(study: Path) -> dict:
    """What must not depend on interruptions: study.json without times/places, per_volume.csv, the run tables."""
    summary = json.loads((study / "report" / "study.json").read_text())
    for key in ("generated", "date", "time", "device", "folder", "provenance"):
        summary.pop(key, None)
    text = json.dumps(summary, sort_keys=True).replace(str(study.parent), "RUNS")
    tables = {f"{run}/{name}": (study / run / name).read_text() for run in RUNS
              for name in ("val_brain_per_volume.csv", "val_brain_per_volume_selected.csv", "selected.json")}
    with open(study / "report" / "per_volume.csv", newline="") as fh:
        per_volume = list(csv.reader(fh))
    return {"study.json": text, "per_volume.csv": per_volume, **tables}


@pytest.fixture(scope="module")
def uninterrupted(synth_dirs, tmp_path_factory):
    root = tmp_path_factory.mktemp("survival_reference")
    proc = subprocess.run(_command(root, synth_dirs), cwd=ROOT, env=env(), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return root / "surv"


def test_interrupted_study_ends_with_the_uninterrupted_numbers(synth_dirs, tmp_path, uninterrupted):
    rng = random.Random(SEED)
    kinds = [KINDS[i % len(KINDS)] for i in rng.sample(range(max(INTERRUPTIONS, len(KINDS))), INTERRUPTIONS)]
    cmd, log = _command(tmp_path, synth_dirs), tmp_path / "runner.log"
    shm_before, made = _shm(), []
    try:
        for target, sig in kinds:
            proc = _start(cmd, log)
            delay = rng.uniform(1.0, 14.0)
            t0 = time.monotonic()
            while proc.poll() is None and time.monotonic() - t0 < delay:
                time.sleep(0.05)
            if proc.poll() is not None:
                made.append(f"{target} {sig.name} at {delay:.1f} s: not sent, the runner had ended ({proc.returncode})")
                if proc.returncode == 0:
                    break
                continue
            victims = _jobs_of(tmp_path / "surv")  # the runs (their command lines name their folders)
            victim = rng.choice(victims) if target == "run" and victims else psutil.Process(proc.pid)
            try:
                name = "runner" if victim.pid == proc.pid else next(
                    a.split("=", 1)[1] for a in victim.cmdline() if a.startswith("run.name="))
                victim.send_signal(sig)
            except psutil.NoSuchProcess:
                name = "(ended)"
            code = proc.wait(timeout=180)
            made.append(f"{target} {sig.name} at {delay:.1f} s to {name}: exit {code}")
            _wait_gone(tmp_path)  # a killed runner's runs get SIGTERM (PR_SET_PDEATHSIG) and checkpoint
        final = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=600)
        made.append(f"final rerun: exit {final.returncode}")
        assert final.returncode == 0, final.stdout[-3000:] + final.stderr[-3000:]
        study = tmp_path / "surv"
        assert _numbers(study) == _numbers(uninterrupted)
        for run in RUNS:
            rows = [json.loads(line) for line in (study / run / "metrics.jsonl").read_text().splitlines()]
            assert [r["step"] for r in rows if r["split"] == "train"] == list(range(1, STEPS + 1)), run
            evals = Counter((r["step"], r["split"]) for r in rows if r["split"].startswith("val_")
                            and "acquisition" not in r and "acceleration" not in r)
            assert set(evals.values()) == {1}, (run, evals)  # every evaluation logged once
            ref = [json.loads(x) for x in (uninterrupted / run / "metrics.jsonl").read_text().splitlines()]
            assert sorted(evals) == sorted((r["step"], r["split"]) for r in ref if r["split"].startswith("val_")
                                           and "acquisition" not in r and "acceleration" not in r)
        _wait_gone(tmp_path, timeout=5)
        assert _shm() <= shm_before, _shm() - shm_before
    except BaseException:
        print(f"SURVIVAL_SEED={SEED} SURVIVAL_INTERRUPTIONS={INTERRUPTIONS}\n" + "\n".join(made)
              + f"\nrunner log tail:\n{log.read_text()[-3000:] if log.exists() else ''}")
        raise
    finally:
        for p in _jobs_of(tmp_path):
            p.kill()
    print(f"survived {sum('exit' in m for m in made) - 1} interruption(s): " + "; ".join(made))

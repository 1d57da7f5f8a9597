"""varnet-ds wandb-report (varnet_ds/analysis/wandb_report/report.py): the W&B Report of a study, built and checked
with every network call failing."""

from __future__ import annotations

import json
import socket
import warnings
from pathlib import Path

import numpy as np
import pytest
import requests
import wandb
from wandb_files import flushed_records, history_rows

from varnet_ds.analysis.wandb_report import report as wandb_report
from varnet_ds.config import load_config, save_config
from varnet_ds.exits import EXIT_INTERNAL
from varnet_ds.run_folder import output_files, write_finished
from varnet_ds.tracking.tracker import Tracker

STUDY = "k2b-study"
ARMS = {"baseline": (0.60, 0.66), "mraugment": (0.58, 0.65)}  # (knee, brain) SSIM at the last epoch
METHOD = "Pairing: run <arm>-s<s> with run <reference>-s<s> ... " + "x" * 1200  # as long as the real one


@pytest.fixture(scope="module")
def study_root(tmp_path_factory):
    """runs/<STUDY>/<arm>-s<seed>/ written by the real Tracker (W&B offline), plus the history keys logged."""
    root = tmp_path_factory.mktemp("runs")
    mp = pytest.MonkeyPatch()
    for var in ("WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_DISABLED", "WANDB_RUN_ID", "WANDB_PROJECT"):
        mp.delenv(var, raising=False)
    mp.setenv("WANDB_MODE", "offline")
    mp.setenv("NETRC", str(root / "netrc"))
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        mp.setenv(var, str(root / "wandb_home" / var.lower()))
    logged, run_dirs = set(), []
    try:
        for arm, (knee, brain) in ARMS.items():
            for seed in (0, 1):
                name = f"{arm}-s{seed}"
                cfg = load_config(None, [f"run.name={name}", f"run.arm={arm}", f"run.seed={seed}",
                                         f"log.wandb.group={STUDY}", f"run.out_dir={root / STUDY / name}"])
                run_dir = Path(cfg.run.out_dir)
                run_dir.mkdir(parents=True)
                save_config(cfg, run_dir / "config.yaml")
                with Tracker(cfg, run_dir, rank=0) as tracker:
                    for epoch in range(3):
                        step = 10 * (epoch + 1)
                        tracker.log({"step": step, "epoch": epoch, "split": "train", "loss": 0.5 - 0.1 * epoch})
                        bump = 0.01 * (epoch == 1)  # the selected (best knee) evaluation is epoch 1
                        tracker.log({"step": step, "epoch": epoch, "split": "val_knee", "ssim": knee + bump,
                                     "psnr": 30.0, "nmse": 0.03})
                        for acq in (None, "AXT2"):
                            row = {"step": step, "epoch": epoch, "split": "val_brain", "ssim": brain + bump + seed
                                   * 0.001, "psnr": 31.0 + epoch, "nmse": 0.02}
                            tracker.log(row if acq is None else {**row, "acquisition": acq, "acceleration": 4})
                        panels = {p: np.random.rand(8, 8) for p in ("zero_filled", "reconstruction", "target",
                                                                     "error")}
                        tracker.log_images(step, epoch, "val_brain", panels)
                (run_dir / "selected.json").write_text(json.dumps({"step": 20, "epoch": 1, "value": knee + 0.01}))
                write_finished(run_dir, step=30, epoch=2, epochs=3, max_steps=None, files=output_files(run_dir))
                run_dirs.append(run_dir)
        wandb.teardown()  # W&B's service process flushes the .wandb files before it exits
        for run_dir in run_dirs:
            path = next((run_dir / "wandb").glob("offline-run-*/*.wandb"))
            for hist in history_rows(flushed_records(path, ["history", "exit"])):
                logged |= set(hist)
    finally:
        mp.undo()
    return root, logged


@pytest.fixture
def no_network(monkeypatch, tmp_path):
    """Every socket connection and HTTP request fails; W&B offline with no API key anywhere."""

    def refuse(*args, **kwargs):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(requests.Session, "send", refuse)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb_config"))


def _study_json(root: Path) -> dict:
    data = {"study": STUDY, "primary": "selected", "reference": "baseline", "device": "8x H200", "arms": {},
            "methods": {"contrast": METHOD},
            "contrasts": [{"arm": "mraugment", "reference": "baseline", "split": "val_brain", "metric": "ssim",
                           "checkpoint": "selected", "group": "all", "mean": -0.0137, "ci_low": -0.021,
                           "ci_high": -0.0069, "p_value": 0.0123, "n_seeds": 2, "n_volumes": 4,
                           "noise_floor_sd": 0.0042, "wins": 1, "losses": 3, "method": METHOD},
                          {"arm": "mraugment", "reference": "baseline", "split": "val_brain", "metric": "ssim",
                           "checkpoint": "final", "group": "all", "mean": 0.5, "ci_low": 0.4, "ci_high": 0.6,
                           "p_value": 0.5, "n_seeds": 2, "n_volumes": 4, "noise_floor_sd": 0.1, "method": "x"}]}
    for arm, (knee, brain) in ARMS.items():
        data["arms"][arm] = {"seeds": [0, 1], "runs": [f"{arm}-s0", f"{arm}-s1"],
                             "brain_ssim": {"selected": [brain + 0.01, brain + 0.011], "final": [brain, brain]},
                             "knee_ssim": {"selected": [knee + 0.01] * 2, "final": [knee] * 2}}
    (root / STUDY / "report").mkdir(exist_ok=True)
    (root / STUDY / "report" / "study.json").write_text(json.dumps(data))
    return data


def _panels(spec: dict):
    grids = [b for b in spec["spec"]["blocks"] if b["type"] == "panel-grid"]
    assert len(grids) == 1
    return grids[0]["metadata"], grids[0]["metadata"]["panelBankSectionConfig"]["panels"]


def _dry_run(root: Path, out: Path) -> dict:
    code = wandb_report.main(["--entity", "ent", "--project", "proj", "--study", STUDY, "--runs-dir", str(root),
                              "--dry-run", str(out)])
    assert code == 0
    return json.loads(out.read_text())


def test_dry_run_spec(study_root, no_network, tmp_path):
    root, logged = study_root
    _study_json(root)
    try:
        spec = _dry_run(root, tmp_path / "report.json")
    finally:
        (root / STUDY / "report" / "study.json").unlink()
    grid, panels = _panels(spec)
    [runset] = grid["runSets"]
    assert runset["filters"]["filters"] == [{"disabled": False, "key": {"name": "group", "section": "run"},
                                             "op": "=", "value": STUDY}]
    assert runset["project"] == {"entityName": "ent", "id": "dry-run", "name": "proj"}
    assert runset["grouping"] == [{"name": "run.value.arm", "section": "config"}]  # config run.arm
    kinds = [p["viewType"] for p in panels]
    assert kinds.count("Run History Line Plot") == 4 and "Run Comparer" in kinds and "Media Browser" in kinds
    lines = [p["config"] for p in panels if p["viewType"] == "Run History Line Plot"]
    assert {tuple(c["metrics"]) for c in lines} == {("val_knee/ssim",), ("val_brain/ssim",), ("val_brain/psnr",),
                                                    ("train/loss",)}
    for c in lines:
        assert c["xAxis"] == ("trainer/step" if c["metrics"][0].startswith("train/") else "trainer/epoch")
        assert c["groupBy"] == "run.value.arm" and c["groupAgg"] == "mean" and c["groupArea"] == "stddev"
        assert set(c["metrics"]) <= logged and c["xAxis"] in logged  # keys the runs really log
    media = next(p["config"]["mediaKeys"] for p in panels if p["viewType"] == "Media Browser")
    assert "val_brain/images/reconstruction" in media
    assert all(any(k.startswith(m + "/") for k in logged) for m in media)
    text = json.dumps(spec["spec"]["blocks"], ensure_ascii=False)
    assert "_step" not in json.dumps([p["config"] for p in panels])
    # the first text block: the primary contrast in one short sentence; the method only at the end
    blocks = spec["spec"]["blocks"]
    texts = [(i, b["content"]) for i, b in enumerate(blocks) if b["type"] == "markdown-block"]
    first = texts[0][1]
    assert first == ("**mraugment − baseline, brain SSIM: −0.0137 (95 % CI −0.0210 to −0.0069, excludes zero; "
                     "p = 0.012; 2 seeds × 4 volumes).**")
    assert len(first) < 200 and first.count(". ") == 0 and "\n" not in first
    assert "0.0042" in texts[1][1] and "better on 1 and worse on 3 of 4" in texts[1][1]
    method_at = [i for i, t in texts if METHOD in t]
    headings = [b["children"][0]["text"] for b in blocks if b["type"] == "heading"]
    assert method_at == [texts[-1][0]] and headings[-1] == "Method" and text.count(METHOD) == 1
    assert "0.5000" not in text and "+0.5" not in text  # the final-checkpoint contrast is not the primary one
    assert "| mraugment | 2 | 0.5900 ± 0.0000 | 0.5800 ± 0.0000 | 0.6605 ± 0.0007 | 0.6500 ± 0.0000 |" in text

    # reload round trip: JSON -> Report -> JSON, no warnings, no Unknown* block or panel
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = wandb_report.spec_to_report(spec)
        again = wandb_report.report_spec(report)
    assert again == spec
    blocks = list(report.blocks)
    assert not [b for b in blocks if type(b).__name__.startswith("Unknown")]
    grid_block = next(b for b in blocks if type(b).__name__ == "PanelGrid")
    assert not [p for p in grid_block.panels if type(p).__name__.startswith("Unknown")]


def test_without_study_json_uses_run_folders(study_root, no_network, tmp_path):
    root, _ = study_root
    spec = _dry_run(root, tmp_path / "r.json")
    text = json.dumps(spec["spec"]["blocks"], ensure_ascii=False)
    first = next(b["content"] for b in spec["spec"]["blocks"] if b["type"] == "markdown-block")
    assert first == (f"No `{root / STUDY}/report/study.json` yet: run `varnet-ds study-report {root / STUDY}` for "
                     "the study's contrasts.")
    assert "Method" not in [b["children"][0]["text"] for b in spec["spec"]["blocks"] if b["type"] == "heading"]
    # selected = the evaluation selected.json names (epoch 1), final = the last one; mean ± SD over 2 seeds
    assert "| baseline | 2 | 0.6100 ± 0.0000 | 0.6000 ± 0.0000 | 0.6705 ± 0.0007 | 0.6605 ± 0.0007 |" in text
    assert "baseline (2 seeds), mraugment (2 seeds)" in text


@pytest.mark.parametrize("case", ["unknown", "empty", "quote", "space"])
def test_bad_input_exits_2_and_writes_nothing(study_root, no_network, tmp_path, capsys, case):
    root, _ = study_root
    name = {"unknown": "no-such-study", "empty": "empty-study", "quote": "it's", "space": "a b"}[case]
    (root / "empty-study" / "report").mkdir(parents=True, exist_ok=True)
    out = tmp_path / "r.json"
    code = wandb_report.main(["--entity", "e", "--project", "p", "--study", name, "--runs-dir", str(root),
                              "--dry-run", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and repr(name) in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and not list(tmp_path.glob("*.tmp"))


def test_group_rule_matches_the_tracker():
    from varnet_ds.tracking.wandb_run import _GROUP_RE

    assert wandb_report._GROUP_RE.pattern == _GROUP_RE.pattern


def test_online_without_login_or_synced_runs_exits_1(study_root, no_network, monkeypatch, capsys):
    root, _ = study_root
    argv = ["--entity", "ent", "--project", "proj", "--study", STUDY, "--runs-dir", str(root)]
    assert wandb_report.main(argv) == 1  # no API key: wandb.Api() refuses, one line
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "wandb login" in err and "Traceback" not in err

    import wandb

    class NotSynced:
        def runs(self, path, filters=None, per_page=None):
            raise ValueError(f"Could not find project {path}")

    monkeypatch.setattr(wandb, "Api", NotSynced)
    assert wandb_report.main(argv) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    dirs = sorted((root / STUDY).glob("*/wandb/offline-run-*"))
    assert len(dirs) == 4 and err.strip().endswith("wandb sync " + " ".join(str(d) for d in dirs))


def test_spec_json_is_written_atomically(study_root, no_network, tmp_path, monkeypatch):
    """--dry-run writes through varnet_ds.files: a spec that fails to serialise leaves the old file, no temp file."""
    root, _ = study_root
    out = tmp_path / "report.json"
    out.write_text('{"old": true}\n')
    monkeypatch.setattr(wandb_report, "report_spec", lambda report: {"a": 1, "z": object()})
    assert wandb_report.main(["--entity", "e", "--project", "p", "--study", STUDY, "--runs-dir", str(root),
                              "--dry-run", str(out)]) == EXIT_INTERNAL  # the TypeError: a bug, exit 70
    assert out.read_text() == '{"old": true}\n' and [p.name for p in tmp_path.iterdir()] == ["report.json"]
    monkeypatch.setattr(wandb_report, "report_spec", lambda report: {"a": 1})
    _dry_run(root, out)
    assert json.loads(out.read_text()) == {"a": 1}

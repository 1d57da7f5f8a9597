"""varnet-ds report (varnet_ds/analysis/compare/) from W&B history (a fake public API fed with what the Tracker logs)
and the report's HTML rendered in headless Chromium."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
from browser import screenshot
from compare_runs import make_report, make_runs, read_jsonl

from varnet_ds.analysis.compare.report import build_report_from_runs, main
from varnet_ds.analysis.compare.wandb_source import load_wandb_runs
from varnet_ds.analysis.runs import load_run

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> List[Path]:
    return make_runs(tmp_path_factory.mktemp("runs"))


@pytest.fixture(scope="module")
def report(runs, tmp_path_factory) -> Path:
    return make_report(runs, tmp_path_factory.mktemp("report"))




class _FakeFile:
    def __init__(self, path: str, content: str) -> None:
        self.path, self.content = path, content

    def download(self, root: str, replace: bool = False) -> None:
        target = Path(root) / self.path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(self.content)


class _FakeRun:
    """What varnet_ds.analysis.compare.wandb_source uses of wandb.apis.public.Run, fed with what the Tracker would
    have logged."""

    def __init__(self, run_dir: Path, wrapped_config: bool = False) -> None:
        self.name = run_dir.name + "-wandb-name"
        self.config = {"run": {"name": run_dir.name}}
        if wrapped_config:  # the raw form some W&B versions return
            self.config = {"_wandb": {"value": {"t": 1}}, "run": {"value": {"name": run_dir.name}, "desc": None}}
        self.history: List[dict] = [{"_step": 0, "_runtime": 1.0}]
        for row in read_jsonl(run_dir / "metrics.jsonl"):
            prefix = "/".join([row["split"]] + ([row["acquisition"]] if "acquisition" in row else [])
                              + ([f"x{row['acceleration']}"] if "acceleration" in row else []))
            skip = ("step", "epoch", "split", "acquisition", "acceleration", "time")
            self.history.append({f"{prefix}/{k}": v for k, v in row.items() if k not in skip}
                                | {"trainer/step": row["step"], "trainer/epoch": row["epoch"], "_step": 1})
        self.history.append({"val_brain/images/target": {"_type": "image-file"}, "trainer/step": 1,
                             "trainer/epoch": 0})
        with open(run_dir / "val_brain_per_volume.csv", newline="") as f:
            records = list(csv.reader(f))
        self.table = json.dumps({"columns": records[0], "data": records[1:]})
        self.summary = {"val_brain_per_volume": {"_type": "table-file", "path": "media/table/pv.table.json"}}

    def scan_history(self):
        return iter(self.history)

    def file(self, path: str) -> _FakeFile:
        return _FakeFile(path, self.table)


class _FakeApi:
    def __init__(self, runs: Dict[str, _FakeRun]) -> None:
        self.runs = runs

    def run(self, path: str) -> _FakeRun:
        entity, project, run_id = path.split("/")
        assert (entity, project) == ("ent", "proj")
        if run_id not in self.runs:
            raise ValueError(f"Could not find run {path}")
        return self.runs[run_id]


def test_wandb_history_converts_to_metrics_rows(runs, tmp_path):
    api = _FakeApi({"id0": _FakeRun(runs[0]), "id1": _FakeRun(runs[1], wrapped_config=True)})
    wb_runs = load_wandb_runs("ent/proj", ["id0", "id1"], api=api)
    with pytest.warns(RuntimeWarning):
        local = [load_run(r) for r in runs]
    for wb, loc in zip(wb_runs, local):
        assert wb.label == loc.label and wb.source.startswith("wandb:ent/proj/")
        strip = [{k: v for k, v in r.items() if k != "time"} for r in loc.rows]
        assert wb.rows == strip  # same rows, same de-duplication (the later copy of step 3 wins)
        assert wb.per_volume["val_brain"] == loc.per_volume["val_brain"]
    md = build_report_from_runs(wb_runs, tmp_path / "wb").read_text()
    assert "wandb:ent/proj/id1" in md
    with pytest.raises(Exception, match="Could not find run ent/proj/nope"):
        load_wandb_runs("ent/proj", ["nope"], api=api)


def test_wandb_without_api_key_fails_clearly(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert main(["--wandb", "ent/proj", "--runs", "abc", "--out", str(tmp_path / "o")]) == 2
    assert "WANDB_MODE=offline" in capsys.readouterr().err
    for var in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_BASE_URL", "WANDB_MODE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(tmp_path / "no_netrc"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb_cfg"))
    assert main(["--wandb", "ent/proj", "--runs", "abc", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "--wandb: cannot use the W&B API" in err and "WANDB_API_KEY" in err
    assert main(["--wandb", "not-a-project", "--runs", "abc", "--out", str(tmp_path / "o")]) == 2
    assert "expected ENTITY/PROJECT" in capsys.readouterr().err


def test_report_html_renders_in_headless_chromium(report, tmp_path):
    img = screenshot(report.with_suffix(".html"), tmp_path, height=2000)
    assert img.shape[:2] == (2000, 1280)
    assert float(img.std()) > 0.05, "blank screenshot"
    dark = (img.max(axis=-1) < 0.35).mean()
    assert dark > 0.002, "no text rendered"
    # the report's accent colour (#1f77b4: title rule, links, curves) proves our page rendered, not an error page
    accent = (np.abs(img - np.array([0x1F, 0x77, 0xB4]) / 255.0).max(axis=-1) < 0.06).mean()
    assert accent > 0.0005, f"report styling not visible (accent fraction {accent:.5f})"

"""Tests of analysis/compare.py: the knee->brain comparison report built from two synthetic run folders.

The run folders are written with the trainer's own writers (``varnet_ds.config.save_config`` and
``varnet_ds.tracking.tracker.Tracker`` with W&B disabled), so the report is tested against the real file format.
Run A ("baseline"): 3 epochs, knee and brain evaluations, both per-volume tables. Run B ("mraugment"): 2 epochs,
aug_p > 0, no knee evaluations or knee table (missing split), a preemption/resume, a duplicated train row, an
extra unmatched brain volume, a different eval setting and a torn last line -- all of which must be flagged.
"""

from __future__ import annotations

import base64
import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import h5py
import matplotlib.image as mpimg
import numpy as np
import pytest

from varnet_ds.config import load_config, save_config
from varnet_ds.tracking.tracker import Tracker

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # analysis/ is a top-level folder of the repo, not an installed package
    sys.path.insert(0, str(REPO))

from analysis.compare import build_report, build_report_from_runs, main  # noqa: E402
from analysis.runs import load_run  # noqa: E402
from analysis.stats import bootstrap_mean_ci  # noqa: E402
from analysis.wandb_source import load_wandb_runs  # noqa: E402

STEPS_PER_EPOCH = 4
KNEE_SSIM = {"baseline": [0.70, 0.75, 0.78]}
BRAIN_SSIM = {"baseline": [0.60, 0.64, 0.62], "mraugment": [0.63, 0.66]}  # baseline's best brain SSIM is not final
ACC_OFFSET = {4: 0.031, 8: -0.029}
ACQ_OFFSET = {"AXT1": -0.012, "AXT2": 0.008, "CORPD_FBK": 0.0}
BRAIN_VOLS = [("file_brain_AXT1_0.h5", "AXT1"), ("file_brain_AXT2_1.h5", "AXT2"), ("file_brain_AXT2_2.h5", "AXT2")]
KNEE_VOLS = [("file_knee_0.h5", "CORPD_FBK"), ("file_knee_1.h5", "CORPD_FBK")]
# mraugment - baseline brain SSIM per matched (volume, acceleration), volume-major: 4 wins, 1 loss, 1 tie
BRAIN_SSIM_DIFF = [0.02, 0.035, -0.01, 0.015, 0.04, 0.0]
FIGURES = ["train_loss.png", "aug_p.png", "val_ssim.png", "val_psnr.png", "gap.png", "paired_brain.png",
           "recon_panels.png"]
TABLES = ["transfer_table.csv", "transfer_diff.csv", "paired_comparison.csv", "paired_volumes.csv"]


def _metrics(ssim: float) -> Dict[str, float]:
    return {"ssim": ssim, "psnr": 20.0 + 12.345 * ssim, "nmse": 0.31 - 0.29 * ssim}


def _log_eval(tracker: Tracker, split: str, step: int, epoch: int, ssim: float, acquisitions: List[str]) -> None:
    """Overall, per-acceleration, per-acquisition and per-both rows as varnet_ds.eval.metrics.summarize shapes them."""
    keys = [(None, None)] + [(None, a) for a in ACC_OFFSET] + [(q, None) for q in acquisitions]
    keys += [(q, a) for q in acquisitions for a in ACC_OFFSET]
    for acq, acc in keys:
        value = ssim + (ACC_OFFSET[acc] if acc else 0.0) + (ACQ_OFFSET[acq] if acq else 0.0)
        row = {"step": step, "epoch": epoch, "split": split, **_metrics(value), "ssim_2std": 0.05,
               "psnr_2std": 0.5, "nmse_2std": 0.01, "num_volumes": 6 if acc is None else 3}
        if acq is not None:
            row["acquisition"] = acq
        if acc is not None:
            row["acceleration"] = acc
        tracker.log(row)


def _volume_table(tracker: Tracker, split: str, vols, ssim_of) -> None:
    rows = []
    for acc in ACC_OFFSET:
        for fname, acq in vols:
            m = _metrics(ssim_of(fname, acc))
            rows.append([fname, acq, acc, 3, m["ssim"], m["psnr"], m["nmse"]])
    tracker.log_table(f"{split}_per_volume", ["fname", "acquisition", "acceleration", "num_slices", "ssim", "psnr",
                                              "nmse"], rows)


def _base_ssim(fname: str, acc: int) -> float:
    return 0.5 + 0.03 * int(fname[-4]) + ACC_OFFSET[acc]


def _paired_index(fname: str, acc: int) -> int:
    return [f for f, _ in BRAIN_VOLS].index(fname) * 2 + list(ACC_OFFSET).index(acc)


def _write_run(root: Path, name: str) -> Path:
    run_dir = root / name
    aug = name == "mraugment"
    overrides = [f"run.name={name}", f"run.out_dir={run_dir}", f"aug.enabled={str(aug).lower()}",
                 "log.wandb.mode=disabled", f"data.transfer_path={root / 'brain'}",
                 f"eval.every_epochs={1 if aug else 2}"]  # a setting that differs between the runs: flagged
    cfg = load_config("demo", overrides)
    run_dir.mkdir(parents=True)
    save_config(cfg, run_dir / "config.yaml")
    epochs = len(BRAIN_SSIM[name])
    rng = np.random.default_rng(len(name))
    with Tracker(cfg, run_dir, rank=0) as tr:
        tr.log({"step": 0, "epoch": 0, "split": "event", "event": "start"})
        for step in range(1, epochs * STEPS_PER_EPOCH + 1):
            epoch = (step - 1) // STEPS_PER_EPOCH
            row = {"step": step, "epoch": epoch, "split": "train", "loss": 0.9 - 0.03 * step + 0.01 * (step % 2),
                   "lr": 1e-3, "aug_p": 0.25 * (epoch + 1) if aug else 0.0, "samples_per_s": 5.0,
                   "peak_mem_gib": 0.5}
            if aug and step == 3:  # a stale copy of step 3 (e.g. logged before a crash): the later row must win
                tr.log({**row, "loss": 9.9})
            tr.log(row)
            if aug and step == 5:
                tr.log({"step": 5, "epoch": epoch, "split": "event", "event": "preempted"})
                tr.log({"step": 4, "epoch": epoch, "split": "event", "event": "resume"})
            if step % STEPS_PER_EPOCH == 0:
                if not aug:
                    _log_eval(tr, "val_knee", step, epoch, KNEE_SSIM[name][epoch], ["CORPD_FBK"])
                _log_eval(tr, "val_brain", step, epoch, BRAIN_SSIM[name][epoch], ["AXT1", "AXT2"])
                img = rng.random((24, 20))
                tr.log_images(step, epoch, "val_brain", {"reconstruction": img, "target": img, "error": img / 9})
        if aug:
            _volume_table(tr, "val_brain", BRAIN_VOLS + [("file_brain_AXT1_9.h5", "AXT1")],
                          lambda f, a: _base_ssim(f, a) + (BRAIN_SSIM_DIFF[_paired_index(f, a)]
                                                           if f != "file_brain_AXT1_9.h5" else 0.0))
        else:
            _volume_table(tr, "val_brain", BRAIN_VOLS, _base_ssim)
            _volume_table(tr, "val_knee", KNEE_VOLS, lambda f, a: 0.7 + 0.01 * int(f[-4]) + ACC_OFFSET[a])
        tr.log({"step": epochs * STEPS_PER_EPOCH, "epoch": epochs - 1, "split": "event", "event": "end"})
    if aug:
        with open(run_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write('{"step": 9, "epoch": 2, "split": "tra')  # torn last line of a killed writer
    return run_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> List[Path]:
    root = tmp_path_factory.mktemp("runs")
    return [_write_run(root, "baseline"), _write_run(root, "mraugment")]


@pytest.fixture(scope="module")
def report(runs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report")
    with pytest.warns(RuntimeWarning, match="torn last line"):
        md = build_report(runs, out)
    assert md == out / "report.md"
    return md


def _jsonl(path: Path) -> List[dict]:
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return rows


def _md_tables(md: str) -> List[List[List[str]]]:
    """Every Markdown table as a list of rows of cells (header first, separator dropped)."""
    tables, current = [], []
    for line in md.splitlines() + [""]:
        if line.startswith("|"):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            if not all(re.fullmatch(r"-+:?", c) for c in cells):
                current.append(cells)
        elif current:
            tables.append(current)
            current = []
    return tables


def _table_with(md: str, *header_cells: str) -> List[Dict[str, str]]:
    found = [t for t in _md_tables(md) if all(h in t[0] for h in header_cells)]
    return [dict(zip(t[0], row)) for t in found for row in t[1:]]


def _section(md: str, title: str) -> str:
    return md.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_every_figure_and_table_present_and_referenced(report):
    out, md = report.parent, report.read_text()
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert sorted(linked) == sorted(FIGURES)
    for name in FIGURES + TABLES + ["report.html"]:
        assert (out / name).is_file(), name
        assert f"`{name}`" in md, f"{name} not listed in the report"
    for name in FIGURES:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for title in ("What this shows / does not show", "Key results", "Warnings", "Runs", "Training",
                  "Validation curves", "Transfer table", "Paired per-volume comparison", "Reconstructions"):
        assert f"\n## {title}\n" in md
    assert "procedural phantoms" in _section(md, "What this shows / does not show")
    html = (out / "report.html").read_text()
    images = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(images) == len(FIGURES)
    assert sorted(base64.b64decode(i) for i in images) == sorted((out / n).read_bytes() for n in FIGURES)
    assert not re.search(r"(src|href)=\"(?!data:|#)", html), "external resource in report.html"
    assert "<script" not in html and "<link" not in html and "http" not in html.replace("http-equiv", "")
    assert html.count("<table>") == len(_md_tables(md))


def test_report_numbers_equal_metrics_jsonl(report, runs):
    md = report.read_text()
    checked = 0
    for run_dir in runs:
        metrics = [r for r in _jsonl(run_dir / "metrics.jsonl") if r["split"].startswith("val_")]
        for split, caption in (("val_knee", "\n**knee (val_knee)**\n"),
                               ("val_brain", "\n**brain (val_brain, transfer)**\n")):
            table = _md_tables(md.split(caption, 1)[1])[0]  # first table after the split's caption
            rows = [dict(zip(table[0], row)) for row in table[1:]]
            by_key: Dict[tuple, List[dict]] = {}
            for r in metrics:
                if r["split"] == split:
                    by_key.setdefault((r.get("acquisition", "all"), f"x{r['acceleration']}" if "acceleration" in r
                                       else "all"), []).append(r)
            for (acq, acc), evals in by_key.items():
                cell = [c for c in rows if c["run"] == run_dir.name and c["acquisition"] == acq
                        and c["acceleration"] == acc]
                assert len(cell) == 1, (run_dir.name, split, acq, acc)
                cell, final = cell[0], max(evals, key=lambda r: r["step"])
                assert int(cell["final epoch"]) == final["epoch"]
                assert int(cell["volumes"]) == final["num_volumes"]
                for metric, digits, best in (("ssim", 4, max), ("psnr", 2, max), ("nmse", 5, min)):
                    assert float(cell[f"final {metric.upper()}"]) == round(final[metric], digits)
                    value, epoch = re.fullmatch(r"(\S+) \((\d+)\)", cell[f"best {metric.upper()} (epoch)"]).groups()
                    top = best(evals, key=lambda r: r[metric])
                    assert float(value) == round(top[metric], digits) and int(epoch) == top["epoch"]
                checked += 1
    assert checked == 6 + 9 + 9  # knee: 1 acquisition x 2 accelerations; brain: 2 x 2 (baseline, mraugment)
    # differences mraugment - baseline (brain, overall): final, best and at the last common epoch (1)
    diff = [r for r in _table_with(md, "Δ final SSIM") if r["split"] == "val_brain" and r["acquisition"] == "all"
            and r["acceleration"] == "all"]
    assert len(diff) == 1
    a, b = BRAIN_SSIM["baseline"], BRAIN_SSIM["mraugment"]
    assert float(diff[0]["Δ final SSIM"]) == pytest.approx(b[-1] - a[-1], abs=1e-9)
    assert float(diff[0]["Δ best SSIM"]) == pytest.approx(max(b) - max(a), abs=1e-9)
    assert diff[0]["last common epoch"] == "1"
    assert float(diff[0]["Δ SSIM @common"]) == pytest.approx(b[1] - a[1], abs=1e-9)
    assert not [r for r in _table_with(md, "Δ final SSIM") if r["split"] == "val_knee"]


def test_paired_comparison_and_bootstrap(report, runs):
    md, out = report.read_text(), report.parent
    ref = {(v.fname, v.acceleration): v for v in load_run(runs[0]).per_volume["val_brain"]}
    with pytest.warns(RuntimeWarning):
        oth = {(v.fname, v.acceleration): v for v in load_run(runs[1]).per_volume["val_brain"]}
    keys = sorted(set(ref) & set(oth))
    assert len(keys) == 6 and len(oth) == 8
    diffs = np.array([oth[k].ssim - ref[k].ssim for k in keys])
    assert sorted(diffs.round(9)) == sorted(np.round(BRAIN_SSIM_DIFF, 9))
    with open(out / "paired_comparison.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "val_brain" and r["group"] == "all"
                and r["metric"] == "ssim"]
    assert len(rows) == 1
    row = rows[0]
    assert int(row["n"]) == 6
    assert float(row["mean_diff"]) == pytest.approx(diffs.mean(), abs=1e-12)
    assert float(row["ci_low"]) <= float(row["mean_diff"]) <= float(row["ci_high"])
    assert float(row["ci_low"]) < float(row["ci_high"])
    assert (int(row["wins"]), int(row["losses"]), int(row["ties"])) == (4, 1, 1)
    md_row = [r for r in _table_with(md, "95% bootstrap interval") if r["volumes"] == "all" and r["metric"] == "SSIM"]
    assert len(md_row) == 1  # brain only: mraugment has no knee table
    assert float(md_row[0]["mean Δ (mraugment − baseline)"]) == round(diffs.mean(), 4)
    assert md_row[0]["95% bootstrap interval"] == f"[{float(row['ci_low']):+.4f}, {float(row['ci_high']):+.4f}]"
    assert md_row[0]["mraugment better/worse/tied"] == "4/1/1"
    groups = {r["volumes"] for r in _table_with(md, "95% bootstrap interval")}
    assert groups == {"all", "x4", "x8", "AXT1", "AXT2"}
    low, high = bootstrap_mean_ci(diffs, seed=0)
    assert (low, high) == bootstrap_mean_ci(diffs, seed=0) == (float(row["ci_low"]), float(row["ci_high"]))


def test_bootstrap_interval_matches_normal_approximation():
    sample = np.random.default_rng(3).normal(0.01, 0.02, size=60)
    low, high = bootstrap_mean_ci(sample, seed=0)
    half = 1.96 * sample.std(ddof=1) / np.sqrt(sample.size)
    assert low < sample.mean() < high
    assert (high - low) / 2 == pytest.approx(half, rel=0.15)
    assert bootstrap_mean_ci(sample, seed=1) != (low, high)
    assert bootstrap_mean_ci(sample[:1], seed=0) == (sample[0], sample[0])


def test_warnings_flag_missing_split_length_and_bad_rows(report):
    warnings = _section(report.read_text(), "Warnings")
    expected = [
        r"mraugment: no val_knee evaluations \(missing split\)",
        r"runs differ in length: baseline last evaluated at epoch 2 .*mraugment last evaluated at epoch 1",
        r"metrics.jsonl:\d+: skipped a torn last line",
        r"1 duplicated metric row",
        r"val_brain: 2 volume\(s\) only in mraugment.*file_brain_AXT1_9.h5 x4, file_brain_AXT1_9.h5 x8",
        r"val_knee: no per-volume table .* for mraugment",
        r"configs differ .*eval.every_epochs \(baseline: 2, mraugment: 1\)",
        r"logged brain images come from different epochs: baseline epoch 2, mraugment epoch 1",
    ]
    for pattern in expected:
        assert re.search(pattern, warnings), pattern
    runs_table = _table_with(report.read_text(), "status", "events")
    events = {r["run"]: r["events"] for r in runs_table}
    assert events["mraugment"] == "end ×1, preempted ×1, resume ×1, start ×1"
    assert {r["status"] for r in runs_table} == {"finished"}


def test_duplicate_rows_keep_the_last_and_torn_line_is_skipped(runs):
    with pytest.warns(RuntimeWarning, match="torn last line"):
        run = load_run(runs[1])
    train = run.train_rows()
    assert [r["step"] for r in train] == list(range(1, 9))
    assert train[2]["loss"] == pytest.approx(0.9 - 0.09 + 0.01)
    assert [r["event"] for r in run.events()] == ["start", "preempted", "resume", "end"]


def test_deterministic_cli_rerun(report, runs, tmp_path, capsys):
    out = tmp_path / "again"
    with pytest.warns(RuntimeWarning, match="torn last line"):
        assert main([str(p) for p in runs] + ["--out", str(out)]) == 0
    assert "report.md" in capsys.readouterr().out
    for name in ["report.md"] + TABLES:
        assert (out / name).read_text() == (report.parent / name).read_text(), name


def test_recon_panels_from_h5(runs, tmp_path):
    """With recon/*.h5 in every run and reconstruction_rss targets, panels are built from the reconstructions."""
    rng = np.random.default_rng(0)
    brain = Path(load_run(runs[0]).config["data"]["transfer_path"])
    brain.mkdir(exist_ok=True)
    copies = []
    for run_dir in runs:
        copy = tmp_path / run_dir.name
        shutil.copytree(run_dir, copy)
        (copy / "recon").mkdir()
        copies.append(copy)
    for fname, _ in BRAIN_VOLS[:2]:
        target = rng.random((3, 32, 32)).astype(np.float32)
        with h5py.File(brain / fname, "w") as f:
            f["reconstruction_rss"] = target
        for i, copy in enumerate(copies):
            recon = np.pad(target + 0.05 * (i + 1) * rng.standard_normal(target.shape), ((0, 0), (4, 4), (4, 4)))
            with h5py.File(copy / "recon" / fname, "w") as f:
                f["reconstruction"] = recon.astype(np.float32)
    with pytest.warns(RuntimeWarning):
        md = build_report(copies, tmp_path / "out", labels=["A", "B"], note="custom note text").read_text()
    caption = md.split("](recon_panels.png)", 1)[1]
    assert "reconstructed by every run" in caption.split("\n## ")[0]
    assert "custom note text" in _section(md, "What this shows / does not show")
    assert "Knee → brain transfer: A vs B" in md
    img = mpimg.imread(tmp_path / "out" / "recon_panels.png")
    assert img.shape[1] > img.shape[0]  # one row per volume, 1 + 2 * runs columns


def test_missing_inputs_fail_with_clear_errors(runs, tmp_path, capsys):
    missing = tmp_path / "nope"
    assert main([str(runs[0]), str(missing), "--out", str(tmp_path / "o")]) == 2
    assert f"run folder not found: {missing}" in capsys.readouterr().err
    empty = tmp_path / "empty_run"
    empty.mkdir()
    assert main([str(empty), "--out", str(tmp_path / "o")]) == 2
    assert f"no metrics.jsonl in run folder {empty}" in capsys.readouterr().err
    assert main([str(runs[0]), "--out", str(tmp_path / "o"), "--labels", "a", "b"]) == 2
    assert "--labels has 2 value(s) for 1 run(s)" in capsys.readouterr().err
    # script mode (python analysis/compare.py) must find its package and exit non-zero on bad input
    proc = subprocess.run([sys.executable, str(REPO / "analysis" / "compare.py"), str(missing), "--out",
                           str(tmp_path / "o")], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2 and f"run folder not found: {missing}" in proc.stderr


class _FakeFile:
    def __init__(self, path: str, content: str) -> None:
        self.path, self.content = path, content

    def download(self, root: str, replace: bool = False) -> None:
        target = Path(root) / self.path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(self.content)


class _FakeRun:
    """What analysis.wandb_source uses of wandb.apis.public.Run, fed with what Tracker would have logged."""

    def __init__(self, run_dir: Path, wrapped_config: bool = False) -> None:
        self.name = run_dir.name + "-wandb-name"
        self.config = {"run": {"name": run_dir.name}}
        if wrapped_config:  # the raw form some W&B versions return
            self.config = {"_wandb": {"value": {"t": 1}}, "run": {"value": {"name": run_dir.name}, "desc": None}}
        self.history: List[dict] = [{"_step": 0, "_runtime": 1.0}]
        for row in _jsonl(run_dir / "metrics.jsonl"):
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


def _chromium() -> str:
    """Path of Debian's chromium; installed with apt-get (as root) when missing, failing loudly otherwise."""
    exe = Path("/usr/bin/chromium")
    if exe.is_file():
        return str(exe)
    if os.geteuid() != 0:
        pytest.fail("/usr/bin/chromium is missing and the test is not root: run `apt-get install -y chromium`")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    log = []
    for cmd in (["apt-get", "install", "-y", "chromium"], ["apt-get", "update"],
                ["apt-get", "install", "-y", "chromium"]):
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1200)
        log.append(f"$ {' '.join(cmd)} -> {proc.returncode}\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
        if cmd[1] == "install" and proc.returncode == 0 and exe.is_file():
            return str(exe)
    pytest.fail("could not install chromium with apt-get:\n" + "\n".join(log))


def test_report_html_renders_in_headless_chromium(report, tmp_path):
    shot = tmp_path / "report.png"
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1280,2000",
           report.with_suffix(".html").resolve().as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, f"chromium failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
    assert shot.is_file(), f"no screenshot written:\n{proc.stderr[-3000:]}"
    img = mpimg.imread(shot)[..., :3]
    assert img.shape[:2] == (2000, 1280)
    assert float(img.std()) > 0.05, "blank screenshot"
    dark = (img.max(axis=-1) < 0.35).mean()
    assert dark > 0.002, "no text rendered"
    # the report's accent colour (#1f77b4: title rule, links, curves) proves our page rendered, not an error page
    accent = (np.abs(img - np.array([0x1F, 0x77, 0xB4]) / 255.0).max(axis=-1) < 0.06).mean()
    assert accent > 0.0005, f"report styling not visible (accent fraction {accent:.5f})"

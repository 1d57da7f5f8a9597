"""Tests of varnet-ds report (varnet_ds/analysis/compare/; script: analysis/compare.py): the knee->brain comparison
report built from two synthetic run folders.

The run folders come from ``tests/compare_runs.py`` (the trainer's own writers). W&B history and the HTML
rendering: ``tests/test_compare_sources.py``.
"""

from __future__ import annotations

import base64
import csv
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
import scipy.stats
from compare_runs import (
    BRAIN_SSIM,
    BRAIN_SSIM_DIFF,
    BRAIN_VOLS,
    FIGURES,
    TABLES,
    make_report,
    make_runs,
    read_jsonl,
)

from varnet_ds.analysis.compare.report import build_report, main
from varnet_ds.analysis.runs import load_run
from varnet_ds.analysis.stats import RNG_KW, mean_ci

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> List[Path]:
    return make_runs(tmp_path_factory.mktemp("runs"))


@pytest.fixture(scope="module")
def report(runs, tmp_path_factory) -> Path:
    return make_report(runs, tmp_path_factory.mktemp("report"))




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


def test_report_numbers_equal_metricsread_jsonl(report, runs):
    md = report.read_text()
    checked = 0
    for run_dir in runs:
        metrics = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r["split"].startswith("val_")]
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
    low, high = mean_ci(diffs, seed=0)
    assert (low, high) == mean_ci(diffs, seed=0) == (float(row["ci_low"]), float(row["ci_high"]))
    # the one statistics method of the reports: scipy's percentile bootstrap, as the study's contrasts use it
    ref = scipy.stats.bootstrap((diffs,), np.mean, method="percentile", confidence_level=0.95, n_resamples=10_000,
                                **{RNG_KW: np.random.default_rng(0)}).confidence_interval
    assert (low, high) == (ref.low, ref.high)


def test_bootstrap_interval_matches_normal_approximation():
    sample = np.random.default_rng(3).normal(0.01, 0.02, size=60)
    low, high = mean_ci(sample, seed=0)
    half = 1.96 * sample.std(ddof=1) / np.sqrt(sample.size)
    assert low < sample.mean() < high
    assert (high - low) / 2 == pytest.approx(half, rel=0.15)
    assert mean_ci(sample, seed=1) != (low, high)
    assert mean_ci(sample[:1], seed=0) == (sample[0], sample[0])
    assert mean_ci(np.full(5, 0.25), seed=0) == (0.25, 0.25)  # nothing varies: no interval to resample


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

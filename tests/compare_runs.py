"""Two synthetic run folders for the tests of varnet-ds report, written with the trainer's own writers
(``varnet_ds.config.save_config`` and ``varnet_ds.tracking.tracker.Tracker`` with W&B disabled), so the report is
tested against the real file format. ``write_run(root, "baseline")``: 3 epochs, knee and brain evaluations, both
per-volume tables. ``write_run(root, "mraugment")``: 2 epochs, aug_p > 0, no knee evaluations or knee table (missing
split), a preemption/resume, a duplicated train row, an extra unmatched brain volume, a different eval setting and
a torn last line -- all of which must be flagged.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest

from varnet_ds.config import load_config, save_config
from varnet_ds.tracking.tracker import Tracker

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


def write_run(root: Path, name: str) -> Path:
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


def read_jsonl(path: Path) -> List[dict]:
    """Rows of a metrics.jsonl; the torn last line is skipped."""
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return rows


def make_runs(root: Path) -> List[Path]:
    """The two run folders under ``root``: baseline, mraugment."""
    return [write_run(root, "baseline"), write_run(root, "mraugment")]


def make_report(runs: List[Path], out: Path) -> Path:
    """``varnet_ds.analysis.compare.report.build_report`` of ``runs`` into ``out`` (the mraugment run's torn line
    warns)."""
    from varnet_ds.analysis.compare.report import build_report

    with pytest.warns(RuntimeWarning, match="torn last line"):
        md = build_report(runs, out)
    assert md == out / "report.md"
    return md

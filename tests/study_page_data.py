"""A demo-like study folder for the study report tests, written without training.

``write_rich_study(root)`` extends ``test_study_stats.write_study`` (the study layout, per-volume tables with
known values) with what a real run also leaves: start events holding a provenance block, training losses per
step, overall evaluations at 4 epochs (selection picks an earlier one for some seeds), reconstructions
``recon/*.h5`` + ``recon/metrics.json`` for the first seed of each arm, and the brain targets they are shown
against.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import h5py
import numpy as np
import yaml
from test_study_stats import write_study

BRAIN = [(f"file_brain_{acq}_{i}.h5", acq) for i, acq in enumerate(["AXFLAIR", "AXFLAIR", "AXT1", "AXT1",
                                                                    "AXT1POST", "AXT1POST", "AXT2", "AXT2"])]
SEEDS = (1, 2, 3)
EVAL_EPOCHS = (2, 4, 6, 8)
STEPS_PER_EPOCH = 6
SELECTED_EPOCH = {1: 6, 2: 8, 3: 4}  # seeds 1 and 3 select an evaluation before the last
PROVENANCE = {"varnet_ds": "0.2.0", "git": {"commit": "b" * 40, "dirty": False}, "python": "3.11.7",
              "libraries": {"torch": "2.5.1", "numpy": "2.1.0", "scipy": "1.14.1"}, "cpu": "Test CPU", "gpu": None,
              "world_size": 1, "threads_per_rank": 1,
              "data": {"train_path": {"path": "/data/knee", "files": 10, "bytes": 1000, "sha256": "1" * 64},
                       "val_path": {"path": "/data/knee_val", "files": 10, "bytes": 900, "sha256": "2" * 64},
                       "transfer_path": {"path": "brain", "files": 8, "bytes": 800, "sha256": "3" * 64}}}


def _rows(arm: str, seed: int) -> list:
    """metrics.jsonl rows: start (with provenance), train losses, overall + breakdown evaluations, end."""
    rng = np.random.default_rng(seed * 10 + len(arm))
    rows = [{"step": 0, "epoch": 0, "split": "event", "event": "start", "world_size": 1, "parameters": 12345,
             "zero_stage": 2, "offload_optimizer": "none", "device": "cpu (Test CPU)", "date": "2026-12-04",
             "provenance": copy.deepcopy(PROVENANCE)}]
    shift = 0.01 if arm == "mraugment" else 0.0
    for epoch in range(1, max(EVAL_EPOCHS) + 1):
        for k in range(STEPS_PER_EPOCH):
            step = (epoch - 1) * STEPS_PER_EPOCH + k + 1
            loss = 0.6 * np.exp(-step / 20) + 0.2 + shift + 0.03 * rng.standard_normal()
            rows.append({"step": step, "epoch": epoch, "split": "train", "loss": float(loss), "lr": 1e-3})
        if epoch in EVAL_EPOCHS:
            step = epoch * STEPS_PER_EPOCH
            knee = 0.70 + 0.02 * np.log(epoch) + 0.005 * seed - 0.01 * (epoch == 8 and seed != 2) + shift / 2
            brain = 0.60 + 0.015 * np.log(epoch) + 0.004 * seed - 2 * shift
            for split, ssim in (("val_knee", knee), ("val_brain", brain)):
                row = {"step": step, "epoch": epoch, "split": split, "ssim": float(ssim), "psnr": float(20 + 10 * ssim),
                       "nmse": float(0.3 - 0.2 * ssim)}
                rows += [row, {**row, "acceleration": 4, "ssim": float(ssim + 0.01)}]
    rows.append({"step": max(EVAL_EPOCHS) * STEPS_PER_EPOCH, "epoch": max(EVAL_EPOCHS), "split": "event",
                 "event": "end"})
    return rows


def write_recon(root: Path, brain_dir: Path) -> None:
    """Brain targets in ``brain_dir`` and each first-seed run's reconstructions of them (noisier for mraugment)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[-1:1:40j, -1:1:32j]
    brain_dir.mkdir(parents=True, exist_ok=True)
    for v, (fname, _) in enumerate(BRAIN):
        target = np.stack([np.clip(1.0 - (xx / 0.8) ** 2 - (yy / (0.9 - 0.1 * s)) ** 2, 0, None) * (1 + 0.1 * v)
                           for s in range(4)]).astype(np.float32)
        with h5py.File(brain_dir / fname, "w") as f:
            f["reconstruction_rss"] = target
        for arm, noise in (("baseline", 0.03), ("mraugment", 0.06)):
            out = root / f"{arm}-s{SEEDS[0]}" / "recon"
            out.mkdir(exist_ok=True)
            with h5py.File(out / fname, "w") as f:
                f["reconstruction"] = (target + noise * rng.standard_normal(target.shape)).astype(np.float32)
    for arm in ("baseline", "mraugment"):
        settings = {"checkpoint": str(root / f"{arm}-s1" / "model_fp32.pt"), "checkpoint_step": 48,
                    "mask_type": "equispaced", "acceleration": 4, "center_fraction": 0.08}
        (root / f"{arm}-s1" / "recon" / "metrics.json").write_text(json.dumps({"settings": settings}))


def write_rich_study(root: Path) -> Path:
    """The study folder ``root`` (3 seeds x baseline/mraugment, 8 brain volumes over 4 acquisitions)."""
    write_study(root, seeds=SEEDS, brain=BRAIN)
    brain_dir = root.parent / f"{root.name}-brain"
    for arm in ("baseline", "mraugment"):
        for seed in SEEDS:
            folder = root / f"{arm}-s{seed}"
            (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _rows(arm, seed)))
            cfg = yaml.safe_load((folder / "config.yaml").read_text())
            cfg["data"]["transfer_path"] = str(brain_dir)
            (folder / "config.yaml").write_text(yaml.safe_dump(cfg))
            epoch = SELECTED_EPOCH[seed]
            (folder / "selected.json").write_text(json.dumps({"step": epoch * STEPS_PER_EPOCH, "epoch": epoch,
                                                              "criterion": "val_knee/ssim", "value": 0.74}))
    write_recon(root, brain_dir)
    return root

"""Model selection by knee validation SSIM (never by the transfer set), kept consistent with checkpoints.

After every evaluation the engine hands the results to :class:`ModelSelector`. When knee val SSIM improves,
rank 0 writes a *candidate*: ``RUN/selected/step{N:09d}.pt`` (consolidated fp32 weights, the same payload as
``model_fp32.pt``) and ``step{N:09d}.json`` (the criterion and the per-volume results of every split scored with
those weights). The best candidate is *committed* by the next checkpoint (it is part of the client state); at a
resume every uncommitted candidate belongs to a timeline that was lost and is deleted. At the end of the run
the committed best becomes::

    model_selected.pt                      fp32 weights of the selected evaluation (loads like model_fp32.pt)
    selected.json                          {"step", "epoch", "criterion", "value", "metrics": {split: {ssim, ...}}}
    val_knee_per_volume_selected.csv       per-volume results of the selected weights (columns as the final
    val_brain_per_volume_selected.csv      val_*_per_volume.csv)

The brain (transfer) set is scored with the selected weights at the evaluation that selected them, so the
"selected" transfer numbers need no extra pass.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch

from varnet_ds.files import atomic_path, atomic_write_json
from varnet_ds.run_folder import VOLUME_COLUMNS, VolumeRow

CRITERION_SPLIT = "val_knee"
CRITERION_METRIC = "ssim"
CRITERION = f"{CRITERION_SPLIT}/{CRITERION_METRIC}"


def volume_table_rows(volumes: Sequence[VolumeRow]) -> List[List[Any]]:
    """Rows of a ``{split}_per_volume*.csv`` table in :data:`VOLUME_COLUMNS` order."""
    return [[v.fname, v.acquisition, v.acceleration, v.num_slices, v.ssim, v.psnr, v.nmse] for v in volumes]


class ModelSelector:
    """Tracks the best evaluation by knee val SSIM and keeps its weights (rank 0 writes, every rank may call).

    Args:
        run_dir: the run folder.
        is_main: whether this process writes files (rank 0).
    """

    def __init__(self, run_dir: Path, is_main: bool) -> None:
        self.run_dir = Path(run_dir)
        self.dir = self.run_dir / "selected"
        self.is_main = is_main
        self.best: Optional[Dict[str, Any]] = None  # {"step", "epoch", "criterion", "value"}

    # ------------------------------------------------------------------ state (client_state of checkpoints)
    def state_dict(self) -> Optional[Dict[str, Any]]:
        return dict(self.best) if self.best else None

    def restore(self, state: Optional[Mapping[str, Any]]) -> None:
        """Adopt the committed best of a checkpoint (``None``: fresh start) and drop uncommitted candidates."""
        self.best = dict(state) if state else None
        if not self.is_main or not self.dir.is_dir():
            return
        keep = _stem(self.best["step"]) if self.best else None
        for path in self.dir.iterdir():
            if path.name.split(".")[0] != keep:
                path.unlink(missing_ok=True)

    # ------------------------------------------------------------------ training-time calls
    def update(self, step: int, epoch: int, outputs: Mapping[str, Any], module: torch.nn.Module,
               config: Dict[str, Any]) -> bool:
        """Consider one evaluation; returns True when it is the new best (a candidate was written on rank 0).

        Args:
            step, epoch: counters of the evaluation.
            outputs: ``{split: EvalOutput}`` of :func:`varnet_ds.eval.validate.evaluate_split`.
            module: the model (``engine.module``), whose weights the candidate stores.
            config: the resolved config as a dict (stored with the weights).
        """
        knee = outputs.get(CRITERION_SPLIT)
        if knee is None or not knee.rows:
            return False
        value = float(knee.rows[0][CRITERION_METRIC])  # the overall row comes first (metrics.summarize)
        if value != value or (self.best is not None and value <= self.best["value"]):
            return False
        self.best = {"step": int(step), "epoch": int(epoch), "criterion": CRITERION, "value": value,
                     "metrics": {split: {m: float(out.rows[0][m]) for m in ("ssim", "psnr", "nmse")}
                                 for split, out in outputs.items() if out.rows}}
        if self.is_main:
            self.dir.mkdir(parents=True, exist_ok=True)
            stem = _stem(step)
            with atomic_path(self.dir / f"{stem}.pt") as tmp:
                torch.save(fp32_payload(module, step, epoch, config), tmp)
            volumes = {split: volume_table_rows(out.volumes) for split, out in outputs.items()}
            atomic_write_json(self.dir / f"{stem}.json", {**self.best, "volumes": volumes})
        return True

    def prune(self) -> None:
        """After a checkpoint committed :attr:`best`: delete every other candidate (rank 0)."""
        self.restore(self.best)

    def finalize(self) -> Optional[Dict[str, Any]]:
        """Publish the selected weights and tables (rank 0); returns the selection or ``None`` without one."""
        if self.best is None or not self.is_main:
            return self.best
        stem = _stem(self.best["step"])
        candidate = json.loads((self.dir / f"{stem}.json").read_text(encoding="utf-8"))
        with atomic_path(self.run_dir / "model_selected.pt") as tmp:
            try:
                os.link(self.dir / f"{stem}.pt", tmp)  # no copy of a 120 MB file where hard links work
            except OSError:
                shutil.copyfile(self.dir / f"{stem}.pt", tmp)
        for split, rows in candidate["volumes"].items():
            with atomic_path(self.run_dir / f"{split}_per_volume_selected.csv") as tmp:
                with open(tmp, "w", newline="", encoding="utf-8") as fh:
                    writer = csv.writer(fh)
                    writer.writerow(VOLUME_COLUMNS)
                    writer.writerows(rows)
        atomic_write_json(self.run_dir / "selected.json", self.best)
        return self.best


def fp32_payload(module: torch.nn.Module, step: int, epoch: int, config: Dict[str, Any]) -> Dict[str, Any]:
    """Consolidated fp32 weights with the config: the format of ``model_fp32.pt`` and ``model_selected.pt``."""
    state = {k: v.detach().float().cpu() for k, v in module.state_dict().items()}
    return {"state_dict": state, "model": config["model"], "global_step": int(step), "epoch": int(epoch),
            "config": config}


def _stem(step: int) -> str:
    return f"step{int(step):09d}"

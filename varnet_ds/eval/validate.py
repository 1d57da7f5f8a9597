"""Validation loops: knee val and brain transfer sets, each volume whole on one rank, per-acceleration passes.

Each split is evaluated once per (centre fraction, acceleration) pair from ``eval.*`` with masks fixed per
volume (seeded from the file name, as fastMRI does), so every volume is scored at every acceleration and the
per-acceleration breakdown compares like with like.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import fastmri
import numpy as np
import torch
from fastmri.data.transforms import center_crop, complex_center_crop

from varnet_ds.data.datasets import build_eval_dataset, volume_table
from varnet_ds.data.samplers import DistributedVolumeSampler, build_loader
from varnet_ds.distributed import DistInfo
from varnet_ds.eval.metrics import VolumeAccumulator, gather, summarize
from varnet_ds.model.step import crop_pair, model_inputs
from varnet_ds.run_folder import VolumeRow


@dataclass
class EvalSplit:
    """One evaluation set: a folder, its mask type and the (cf, acc) pairs to score it at."""

    name: str  # val_knee | val_brain
    path: str
    mask_type: str
    pairs: Sequence[Tuple[float, int]]
    max_volumes: Optional[int] = None
    skip_files: Sequence[str] = field(default_factory=tuple)


@dataclass
class EvalOutput:
    """What one split's evaluation produced (identical on every rank)."""

    rows: List[dict]
    volumes: List[VolumeRow]
    panels: Optional[Dict[str, np.ndarray]] = None  # zero_filled / reconstruction / target / error (rank 0)


def zero_filled(masked_kspace: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """RSS of the zero-filled IFFT of ``[B, C, H, W, 2]`` k-space, centre-cropped to ``size`` -> ``[B, h, w]``."""
    image = fastmri.ifft2c(masked_kspace.float())
    image = complex_center_crop(image, (min(size[0], image.shape[-3]), min(size[1], image.shape[-2])))
    return fastmri.rss(fastmri.complex_abs(image), dim=1)


@torch.no_grad()
def evaluate_split(model: torch.nn.Module, split: EvalSplit, dist: DistInfo, num_workers: int, seed: int,
                   cache: Optional[Dict] = None, stop: Optional[Callable[[], bool]] = None) -> Optional[EvalOutput]:
    """Score ``model`` on one split at every (cf, acc) pair; all ranks must call it.

    Args:
        cache: optional dict reused across calls to keep the indexed datasets (masks are fixed per volume, so a
            dataset is reusable).
        stop: called before every batch on every rank (every rank has as many batches, the sampler pads them), so
            it may be a collective; when it returns True the evaluation is abandoned and None returned.

    Returns:
        Summary rows (overall / per acquisition / per acceleration, see ``varnet_ds.eval.metrics.summarize``),
        per-volume results, and image panels of a fixed slice (rank 0's first volume by name, middle slice, first
        pair); None when ``stop`` abandoned it.
    """
    was_training = model.training
    model.eval()
    results: List[VolumeRow] = []
    panels = None
    for pair_index, (cf, acc) in enumerate(split.pairs):
        key = (split.path, split.mask_type, cf, acc, split.max_volumes, tuple(split.skip_files))
        dataset = (cache or {}).get(key)
        if dataset is None:  # built once per run: indexing a large brain folder reads every header
            dataset = build_eval_dataset(split.path, split.mask_type, cf, acc, max_volumes=split.max_volumes,
                                         skip_files=split.skip_files)
            if cache is not None:
                cache[key] = dataset
        table = volume_table(dataset)
        sampler = DistributedVolumeSampler(dataset, num_replicas=dist.world_size, rank=dist.rank)
        loader = build_loader(dataset, sampler, num_workers=num_workers, base_seed=seed, rank=dist.rank, epoch=0,
                              kind="eval")
        acc_state = VolumeAccumulator(owned=sampler.owned_volumes)
        owned = {k: v for k, v in table.items() if k in sampler.owned_volumes}
        panel_key = _panel_key(owned) if (pair_index == 0 and dist.is_main) else None
        for batch in loader:
            if stop is not None and stop():
                if was_training:
                    model.train()
                return None
            masked_kspace, mask, nlf = model_inputs(batch, dist.device)
            output = model(masked_kspace, mask, nlf)
            output, target = crop_pair(output, batch.target.to(dist.device))
            for i in range(output.shape[0]):
                fname, slice_num = batch.fname[i], int(batch.slice_num[i])
                info = table.get(fname, {})
                acc_state.add(fname, slice_num, output[i].float().cpu(), target[i].float().cpu(),
                              float(batch.max_value[i]), str(info.get("acquisition", "unknown")), int(acc))
                if panel_key == (fname, slice_num):
                    panels = _panels(masked_kspace[i : i + 1], output[i], target[i])
                    panel_key = None
        results.extend(gather(acc_state.compute_local()))
    if was_training:
        model.train()
    return EvalOutput(rows=summarize(results), volumes=results, panels=panels)


def _panel_key(table: Dict[str, dict]) -> Optional[Tuple[str, int]]:
    if not table:
        return None
    fname = sorted(table)[0]
    return fname, int(table[fname].get("num_slices", 1)) // 2


def _panels(masked_kspace: torch.Tensor, output: torch.Tensor, target: torch.Tensor) -> Dict[str, np.ndarray]:
    size = tuple(target.shape[-2:])
    zf = center_crop(zero_filled(masked_kspace, size)[0], size)
    recon, tgt = output.float().cpu().numpy(), target.float().cpu().numpy()
    return {
        "zero_filled": zf.float().cpu().numpy(),
        "reconstruction": recon,
        "target": tgt,
        "error": np.abs(recon - tgt),
    }


class Validator:
    """The knee val and brain transfer evaluations of one run: which splits, when they are due, the indexed
    datasets (built once) and the last result. It returns values; logging them is the caller's job.

    Args:
        cfg: the run's config (``data.*_path``, ``eval.*``, ``data.max_val_volumes``, ``data.num_workers``).
        dist: this process's placement.
        skip_files: bad files found by the start-up check.
    """

    def __init__(self, cfg: Any, dist: DistInfo, skip_files: Sequence[str] = ()) -> None:
        self.cfg, self.dist = cfg, dist
        pairs = list(zip(cfg.eval.center_fractions, cfg.eval.accelerations))
        self.splits: List[EvalSplit] = [
            EvalSplit(name, path, mask_type, pairs, cfg.data.max_val_volumes, list(skip_files))
            for name, path, mask_type in (("val_knee", cfg.data.val_path, cfg.eval.knee_mask_type),
                                          ("val_brain", cfg.data.transfer_path, cfg.eval.brain_mask_type))
            if path]
        self._datasets: Dict = {}
        self.last: Dict[str, EvalOutput] = {}
        self.last_step = -1

    def state_dict(self) -> Optional[Dict[str, Any]]:
        """The last evaluation as plain values (checkpoint ``client_state``): its step and per-volume results.

        A checkpoint thus commits the evaluation it follows: a resumed run neither scores those weights again nor
        needs them to write the final per-volume tables.
        """
        if not self.last:
            return None
        return {"step": self.last_step,
                "volumes": {name: [list(v) for v in out.volumes] for name, out in self.last.items()}}

    def restore(self, state: Optional[Dict[str, Any]]) -> None:
        """Adopt a checkpoint's last evaluation (summary rows recomputed from its volumes; no image panels)."""
        if not state:
            return
        self.last = {name: EvalOutput(rows=summarize(vols), volumes=vols)
                     for name, rows in state["volumes"].items()
                     for vols in ([VolumeRow(*r) for r in rows],)}
        self.last_step = int(state["step"])

    def due_after_epoch(self, epoch: int) -> bool:
        """After finishing epoch ``epoch`` (1-based count of finished epochs): every ``eval.every_epochs`` and last."""
        return epoch % self.cfg.eval.every_epochs == 0 or epoch == self.cfg.train.epochs

    def due_at_step(self, step: int) -> bool:
        return bool(self.cfg.eval.every_steps) and step % self.cfg.eval.every_steps == 0

    def evaluated_at(self, step: int) -> bool:
        return self.last_step == step and bool(self.last)

    def run(self, model: torch.nn.Module, step: int, stop: Optional[Callable[[], bool]] = None,
            on_split: Optional[Callable[[EvalSplit], None]] = None) -> Optional[Dict[str, EvalOutput]]:
        """Evaluate every split (all ranks call it); None when ``stop`` abandoned the evaluation.

        ``on_split`` is told when each split starts (console output).
        """
        outputs: Dict[str, EvalOutput] = {}
        for split in self.splits:
            if on_split is not None:
                on_split(split)
            out = evaluate_split(model, split, self.dist, self.cfg.data.num_workers, self.cfg.run.seed,
                                 cache=self._datasets, stop=stop)
            if out is None:
                return None
            outputs[split.name] = out
        self.last, self.last_step = outputs, step
        return outputs

"""Elastic resume: continue a run on another number of ranks through a DeepSpeed universal checkpoint.

ZeRO-1/2 checkpoints hold the optimizer state partitioned per rank, so DeepSpeed cannot load them on another world
size. When the latest complete checkpoint (its ``COMPLETE`` marker records the world size) was written by another
number of ranks, rank 0 converts it once with ``python -m deepspeed.checkpoint.ds_to_universal`` into
``RUN/checkpoints/TAG.universal`` (written under ``TAG.universal.tmp/``, given its own ``COMPLETE`` and renamed, so an
interrupted conversion leaves the original untouched and is redone), and every rank loads it with
``checkpoint.load_universal`` (set in the DeepSpeed config before ``deepspeed.initialize``). Model, fp32 master
weights, Adam's step and moments come back exactly; StepLR, epoch and step counters come from the client state.
With ZeRO stage 0 (``ds_configs/zero0.json``) nothing is partitioned and the checkpoint loads as it is.

What carries over and what cannot:

- **Global batch.** ``data.batch_size x train.grad_accum x world size`` of the run's start is kept: on ``W`` ranks
  the micro-batches per optimizer step become ``global / (data.batch_size x W)``; a ``W`` that does not divide it
  is refused (:class:`~varnet_ds.trainer.checkpoint.CheckpointError`, exit code 2).
- **Data position.** Checkpoints store the samples of the epoch's global order already trained
  (``samples_in_epoch``; older checkpoints: ``batch_in_epoch x data.batch_size x world size``). The resumed run
  skips exactly those and splits the rest across its ranks (:class:`varnet_ds.data.loader.SkipSampler`).
- **Random numbers.** Masks and MRAugment draws are seeded per sample from (run.seed, epoch, file, slice), so they
  carry over. The per-rank Python/NumPy/torch streams cannot (there is no "rank 3 of 2"): after a world-size
  change every rank seeds them from (run.seed, global step, rank)
  (:func:`varnet_ds.seeding.reseed_after_world_size_change`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from omegaconf import DictConfig

from varnet_ds.distributed import DistInfo, broadcast_object
from varnet_ds.trainer import checkpoint as ckpt


@dataclass(frozen=True)
class ResumePlan:
    """What the resume of ``tag`` needs, decided on every rank before the DeepSpeed engine exists."""

    tag: str
    from_world_size: int
    to_world_size: int
    global_batch: int  # samples per optimizer step, kept from the run's start
    grad_accum: int  # micro-batches per optimizer step on this world size
    universal: bool  # load TAG.universal with checkpoint.load_universal (ZeRO-1/2 on another world size)

    @property
    def changed(self) -> bool:
        """Whether the world size differs from the checkpoint's."""
        return self.from_world_size != self.to_world_size

    @property
    def load_tag(self) -> str:
        return ckpt.universal_tag(self.tag) if self.universal else self.tag

    def event_row(self, step: int, epoch: int, samples_in_epoch: int) -> Dict[str, Any]:
        """The ``event: elastic_resume`` row of ``metrics.jsonl``."""
        return {"step": step, "epoch": epoch, "split": "event", "event": "elastic_resume",
                "from_world_size": self.from_world_size, "to_world_size": self.to_world_size, "tag": self.tag,
                "global_batch": self.global_batch, "grad_accum": self.grad_accum,
                "samples_in_epoch": samples_in_epoch}


def plan_resume(cfg: DictConfig, root: Path, dist: DistInfo, ds_cfg: Dict[str, Any]) -> Optional[ResumePlan]:
    """Decide how to resume from ``root``'s latest checkpoint; every rank calls it before ``deepspeed.initialize``.

    Sets ``gradient_accumulation_steps`` / ``train_batch_size`` of ``ds_cfg`` so the global batch of the run's
    start is kept, and ``checkpoint.load_universal`` when the checkpoint was written by another world size (then
    rank 0 converts it, once, while the other ranks wait).

    Returns:
        ``None`` when there is nothing to resume (``train.resume=false`` or no complete checkpoint).

    Raises:
        CheckpointError: another world size with ``train.elastic=false``, a global batch this world size cannot
            keep, or a failed conversion; the message names the numbers and the way out.
    """
    if not cfg.train.resume:
        return None
    found = _on_main(dist, lambda: _latest_with_meta(Path(root)))
    if found is None:
        return None
    tag, meta = found
    old_ws, new_ws, batch = int(meta["world_size"]), dist.world_size, int(cfg.data.batch_size)
    if old_ws != new_ws and not cfg.train.elastic:
        ckpt.check_world_size(root, tag, new_ws)  # today's refusal, with the way out
    global_batch = int(meta.get("global_batch") or batch * int(cfg.train.grad_accum) * old_ws)
    grad_accum = _grad_accum(global_batch, batch, new_ws, Path(root) / tag)
    partitioned = int(ds_cfg.get("zero_optimization", {}).get("stage", 0)) > 0  # stage 0: any world size loads
    plan = ResumePlan(tag=tag, from_world_size=old_ws, to_world_size=new_ws, global_batch=global_batch,
                      grad_accum=grad_accum, universal=old_ws != new_ws and partitioned)
    ds_cfg["gradient_accumulation_steps"] = grad_accum
    ds_cfg["train_batch_size"] = global_batch
    if plan.universal:
        ds_cfg["checkpoint"] = {**ds_cfg.get("checkpoint", {}), "load_universal": True}
        took = _on_main(dist, lambda: ensure_universal(Path(root), tag, meta))
        when = f"converted in {took:.1f} s" if took is not None else "converted earlier"
        how = f"its universal checkpoint {plan.load_tag} ({when})"
    else:
        how = "it as is (ZeRO stage 0: optimizer states are not partitioned)"
    if plan.changed and dist.is_main:
        print(f"[varnet_ds] elastic resume: {Path(root) / tag} was written by {_ranks(old_ws)}, this job has "
              f"{new_ws}; loading {how}; global batch {global_batch} kept = data.batch_size {batch} x "
              f"{grad_accum} micro-batches x {_ranks(new_ws)}", flush=True)
    return plan


def _ranks(n: int) -> str:
    return f"{n} rank" if n == 1 else f"{n} ranks"


def _on_main(dist: DistInfo, fn):
    """Run ``fn`` on rank 0 and hand its result (or its exception, raised on every rank) to all ranks."""
    result: Any = None
    if dist.is_main:
        try:
            result = fn()
        except Exception as err:  # every rank must learn about it, or the others wait forever
            result = err if isinstance(err, ckpt.CheckpointError) else ckpt.CheckpointError(
                f"{type(err).__name__}: {err}")
    result = broadcast_object(result)
    if isinstance(result, Exception):
        raise result
    return result


def _latest_with_meta(root: Path) -> Optional[Tuple[str, Dict[str, Any]]]:
    tag = ckpt.find_latest(root)
    return (tag, ckpt.read_meta(root, tag)) if tag else None


def _grad_accum(global_batch: int, batch_size: int, world_size: int, where: Path) -> int:
    per_micro_step = batch_size * world_size
    if global_batch % per_micro_step:
        fits = [w for w in range(1, global_batch // batch_size + 1) if global_batch % (batch_size * w) == 0]
        way = (f"Resume on {' or '.join(map(str, fits[:-1]))}{' or ' if fits[1:] else ''}{_ranks(fits[-1])} "
               "(they keep it)" if fits else
               f"No rank count keeps it with data.batch_size {batch_size}: use a data.batch_size dividing "
               f"{global_batch}")
        raise ckpt.CheckpointError(
            f"checkpoint {where}: the run trains with a global batch of {global_batch} samples per optimizer step "
            f"(data.batch_size x train.grad_accum x world size at its start); this job's {_ranks(world_size)} x "
            f"data.batch_size {batch_size} = {per_micro_step} samples per micro-step do not divide {global_batch}, "
            f"so the global batch cannot be kept. {way}, or start a new run from the weights only "
            f"(train.init_weights={where.parent.parent / 'model_fp32.pt'} or the output of checkpoints/zero_to_fp32.py)"
        )
    return global_batch // per_micro_step


def ensure_universal(root: Path, tag: str, meta: Dict[str, Any]) -> Optional[float]:
    """Convert ``root/tag`` into ``root/TAG.universal`` unless a complete conversion of this very checkpoint exists.

    The conversion is written under ``TAG.universal.tmp/``, gets its own ``COMPLETE`` (naming the source and its
    ``COMPLETE`` metadata) and is then renamed into place; ``root/tag`` is only read. Leftovers of an interrupted
    conversion, or a conversion of an earlier checkpoint of the same step, are removed and redone.

    Returns:
        Seconds the conversion took, or ``None`` when an existing one was reused.
    """
    target = root / ckpt.universal_tag(tag)
    if _converted_from(target) == meta:
        return None
    t0 = time.perf_counter()
    shutil.rmtree(target, ignore_errors=True)  # unfinished, or converted from an earlier save of this step
    work = root / f"{ckpt.universal_tag(tag)}.tmp"
    shutil.rmtree(work, ignore_errors=True)  # an interrupted conversion
    out = work / ckpt.universal_tag(tag)  # ds_to_universal also writes `latest_universal` next to it: inside work/
    cmd = [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder", str(root / tag),
           "--output_folder", str(out), "--num_extract_workers", "2", "--num_merge_workers", "2"]
    if not meta.get("universal_info"):  # written before every checkpoint carried universal_checkpoint_info
        cmd.append("--inject_missing_state")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
    if proc.returncode != 0:
        shutil.rmtree(work, ignore_errors=True)
        tail = (proc.stderr or proc.stdout)[-2000:]
        raise ckpt.CheckpointError(
            f"converting {root / tag} to a universal checkpoint failed (exit {proc.returncode}); the checkpoint "
            f"itself is untouched: resume with {_ranks(meta['world_size'])}, or fix the cause and rerun.\n"
            f"{' '.join(cmd)}\n{tail}")
    ckpt.write_meta(out, {"source": tag, "source_complete": meta, "time": time.strftime("%Y-%m-%dT%H:%M:%S")})
    os.replace(out, target)
    shutil.rmtree(work, ignore_errors=True)
    return time.perf_counter() - t0


def _converted_from(target: Path) -> Optional[Dict[str, Any]]:
    try:
        return json.loads((target / ckpt.COMPLETE).read_text()).get("source_complete")
    except (OSError, ValueError, AttributeError):
        return None


def samples_in_epoch(state: Dict[str, Any], plan: ResumePlan, batch_size: int) -> int:
    """Samples of the epoch's global order trained before the checkpoint (older checkpoints: per-rank batches)."""
    if "samples_in_epoch" in state:
        return int(state["samples_in_epoch"])
    return int(state.get("batch_in_epoch", 0)) * batch_size * plan.from_world_size


def restore_position(train, epoch: int, done: int) -> int:
    """Point the training data (:class:`varnet_ds.data.loader.TrainData`) at ``done`` samples into ``epoch``.

    Returns:
        The per-rank batch index to continue from (``batch_in_epoch``); when ``done`` is not a whole number of
        batches on every rank (possible only after a world-size change) the loader starts at ``done`` itself and
        the index restarts at 0.
    """
    per_batch = int(train.cfg.data.batch_size) * train.dist.world_size
    if done % per_batch == 0:
        train.start = (epoch, 0)
        return done // per_batch
    train.start = (epoch, done)
    return 0

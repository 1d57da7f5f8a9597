"""Atomic DeepSpeed checkpoints: every rank saves its shard, rank 0 marks the tag complete and moves ``latest``.

Layout of ``RUN/checkpoints/``::

    step000000120/            DeepSpeed files of every rank + rng_rank{r}.pt + COMPLETE (json)
    step000000120.universal/  its DeepSpeed universal conversion, made on a resume with another world size
                              (``varnet_ds.trainer.elastic``; own COMPLETE naming the source)
    latest                    the newest COMPLETE tag (written by rename, never half-written)

A crash while saving leaves the previous tag and ``latest`` untouched; a tag without ``COMPLETE`` is ignored.
``COMPLETE`` records the step, the world size, the global batch and the position in the epoch.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from varnet_ds.distributed import DistInfo, barrier
from varnet_ds.files import atomic_path, atomic_write_text
from varnet_ds.seeding import rng_state, set_rng_state

COMPLETE = "COMPLETE"
LATEST = "latest"
UNIVERSAL = ".universal"  # suffix of a tag's universal-checkpoint conversion (never a tag itself)
# Saved with every checkpoint: lets `deepspeed.checkpoint.ds_to_universal` convert it (data parallelism only).
UNIVERSAL_INFO = {"universal_checkpoint_info": {"universal_checkpoint_version": 0.4}}


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used; the message says why and what to do."""


def tag_for(step: int) -> str:
    return f"step{step:09d}"


def universal_tag(tag: str) -> str:
    """The folder of ``tag``'s universal conversion (``step000000120.universal``)."""
    return f"{tag}{UNIVERSAL}"


def read_meta(root: Path, tag: str) -> Dict[str, Any]:
    """The ``COMPLETE`` metadata of ``tag``: step, world_size, time (and, since elastic resume, global_batch...)."""
    return json.loads((Path(root) / tag / COMPLETE).read_text())


def write_meta(folder: Path, meta: Dict[str, Any]) -> None:
    """Mark ``folder`` complete (atomically)."""
    atomic_write_text(Path(folder) / COMPLETE, json.dumps(meta))


def complete_tags(root: Path) -> list:
    """Tags under ``root`` that finished saving, oldest first."""
    if not root.is_dir():
        return []
    tags = [p.name for p in root.iterdir() if p.is_dir() and UNIVERSAL not in p.name and (p / COMPLETE).is_file()]
    return sorted(tags)


def find_latest(root: Path) -> Optional[str]:
    """The tag to resume from: ``latest`` if it points at a complete tag, else the newest complete tag."""
    root = Path(root)
    latest = root / LATEST
    if latest.is_file():
        tag = latest.read_text().strip()
        if (root / tag / COMPLETE).is_file():
            return tag
    tags = complete_tags(root)
    return tags[-1] if tags else None


def save(engine, root: Path, step: int, client_state: Dict[str, Any], dist: DistInfo, keep: int) -> str:
    """Save a checkpoint from every rank, then publish it atomically on rank 0.

    Args:
        engine: the DeepSpeed engine (``save_checkpoint`` is called on every rank).
        root: checkpoint folder.
        step: global optimizer step (names the tag).
        client_state: epoch, step, scheduler, W&B id, ... (stored by DeepSpeed with the model states).
        dist: rank information.
        keep: how many complete tags to keep (older ones are deleted by rank 0).

    Returns:
        The tag written.
    """
    root = Path(root)
    tag = tag_for(step)
    partial = f"{tag}.partial"
    client_state = {**client_state, **UNIVERSAL_INFO}
    if dist.is_main:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(root / partial, ignore_errors=True)  # leftovers of a crash while saving
    barrier()
    # Write into a fresh folder: a complete tag of the same step (e.g. the final save right after a periodic
    # one) is never overwritten in place, so a crash mid-save cannot damage the checkpoint `latest` names.
    engine.save_checkpoint(str(root), tag=partial, client_state=client_state, save_latest=False)
    rng_path = root / partial / f"rng_rank{dist.rank}.pt"
    with atomic_path(rng_path) as tmp:
        torch.save(rng_state(), tmp)
    barrier()
    if dist.is_main:
        old = root / f"{tag}.old"
        if (root / tag).exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(root / tag, old)  # still COMPLETE: find_latest falls back to it until the swap is done
        shutil.rmtree(root / universal_tag(tag), ignore_errors=True)  # converted from an earlier save of this step
        os.replace(root / partial, root / tag)
        meta = {"step": step, "world_size": dist.world_size, "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "universal_info": True,
                **{k: client_state[k] for k in ("global_batch", "epoch", "samples_in_epoch") if k in client_state}}
        write_meta(root / tag, meta)
        atomic_write_text(root / LATEST, tag)
        shutil.rmtree(old, ignore_errors=True)
        for stale in complete_tags(root)[:-keep]:
            if stale != tag:
                shutil.rmtree(root / stale, ignore_errors=True)
        _prune_universal(root)
    barrier()
    return tag


def _prune_universal(root: Path) -> None:
    """Remove universal conversions (and leftovers of interrupted ones) whose source tag is gone."""
    kept = set(complete_tags(root))
    for p in root.iterdir():
        if p.is_dir() and UNIVERSAL in p.name and p.name.split(UNIVERSAL)[0] not in kept:
            shutil.rmtree(p, ignore_errors=True)


def check_world_size(root: Path, tag: str, world_size: int) -> None:
    """ZeRO optimizer shards are tied to the world size: refuse a mismatch with the way out (train.elastic=false)."""
    meta = read_meta(root, tag)
    if meta["world_size"] != world_size:
        raise CheckpointError(
            f"checkpoint {Path(root) / tag} was written by {meta['world_size']} ranks but this job has "
            f"{world_size}; ZeRO optimizer states are partitioned per rank and train.elastic=false forbids "
            f"converting them to a universal checkpoint. Either resume with "
            f"{meta['world_size']} ranks, or start a new run from the weights only: "
            f"train.init_weights={Path(root).parent / 'model_fp32.pt'} (written at the end of a run), or convert "
            f"with `python {Path(root) / 'zero_to_fp32.py'} {root} OUT_DIR -t {tag}` and pass that file"
        )


def load(engine, root: Path, tag: str, dist: DistInfo, universal: bool = False) -> Dict[str, Any]:
    """Load model, optimizer and client state of ``tag`` and this rank's RNG state.

    With ``universal`` the engine (built with ``checkpoint.load_universal``) loads ``TAG.universal``, the
    conversion made by ``varnet_ds.trainer.elastic`` for another world size; RNG states are then not restored (the
    caller reseeds).

    Returns:
        The client state saved with the checkpoint.
    """
    root = Path(root)
    if not universal and engine.zero_optimization_stage() > 0:  # stage 0: unpartitioned, loads on any world size
        check_world_size(root, tag, dist.world_size)
    load_tag = universal_tag(tag) if universal else tag
    path, client_state = engine.load_checkpoint(
        str(root), tag=load_tag, load_optimizer_states=True, load_lr_scheduler_states=False
    )
    if path is None:
        raise CheckpointError(f"DeepSpeed could not load checkpoint {root / load_tag}")
    rng_path = root / tag / f"rng_rank{dist.rank}.pt"
    if not universal and read_meta(root, tag)["world_size"] == dist.world_size and rng_path.is_file():
        set_rng_state(torch.load(rng_path, weights_only=False))
    return client_state or {}

"""Atomic DeepSpeed checkpoints: every rank saves its shard, rank 0 marks the tag complete and moves ``latest``.

Layout of ``RUN/checkpoints/``::

    step000000120/            DeepSpeed files of every rank + rng_rank{r}.pt + COMPLETE (json)
    latest                    the newest COMPLETE tag (written by rename, never half-written)

A crash while saving leaves the previous tag and ``latest`` untouched; a tag without ``COMPLETE`` is ignored.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch

from varnet_ds.distributed import DistInfo, barrier

COMPLETE = "COMPLETE"
LATEST = "latest"


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used; the message says why and what to do."""


def tag_for(step: int) -> str:
    return f"step{step:09d}"


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def rng_state() -> Dict[str, Any]:
    """Python, numpy and torch (CPU + CUDA) RNG states of this process."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def complete_tags(root: Path) -> list:
    """Tags under ``root`` that finished saving, oldest first."""
    if not root.is_dir():
        return []
    tags = [p.name for p in root.iterdir() if p.is_dir() and (p / COMPLETE).is_file()]
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
    if dist.is_main:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(root / partial, ignore_errors=True)  # leftovers of a crash while saving
    barrier()
    # Write into a fresh folder: a complete tag of the same step (e.g. the final save right after a periodic
    # one) is never overwritten in place, so a crash mid-save cannot damage the checkpoint `latest` names.
    engine.save_checkpoint(str(root), tag=partial, client_state=client_state, save_latest=False)
    rng_path = root / partial / f"rng_rank{dist.rank}.pt"
    tmp = rng_path.with_name(rng_path.name + ".tmp")
    torch.save(rng_state(), tmp)
    os.replace(tmp, rng_path)
    barrier()
    if dist.is_main:
        old = root / f"{tag}.old"
        if (root / tag).exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(root / tag, old)  # still COMPLETE: find_latest falls back to it until the swap is done
        os.replace(root / partial, root / tag)
        meta = {"step": step, "world_size": dist.world_size, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
        _atomic_write(root / tag / COMPLETE, json.dumps(meta))
        _atomic_write(root / LATEST, tag)
        shutil.rmtree(old, ignore_errors=True)
        for stale in complete_tags(root)[:-keep]:
            if stale != tag:
                shutil.rmtree(root / stale, ignore_errors=True)
    barrier()
    return tag


def check_world_size(root: Path, tag: str, world_size: int) -> None:
    """ZeRO optimizer shards are tied to the world size: refuse a mismatch with the way out."""
    meta = json.loads((Path(root) / tag / COMPLETE).read_text())
    if meta["world_size"] != world_size:
        raise CheckpointError(
            f"checkpoint {Path(root) / tag} was written by {meta['world_size']} ranks but this job has "
            f"{world_size}; ZeRO optimizer states are partitioned per rank. Either resume with "
            f"{meta['world_size']} ranks, or start a new run from the weights only: "
            f"train.init_weights={Path(root).parent / 'model_fp32.pt'} (written at the end of a run), or convert "
            f"with `python {Path(root) / 'zero_to_fp32.py'} {root} OUT_DIR -t {tag}` and pass that file"
        )


def load(engine, root: Path, tag: str, dist: DistInfo) -> Dict[str, Any]:
    """Load model, optimizer and client state of ``tag`` and this rank's RNG state.

    Returns:
        The client state saved with the checkpoint.
    """
    root = Path(root)
    check_world_size(root, tag, dist.world_size)
    path, client_state = engine.load_checkpoint(
        str(root), tag=tag, load_optimizer_states=True, load_lr_scheduler_states=False
    )
    if path is None:
        raise CheckpointError(f"DeepSpeed could not load checkpoint {root / tag}")
    rng_path = root / tag / f"rng_rank{dist.rank}.pt"
    if rng_path.is_file():
        set_rng_state(torch.load(rng_path, weights_only=False))
    return client_state or {}

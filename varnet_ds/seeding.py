"""The one home of seeding: process streams, per-sample and per-worker seeds, RNG state capture and restore.

Every seed is derived from ``run.seed`` with ``np.random.SeedSequence`` (or a fixed offset per rank for the process
streams), so a draw never depends on the process that makes it unless the rank is part of the key on purpose.
"""

from __future__ import annotations

import contextlib
import os
import random
import zlib
from typing import Any, Dict, Iterator

import numpy as np
import torch


def seed_process(seed: int, rank: int = 0, deterministic: bool = False) -> None:
    """Seed Python, numpy and torch; ranks get different streams derived from ``seed``.

    With ``deterministic`` (``train.deterministic``) cuDNN and cuBLAS use deterministic kernels, so a resumed GPU
    run continues bit for bit like it does on the CPU (at some speed cost).
    """
    s = seed + 1000 * rank
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True, warn_only=True)


def derive_seed(*parts: int) -> int:
    """A 32-bit seed from non-negative integers (``np.random.SeedSequence``)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def sample_seed(base_seed: int, epoch: int, fname: str, slice_num: int) -> int:
    """The seed of one training sample's mask and MRAugment draw: (run.seed, epoch, file name, slice).

    No rank, worker or resume position enters it, so a sample gets the same draw on any world size, with any
    ``num_workers`` and after a resume.
    """
    return derive_seed(base_seed, epoch, zlib.crc32(str(fname).encode()), slice_num)


def worker_seed(base_seed: int, epoch: int, rank: int, worker_id: int) -> int:
    """A 32-bit seed unique to (run seed, epoch, rank, worker), reproducible from the run seed."""
    parts = {"base_seed": base_seed, "epoch": epoch, "rank": rank, "worker_id": worker_id}
    for name, value in parts.items():
        if int(value) < 0:
            raise ValueError(f"worker_seed: {name} = {value} must be >= 0")
    return derive_seed(*parts.values())


def seed_globals(seed: int) -> None:
    """Seed Python, NumPy and torch's global generators with one 32-bit seed."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def reseed_after_world_size_change(seed: int, step: int, rank: int) -> None:
    """Per-rank Python/NumPy/torch streams after a world-size change: derived from (run.seed, global step, rank)."""
    seed_globals(derive_seed(seed, step, rank))


def rng_state() -> Dict[str, Any]:
    """Python, numpy and torch (CPU + CUDA) RNG states of this process."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def fork_rng() -> Iterator[None]:
    """Run a block (profiling, previews) without changing this process's RNG streams."""
    state = rng_state()
    try:
        yield
    finally:
        set_rng_state(state)

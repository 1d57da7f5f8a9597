"""The one home of seeding: process streams, per-sample and per-worker seeds, RNG state capture and restore.

Every random stream of a run is derived with ``np.random.SeedSequence`` from ``(purpose, run.seed, ...)``
(:func:`seed_sequence`). The first entropy word is the purpose's fixed key (the CRC-32 of its name in
:data:`PURPOSES`), then the number of parts, then every part as (sign, word count, 32-bit words): the encoding is
injective, so two different ``(purpose, parts)`` never hand ``SeedSequence`` the same entropy. This closes the
collisions of the earlier scheme: ``seed + 1000 * rank`` (seed 1 rank 1 drew what seed 1001 rank 0 drew),
``seed + epoch`` for the data order (seed 1 epoch 1 = seed 2 epoch 0), and ``SeedSequence([s, e, r])`` ==
``SeedSequence([s, e, r, 0])`` (SeedSequence pads short entropy with zeros, so an elastic reseed equalled a
worker seed) or ``[2**32 + 5, 7]`` == ``[5, 1, 7]`` (big ints are split into words).

Streams (purpose: parts):

- ``process``: (run.seed, rank): Python/NumPy/torch global generators of a training process (initial weights
  come from rank 0's stream, so seed *s* of every arm starts from the same weights);
- ``elastic``: (run.seed, global step, rank): the same after a resume on another world size;
- ``train_worker`` / ``eval_worker``: (run.seed, epoch, rank, worker id): a DataLoader worker's globals and its
  transform's initial mask/augmentation streams;
- ``sample``: (run.seed, epoch, CRC-32 of the file name, slice): one training sample's draws, the same on any
  world size, with any number of workers and after a resume; it is split into ``mask`` and ``augment``;
- ``order``: (run.seed, epoch): the epoch's global sample order; ``subsample``: (run.seed,): which slices or
  volumes ``data.sample_rate`` / ``data.volume_sample_rate`` keep;
- ``globals``: (seed,): expands one derived seed into the Python, NumPy and torch global seeds;
- ``transform``: (seed,): a transform's initial streams before any per-sample or per-worker re-seed;
- ``planner``, ``benchmark``, ``preview``: fixed inputs and weights of the memory planner, the benchmarks and the
  augmentation preview (not tied to a run seed, but never equal to a run's stream).

Validation and test masks are not derived here: they are seeded from the file name, as fastMRI does, so every
run of every seed is scored on the same masks.
"""

from __future__ import annotations

import contextlib
import os
import random
import zlib
from typing import Any, Dict, Iterator, List

import numpy as np
import torch

PURPOSES = ("process", "elastic", "train_worker", "eval_worker", "sample", "mask", "augment", "order", "subsample",
            "globals", "transform", "planner", "benchmark", "preview")
_KEYS = {name: zlib.crc32(name.encode()) for name in PURPOSES}
if len(set(_KEYS.values())) != len(PURPOSES):  # pragma: no cover - a new purpose name must not clash
    raise RuntimeError(f"seeding: two purposes share a CRC-32 key: {_KEYS}")
_U32 = 0xFFFFFFFF
LOADER_KINDS = ("train", "eval")  # DataLoaders with their own worker streams (purpose "<kind>_worker")


def purpose_key(purpose: str) -> int:
    """The fixed first entropy word of ``purpose`` (CRC-32 of its name).

    Raises:
        ValueError: ``purpose`` is not one of :data:`PURPOSES`.
    """
    if purpose not in _KEYS:
        raise ValueError(f"seeding: unknown purpose {purpose!r}; known purposes: {list(PURPOSES)}")
    return _KEYS[purpose]


def _words(purpose: str, index: int, part: Any) -> List[int]:
    """(sign, word count, 32-bit words of |part|, least significant first): injective over Python ints."""
    if isinstance(part, (bool, np.bool_)) or not isinstance(part, (int, np.integer)):
        raise TypeError(f"seeding: part {index} of purpose {purpose!r} is {part!r} ({type(part).__name__}); "
                        "parts must be integers")
    value = int(part)
    magnitude = abs(value)
    words = []
    while True:
        words.append(magnitude & _U32)
        magnitude >>= 32
        if not magnitude:
            break
    return [int(value < 0), len(words), *words]


def seed_sequence(purpose: str, *parts: int) -> np.random.SeedSequence:
    """The ``SeedSequence`` of stream ``(purpose, *parts)``; distinct arguments give distinct entropy.

    Args:
        purpose: one of :data:`PURPOSES`.
        *parts: integers (any sign and size), e.g. ``run.seed, rank``.
    """
    entropy = [purpose_key(purpose), len(parts)]
    for i, part in enumerate(parts):
        entropy += _words(purpose, i, part)
    return np.random.SeedSequence(entropy)


def derive_seed(purpose: str, *parts: int) -> int:
    """A 64-bit seed (``0 <= seed < 2**64``) of stream ``(purpose, *parts)``, e.g. for ``torch.manual_seed``."""
    return int(seed_sequence(purpose, *parts).generate_state(1, np.uint64)[0])


def seed_words(purpose: str, *parts: int) -> np.ndarray:
    """Four 32-bit words of stream ``(purpose, *parts)``: a 128-bit seed for a NumPy ``RandomState``."""
    return seed_sequence(purpose, *parts).generate_state(4, np.uint32)


def seed_globals(seed: int) -> None:
    """Seed Python, NumPy and torch's global generators (CPU and CUDA) from one derived seed.

    Each library gets its own stream of ``("globals", seed)``: Python and torch a 64-bit seed, NumPy's legacy
    ``RandomState`` 128 bits.
    """
    words = seed_sequence("globals", seed).generate_state(8, np.uint32)
    random.seed(int(words[0]) | int(words[1]) << 32)
    np.random.seed(words[2:6])
    torch.manual_seed(int(words[6]) | int(words[7]) << 32)


def seed_process(seed: int, rank: int = 0, deterministic: bool = False) -> None:
    """Seed Python, numpy and torch from stream ``("process", seed, rank)``.

    With ``deterministic`` (``train.deterministic``) cuDNN and cuBLAS use deterministic kernels, so a resumed GPU
    run continues bit for bit like it does on the CPU (at some speed cost).
    """
    seed_globals(derive_seed("process", seed, rank))
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True, warn_only=True)


def sample_seed(base_seed: int, epoch: int, fname: str, slice_num: int) -> int:
    """The seed of one training sample's mask and MRAugment draw: ``("sample", run.seed, epoch, file, slice)``.

    No rank, worker or resume position enters it, so a sample gets the same draw on any world size, with any
    ``num_workers`` and after a resume.
    """
    return derive_seed("sample", base_seed, epoch, zlib.crc32(str(fname).encode()), slice_num)


def worker_seed(base_seed: int, epoch: int, rank: int, worker_id: int, kind: str = "train") -> int:
    """The seed of DataLoader worker ``worker_id`` of ``rank``: ``("<kind>_worker", run.seed, epoch, rank, id)``.

    Args:
        kind: ``train`` or ``eval``: the training and evaluation loaders never share a worker stream.

    Raises:
        ValueError: a negative epoch, rank or worker id, or an unknown ``kind`` (the message names it).
    """
    parts = {"epoch": epoch, "rank": rank, "worker_id": worker_id}
    for name, value in parts.items():
        if int(value) < 0:
            raise ValueError(f"worker_seed: {name} = {value} must be >= 0")
    if kind not in LOADER_KINDS:
        raise ValueError(f"worker_seed: kind = {kind!r} must be one of {list(LOADER_KINDS)}")
    return derive_seed(f"{kind}_worker", base_seed, *parts.values())


def reseed_after_world_size_change(seed: int, step: int, rank: int) -> None:
    """Per-rank Python/NumPy/torch streams after a world-size change: ``("elastic", run.seed, step, rank)``."""
    seed_globals(derive_seed("elastic", seed, step, rank))


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

"""Which slices each rank and worker gets, and how workers are seeded.

Training splits one global sample order per epoch across the ranks (:mod:`varnet_ds.data.loader`); evaluation
uses :class:`DistributedVolumeSampler` (whole volumes per rank). :func:`build_loader` makes a DataLoader whose
non-persistent workers seed every RNG from (loader kind, run seed, epoch, rank, worker id)
(:func:`varnet_ds.seeding.worker_seed`).

Validation metrics (SSIM, PSNR, NMSE) are per volume, so every slice of a volume must be reconstructed on the
same rank. :class:`DistributedVolumeSampler` assigns whole volumes to ranks (balanced by slice count) and pads
every rank to the same number of samples so that collective ops stay in lock-step; the padding is reported
(``owned_volumes``, ``num_owned_samples``) so metric code can drop it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Set

import torch
import torch.distributed as dist
from fastmri.data import VolumeSampler
from torch.utils.data import DataLoader, Dataset, Sampler

from varnet_ds.seeding import seed_globals, worker_seed


class DistributedVolumeSampler(VolumeSampler):
    """Volume-aware evaluation sampler with equal sample counts on every rank.

    Volumes are dealt to ranks largest first, each to the least loaded rank (ties: lowest rank, then volume
    name), so the assignment is deterministic and identical on every rank. A rank yields its own slices in
    dataset order, then pads up to ``num_samples`` by cycling through them again. A rank that owns no volume
    (fewer volumes than ranks) pads with the slices of the dataset's first volume, which it does not own.

    Unlike ``fastmri.data.VolumeSampler`` this never shuffles and works with fewer volumes than ranks.

    Attributes:
        owned_volumes: File names (``VarNetSample.fname``) this rank is responsible for.
        num_owned_samples: The first ``num_owned_samples`` indices yielded are real; the rest are padding.
        num_samples: Samples per rank (the same on every rank).
    """

    def __init__(self, dataset: Dataset, num_replicas: Optional[int] = None, rank: Optional[int] = None):
        if num_replicas is None:
            num_replicas = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        if rank is None:
            rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"DistributedVolumeSampler: rank {rank} not in [0, num_replicas={num_replicas})")
        self.dataset = dataset
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        self.shuffle = False
        self.seed = 0

        slices: Dict[str, List[int]] = {}  # volume path -> dataset indices, in dataset order
        for i, raw_sample in enumerate(dataset.raw_samples):
            slices.setdefault(str(raw_sample[0]), []).append(i)
        self.all_volume_names = sorted(slices)

        loads = [0] * num_replicas
        self.all_volumes_split: List[List[str]] = [[] for _ in range(num_replicas)]
        for vol in sorted(slices, key=lambda v: (-len(slices[v]), v)):
            r = min(range(num_replicas), key=lambda k: (loads[k], k))
            self.all_volumes_split[r].append(vol)
            loads[r] += len(slices[vol])

        mine = self.all_volumes_split[rank]
        self.indices: List[int] = sorted(i for vol in mine for i in slices[vol])
        self.owned_volumes: Set[str] = {Path(vol).name for vol in mine}
        self.num_owned_samples = len(self.indices)
        self.num_samples = max(loads) if loads else 0
        self.total_size = self.num_samples * num_replicas
        first_volume = str(dataset.raw_samples[0][0]) if len(dataset.raw_samples) else None
        self._pad_source = self.indices or (slices[first_volume] if first_volume is not None else [])

    def padding_indices(self) -> List[int]:
        """The dataset indices appended after this rank's own slices."""
        n_pad = self.num_samples - self.num_owned_samples
        src = self._pad_source
        return [src[k % len(src)] for k in range(n_pad)] if n_pad > 0 else []

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices + self.padding_indices())

    def __len__(self) -> int:
        return self.num_samples


def seed_worker(base_seed: int, epoch: int, rank: int, worker_id: int, transform: Optional[Any] = None,
                kind: str = "train") -> int:
    """Seed ``random``, NumPy, torch and (if given) a transform's mask/augmentation RNGs; return the seed.

    Args:
        base_seed: ``run.seed``.
        epoch: Current epoch (seeds change every epoch).
        rank: Global rank.
        worker_id: DataLoader worker id (0 in the main process).
        transform: A ``VarNetTransform`` (anything with ``reseed(int)``) or None.
        kind: ``train`` or ``eval`` (:data:`varnet_ds.seeding.LOADER_KINDS`): separate worker streams.
    """
    seed = worker_seed(base_seed, epoch, rank, worker_id, kind)
    seed_globals(seed)
    if transform is not None and hasattr(transform, "reseed"):
        transform.reseed(seed)
    return seed


class _WorkerInit:
    """Picklable ``worker_init_fn``: seeds the worker from (loader kind, base seed, epoch, rank, worker id)."""

    def __init__(self, base_seed: int, rank: int, epoch: int, kind: str = "train"):
        self.base_seed, self.rank, self.epoch, self.kind = base_seed, rank, epoch, kind

    def __call__(self, worker_id: int) -> None:
        info = torch.utils.data.get_worker_info()
        transform = getattr(info.dataset, "transform", None) if info is not None else None
        epoch = getattr(transform, "epoch", self.epoch)  # VarNetTransform.set_epoch is the source of truth
        seed_worker(self.base_seed, epoch, self.rank, worker_id, transform, self.kind)


def set_loader_epoch(loader: DataLoader, epoch: int) -> None:
    """Prepare a loader built by :func:`build_loader` for ``epoch``: sampler order, schedule p, worker seeds.

    Takes effect at the next ``iter(loader)`` (workers are not persistent, so they re-fork with the new state).
    With ``num_workers == 0`` the transform is re-seeded here, as worker 0.
    """
    if hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(epoch)
    transform = getattr(loader.dataset, "transform", None)
    if hasattr(transform, "set_epoch"):
        transform.set_epoch(epoch)
    init = loader.worker_init_fn
    if isinstance(init, _WorkerInit):
        init.epoch = epoch
        if loader.num_workers == 0 and hasattr(transform, "reseed"):
            transform.reseed(worker_seed(init.base_seed, epoch, init.rank, 0, init.kind))


def build_loader(
    dataset: Dataset,
    sampler: Optional[Sampler],
    num_workers: int,
    base_seed: int,
    rank: int,
    epoch: int,
    batch_size: int = 1,
    pin_memory: bool = False,
    kind: str = "train",
) -> DataLoader:
    """A DataLoader with seeded, non-persistent workers (fastMRI's default collate; batch size 1).

    Sets ``epoch`` on the sampler and on the dataset's transform (see :func:`set_loader_epoch`). Worker ``w``
    of ``rank`` seeds ``random``/NumPy/torch and the transform's mask and augmentation RNGs with
    ``worker_seed(base_seed, epoch, rank, w, kind)``; the main process does not touch the global RNGs.
    ``kind`` (``train`` or ``eval``) keeps the training and evaluation loaders' worker streams apart.
    """
    if num_workers < 0:
        raise ValueError(f"num_workers = {num_workers}: must be >= 0")
    worker_seed(base_seed, epoch, rank, 0, kind)  # a bad epoch, rank or kind fails here, named, not in a worker
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=False,
        num_workers=num_workers,
        worker_init_fn=_WorkerInit(base_seed, rank, epoch, kind),
        persistent_workers=False,
        pin_memory=pin_memory,
    )
    set_loader_epoch(loader, epoch)
    return loader

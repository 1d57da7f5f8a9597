"""The resumable training data: the epoch's global sample order split across ranks, per-sample seeding, and the
MRAugment schedule (with on-device augmentation in the train step when ``aug.device=cuda``)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence, Tuple

import torch
from omegaconf import DictConfig
from torch.utils.data import Sampler

from varnet_ds.data.augment import AugmentSchedule, MRAugment
from varnet_ds.data.datasets import build_train_dataset
from varnet_ds.data.device_augment import FullySampledSample, augment_and_mask
from varnet_ds.data.samplers import build_loader
from varnet_ds.distributed import DistInfo
from varnet_ds.seeding import derive_seed, sample_seed


class EpochOrder(Sampler):
    """The epoch's global sample order: a permutation of ``range(size)`` from stream ``("order", seed, epoch)``.

    The same on every rank (:class:`SkipSampler` splits it). Unlike ``DistributedSampler(seed=s)``, which draws
    epoch ``e`` from ``s + e`` (seed 1 epoch 1 = seed 2 epoch 0), no two (seed, epoch) share an order stream.
    """

    def __init__(self, size: int, seed: int, epoch: int = 0) -> None:
        if int(size) < 0:
            raise ValueError(f"EpochOrder: size = {size} must be >= 0")
        self.size, self.seed, self.epoch = int(size), int(seed), int(epoch)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(derive_seed("order", self.seed, self.epoch))
        return iter(torch.randperm(self.size, generator=generator).tolist())

    def __len__(self) -> int:
        return self.size


class SkipSampler(Sampler):
    """Rank ``rank``'s share of ``sampler``'s order after its first ``skip`` indices (resume inside an epoch).

    ``sampler`` yields one global order, the same on every rank. The indices after the first ``skip`` are padded
    with the order's first indices to a multiple of ``num_replicas`` (as ``DistributedSampler`` pads, so every rank
    gets as many batches) and rank ``rank`` takes every ``num_replicas``-th from position ``rank``. When ``skip`` is
    a multiple of ``num_replicas`` this is exactly ``DistributedSampler(num_replicas, rank)`` of that order without
    its first ``skip / num_replicas`` indices, so ``skip`` counts global samples on any world size.
    """

    def __init__(self, sampler: Sampler, skip: int, num_replicas: int = 1, rank: int = 0) -> None:
        self.sampler, self.skip, self.num_replicas, self.rank = sampler, int(skip), int(num_replicas), int(rank)

    def __iter__(self) -> Iterator[int]:
        order = list(self.sampler)
        rest = order[self.skip:]
        pad = -len(rest) % self.num_replicas
        if rest and pad:
            rest += (order * -(-pad // len(order)))[:pad]
        return iter(rest[self.rank::self.num_replicas])

    def __len__(self) -> int:
        rest = max(len(self.sampler) - self.skip, 0)  # type: ignore[arg-type]
        total = -(-rest // self.num_replicas) * self.num_replicas
        return len(range(self.rank, total, self.num_replicas))


class PerSampleSeed:
    """Wraps a ``VarNetTransform``: re-seeds its mask and augmentation RNGs for every sample.

    The seed is a function of (run.seed, epoch, file name, slice), so the random mask and the MRAugment draw of
    a training sample do not depend on the number of ranks, workers or on where a resumed run restarted: a
    2-rank run sees exactly the samples of a 1-rank run with the same global batch, and a resumed run continues
    bit for bit. Every other attribute is the wrapped transform's.
    """

    def __init__(self, transform, base_seed: int) -> None:
        self.transform, self.base_seed = transform, int(base_seed)

    def __getattr__(self, name: str):
        if name == "transform":
            raise AttributeError(name)
        return getattr(self.transform, name)

    def sample_seed(self, fname: str, slice_num: int) -> int:
        return sample_seed(self.base_seed, int(getattr(self.transform, "epoch", 0)), fname, slice_num)

    def __call__(self, kspace, mask, target, attrs, fname, slice_num):
        self.transform.reseed(self.sample_seed(fname, slice_num))
        return self.transform(kspace, mask, target, attrs, fname, slice_num)


@dataclass
class TrainData:
    """The knee training set with its MRAugment schedule; builds a loader per epoch."""

    dataset: torch.utils.data.Dataset
    transform: object
    schedule: AugmentSchedule
    cfg: DictConfig
    dist: DistInfo
    aug_p: float = 0.0
    augmentor: Optional[MRAugment] = None  # set when aug.device == cuda: augmentation runs in the train step
    start: Tuple[int, int] = (0, 0)  # (epoch, samples of its global order done before batch 0): elastic resume

    def prepare(self, batch):
        """A ``VarNetSample`` batch for the model: augments and masks :class:`FullySampledSample` on the device."""
        if isinstance(batch, FullySampledSample):
            mask_func = self.transform.mask_func
            return augment_and_mask(batch, self.augmentor, mask_func, self.dist.device)
        return batch

    def samples_done(self, epoch: int, batches: int) -> int:
        """Samples of ``epoch``'s global order trained once every rank has done ``batches`` batches of its loader."""
        before = self.start[1] if self.start[0] == epoch else 0
        return before + batches * self.cfg.data.batch_size * self.dist.world_size

    def loader(self, epoch: int, skip: int = 0):
        """A loader for ``epoch``, skipping the samples of ``skip`` batches per rank (and ``start``) already done.

        The epoch's order is one global permutation from (run.seed, epoch) (:class:`EpochOrder`); the samples done
        are dropped from it and the rest is split across this job's ranks (:class:`SkipSampler`), so a resume on
        another world size neither repeats nor skips a sample of the interrupted epoch.
        """
        self.aug_p = float(self.schedule(epoch))
        if hasattr(self.transform, "set_epoch"):
            self.transform.set_epoch(epoch)
        order = EpochOrder(len(self.dataset), self.cfg.run.seed, epoch)
        sampler = SkipSampler(order, self.samples_done(epoch, skip), self.dist.world_size, self.dist.rank)
        return build_loader(self.dataset, sampler, num_workers=self.cfg.data.num_workers, base_seed=self.cfg.run.seed,
                            rank=self.dist.rank, epoch=epoch, batch_size=self.cfg.data.batch_size)


def build_train_loader(cfg: DictConfig, dist: DistInfo, bad_files: Sequence[Tuple[Path, str]]) -> TrainData:
    """The training data with MRAugment (when ``aug.enabled``) and its p schedule."""
    schedule = AugmentSchedule.from_config(cfg.aug, cfg.train.epochs)
    augmentor = MRAugment(cfg.aug) if cfg.aug.enabled else None
    dataset = build_train_dataset(cfg, augmentor=augmentor, schedule=schedule if augmentor else None,
                                  skip_files=[str(p) for p, _ in bad_files])
    dataset.transform = PerSampleSeed(dataset.transform, cfg.run.seed)
    on_device = augmentor is not None and cfg.aug.device == "cuda"
    if on_device and dist.device.type != "cuda" and dist.is_main:
        warnings.warn("aug.device=cuda but this rank trains on the CPU: MRAugment runs in the train step on the CPU",
                      stacklevel=2)
    return TrainData(dataset=dataset, transform=dataset.transform, schedule=schedule, cfg=cfg, dist=dist,
                     augmentor=augmentor if on_device else None)

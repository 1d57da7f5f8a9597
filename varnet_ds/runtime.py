"""Run-time helpers of the engine: seeding, start-up data check, the resumable training loader, memory, versions."""

from __future__ import annotations

import platform
import random
import resource
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import DistributedSampler, Sampler

from varnet_ds.data.augment import AugmentSchedule, MRAugment
from varnet_ds.data.check import DataError, check_folder
from varnet_ds.data.datasets import build_loader, build_train_dataset
from varnet_ds.data.device_augment import FullySampledSample, augment_and_mask
from varnet_ds.distributed import DistInfo, broadcast_object


def seed_everything(seed: int, rank: int = 0) -> None:
    """Seed Python, numpy and torch; ranks get different streams derived from ``seed``."""
    s = seed + 1000 * rank
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)


def versions() -> Dict[str, str]:
    """Library versions recorded in every run."""
    from importlib.metadata import version

    import deepspeed
    import fastmri  # noqa: F401
    import omegaconf
    import wandb

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "deepspeed": deepspeed.__version__,
        "fastmri": version("fastmri"),
        "omegaconf": omegaconf.__version__,
        "wandb": wandb.__version__,
        "numpy": np.__version__,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu",
    }


def check_data(cfg: DictConfig, dist: DistInfo) -> List[Tuple[Path, str]]:
    """Validate the data folders on rank 0 before training (``data.check_on_start``).

    Returns:
        Bad files that are to be skipped (only with ``data.skip_bad_files=true``; otherwise a bad file raises).

    Raises:
        DataError: on every rank, naming the file and the problem.
    """
    folders = [("data.train_path", cfg.data.train_path, True), ("data.val_path", cfg.data.val_path, True),
               ("data.transfer_path", cfg.data.transfer_path, True)]
    result: object = []
    if dist.is_main:
        try:
            if not cfg.data.train_path:
                raise DataError(Path("data.train_path"), "not set: give the knee multicoil train folder")
            bad: List[Tuple[Path, str]] = []
            for key, path, need_target in folders:
                if not path:
                    continue
                if not Path(path).exists():
                    raise DataError(Path(path), f"{key}: folder does not exist")
                if cfg.data.check_on_start:
                    report = check_folder(path, require_target=need_target, skip_bad=cfg.data.skip_bad_files)
                    bad.extend(report.bad)
                    if not report.volumes:
                        raise DataError(Path(path), f"{key}: no usable volumes")
            for p, why in bad:
                print(f"[varnet_ds] skipping bad file {p}: {why}", flush=True)
            result = bad
        except DataError as err:
            result = err
    result = broadcast_object(result)
    if isinstance(result, Exception):
        raise result
    return list(result)  # type: ignore[arg-type]


class SkipSampler(Sampler):
    """Yields ``sampler``'s indices after dropping the first ``skip`` (resume inside an epoch)."""

    def __init__(self, sampler: Sampler, skip: int) -> None:
        self.sampler, self.skip = sampler, skip

    def __iter__(self) -> Iterator[int]:
        for i, index in enumerate(self.sampler):
            if i >= self.skip:
                yield index

    def __len__(self) -> int:
        return max(len(self.sampler) - self.skip, 0)  # type: ignore[arg-type]


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
        epoch = int(getattr(self.transform, "epoch", 0))
        key = [self.base_seed, epoch, zlib.crc32(str(fname).encode()), int(slice_num)]
        return int(np.random.SeedSequence(key).generate_state(1)[0])

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

    def prepare(self, batch):
        """A ``VarNetSample`` batch for the model: augments and masks :class:`FullySampledSample` on the device."""
        if isinstance(batch, FullySampledSample):
            mask_func = self.transform.mask_func
            return augment_and_mask(batch, self.augmentor, mask_func, self.dist.device)
        return batch

    def loader(self, epoch: int, skip: int = 0):
        """A loader for ``epoch`` (deterministic order from run.seed), skipping ``skip`` samples already done."""
        self.aug_p = float(self.schedule(epoch))
        if hasattr(self.transform, "set_epoch"):
            self.transform.set_epoch(epoch)
        sampler = DistributedSampler(self.dataset, num_replicas=self.dist.world_size, rank=self.dist.rank,
                                     shuffle=True, seed=self.cfg.run.seed, drop_last=False)
        sampler.set_epoch(epoch)
        return build_loader(self.dataset, SkipSampler(sampler, skip * self.cfg.data.batch_size),
                            num_workers=self.cfg.data.num_workers, base_seed=self.cfg.run.seed,
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


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: torch.device) -> float:
    """Peak allocated GPU memory (CUDA), or the process's peak resident memory on CPU, in GiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20

"""Run-time helpers of the engine: seeding, start-up data check, the resumable training loader, memory, versions."""

from __future__ import annotations

import json
import os
import platform
import random
import resource
import time
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import DistributedSampler, Sampler

from varnet_ds.console import say
from varnet_ds.data.augment import AugmentSchedule, MRAugment
from varnet_ds.data.check import DataError, check_file, list_h5_files
from varnet_ds.data.datasets import build_loader, build_train_dataset
from varnet_ds.data.device_augment import FullySampledSample, augment_and_mask
from varnet_ds.distributed import DistInfo


def seed_everything(seed: int, rank: int = 0, deterministic: bool = False) -> None:
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


def check_data(cfg: DictConfig, dist: DistInfo, cache_path: Optional[Path] = None) -> List[Tuple[Path, str]]:
    """Validate every data file before training (``data.check_on_start``), split across ranks.

    Each rank checks every world_size-th file (headers, shapes, dtypes and a NaN/inf scan of the k-space, see
    ``varnet_ds.data.check``); results are gathered so every rank reaches the same verdict (no rank waits alone in
    a collective). Verdicts are cached in ``cache_path`` by (file, size, mtime), so a resumed or requeued run does
    not read terabytes again.

    Returns:
        Bad files to skip (only with ``data.skip_bad_files=true``; otherwise the first bad file raises).

    Raises:
        DataError: on every rank, naming the file and the problem.
    """
    if not cfg.data.train_path:
        raise DataError(Path("data.train_path"), "not set: give the knee multicoil train folder")
    folders = [(key, path) for key, path in (("data.train_path", cfg.data.train_path),
                                             ("data.val_path", cfg.data.val_path),
                                             ("data.transfer_path", cfg.data.transfer_path)) if path]
    files: List[Tuple[str, Path]] = []
    for key, path in folders:
        if not Path(path).exists():
            raise DataError(Path(path), f"{key}: folder does not exist")
        files.extend((key, f) for f in list_h5_files(path))  # deterministic: same list on every rank
    if not cfg.data.check_on_start:
        return []
    cache = _load_check_cache(cache_path)

    def ident_of(f: Path) -> str:
        stat = f.stat()
        return f"{f.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"

    t0 = time.perf_counter()
    if dist.is_main:
        cached = sum(ident_of(f) in cache for _, f in files)
        say(f"checking {len(files)} files in {len(folders)} folders (cached: {cached})")
    mine = []
    for i, (key, f) in enumerate(files):
        if i % dist.world_size != dist.rank:
            continue
        ident = ident_of(f)
        if ident not in cache:
            try:
                check_file(f, require_target=True)
                cache[ident] = ""
            except DataError as err:
                cache[ident] = err.problem
            except Exception as err:  # anything unexpected is still a verdict about this file
                cache[ident] = f"{type(err).__name__}: {err}"
        mine.append((key, str(f), ident, cache[ident]))
    verdicts = _all_gather(mine)
    if dist.is_main and cache_path is not None:
        _save_check_cache(cache_path, {ident: problem for _, _, ident, problem in verdicts})
    bad = [(Path(f), problem) for _, f, _, problem in sorted(verdicts, key=lambda v: v[1]) if problem]
    if dist.is_main:
        say(f"data check: {len(verdicts) - len(bad)} files ok, {len(bad)} bad, {time.perf_counter() - t0:.1f} s")
    if bad and not cfg.data.skip_bad_files:
        path, problem = bad[0]
        more = f" (and {len(bad) - 1} more bad files; data.skip_bad_files=true skips them)" if len(bad) > 1 else ""
        raise DataError(path, problem + more)
    for key, _ in folders:
        good = [v for v in verdicts if v[0] == key and not v[3]]
        if not good:
            raise DataError(Path(dict(folders)[key]), f"{key}: no usable volumes")
    if dist.is_main:
        for p, why in bad:
            print(f"[varnet_ds] skipping bad file {p}: {why}", flush=True)
    return bad


def _all_gather(items: list) -> list:
    if not torch.distributed.is_initialized() or torch.distributed.get_world_size() == 1:
        return list(items)
    buckets: List[object] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(buckets, items)
    return [item for bucket in buckets for item in bucket]  # type: ignore[union-attr]


def _load_check_cache(path: Optional[Path]) -> Dict[str, str]:
    if path is None or not Path(path).is_file():
        return {}
    try:
        return dict(json.loads(Path(path).read_text()))
    except (ValueError, OSError):
        return {}  # a damaged cache only costs a re-check


def _save_check_cache(path: Path, verdicts: Dict[str, str]) -> None:
    merged = {**_load_check_cache(path), **verdicts}
    tmp = Path(path).with_name(Path(path).name + ".tmp")
    tmp.write_text(json.dumps(merged, indent=0))
    tmp.replace(path)


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

        The epoch's order is one global permutation from (run.seed, epoch), DistributedSampler's; the samples done
        are dropped from it and the rest is split across this job's ranks (:class:`SkipSampler`), so a resume on
        another world size neither repeats nor skips a sample of the interrupted epoch.
        """
        self.aug_p = float(self.schedule(epoch))
        if hasattr(self.transform, "set_epoch"):
            self.transform.set_epoch(epoch)
        order = DistributedSampler(self.dataset, num_replicas=1, rank=0, shuffle=True, seed=self.cfg.run.seed,
                                   drop_last=False)
        order.set_epoch(epoch)
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


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: torch.device) -> float:
    """Peak allocated GPU memory (CUDA), or the process's peak resident memory on CPU, in GiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20

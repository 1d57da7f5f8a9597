"""fastMRI multicoil slice datasets, sampling masks and the VarNet sample transform.

Wraps ``fastmri.data.SliceDataset`` (one sample = one slice), ``create_mask_for_mask_type`` and
``VarNetDataTransform``; adds MRAugment (augment the fully sampled k-space, then mask) and deterministic
subsampling shared by every rank. Samplers and seeded loaders: :mod:`varnet_ds.data.samplers`; the trainer's
resumable training data: :mod:`varnet_ds.data.loader`.

Typical use::

    train_ds = build_train_dataset(cfg, augmentor, schedule)
    val_ds = build_eval_dataset(cfg.data.val_path, cfg.eval.knee_mask_type, 0.08, 4)
"""

from __future__ import annotations

import xml.etree.ElementTree as etree
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Optional, Sequence, Union

import numpy as np
import torch
from fastmri.data import SliceDataset
from fastmri.data import transforms as T
from fastmri.data.subsample import MaskFunc, create_mask_for_mask_type

from varnet_ds.config import MASK_TYPES
from varnet_ds.data.device_augment import FullySampledSample
from varnet_ds.data.fastmri_file import DataError, list_h5_files
from varnet_ds.seeding import derive_seed, seed_sequence, seed_words

# Only for varnet_ds/eval/validate.py, which still imports these two from here; drop once it imports them from
# varnet_ds.data.samplers.

PathLike = Union[str, Path]


def build_mask_func(
    mask_type: str, center_fractions: Sequence[float], accelerations: Sequence[int], seed: Optional[int] = None
) -> MaskFunc:
    """A fastMRI column mask function; one (center fraction, acceleration) pair is drawn per call.

    Args:
        mask_type: One of :data:`varnet_ds.config.MASK_TYPES`.
        center_fractions: Fraction of fully sampled center columns per pair, in (0, 1).
        accelerations: Acceleration per pair (> 0); same length as ``center_fractions``.
        seed: Seed of the function's ``np.random.RandomState`` (None: fresh entropy).
    """
    cfs, accs = [float(c) for c in center_fractions], [int(a) for a in accelerations]
    if mask_type not in MASK_TYPES:
        raise ValueError(f"mask_type = {mask_type!r}: must be one of {list(MASK_TYPES)}")
    if not cfs or len(cfs) != len(accs):
        raise ValueError(f"center_fractions {cfs} and accelerations {accs} must be non-empty and of equal length")
    if any(not 0.0 < c < 1.0 for c in cfs) or any(a <= 0 for a in accs):
        raise ValueError(f"center_fractions {cfs} must be in (0, 1) and accelerations {accs} must be > 0")
    mask_func = create_mask_for_mask_type(mask_type, cfs, accs)
    if seed is not None:
        mask_func.rng.seed(seed % 2**32)
    return mask_func


class VarNetTransform:
    """SliceDataset transform ``(kspace, mask, target, attrs, fname, slice_num) -> VarNetSample``.

    Without augmentation (no augmentor, or ``p == 0`` this epoch) the output is exactly fastMRI's
    ``VarNetDataTransform(mask_func, use_seed)``. With ``p = schedule(epoch) > 0`` the fully sampled k-space is
    augmented first (MRAugment re-simulates the target from the augmented coil images), then the mask is
    applied to the augmented k-space with the file's acquisition padding; ``max_value`` stays ``attrs["max"]``.

    Args:
        mask_func: fastMRI mask function (None: use the file's stored ``mask``, test data; no augmentation).
        use_seed: True: the mask is seeded by the file name, so every slice of a volume and every call get the
            same mask (validation). False: masks come from ``mask_func.rng`` (training).
        augmentor: Object with ``augment(kspace [coils, H, W, 2], target_size (h, w), p, generator) ->
            (kspace_aug, target_aug [h, w])``, e.g. ``varnet_ds.data.augment.MRAugment``.
        schedule: ``schedule(epoch) -> p`` (e.g. ``AugmentSchedule``); required with an augmentor.
        seed: The augmentation generator starts on stream ``("transform", seed)``; :meth:`reseed` (per sample,
            per worker) replaces it and the mask RNG's stream.
    """

    def __init__(
        self,
        mask_func: Optional[MaskFunc],
        use_seed: bool = True,
        augmentor: Optional[Any] = None,
        schedule: Optional[Callable[[int], float]] = None,
        seed: int = 0,
        augment_on_device: bool = False,
    ):
        if augmentor is not None and schedule is None:
            raise ValueError("VarNetTransform: an augmentor needs a schedule (epoch -> p)")
        if augmentor is not None and mask_func is None:
            raise ValueError("VarNetTransform: augmentation needs a mask_func (the mask is applied after it)")
        self.mask_func = mask_func
        self.use_seed = use_seed
        self.augment_on_device = augment_on_device  # return FullySampledSample; the train step augments
        self.augmentor = augmentor
        self.schedule = schedule
        self.epoch = 0
        self.generator = torch.Generator()
        self.generator.manual_seed(derive_seed("transform", seed))
        self._plain = T.VarNetDataTransform(mask_func=mask_func, use_seed=use_seed)

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch that the augmentation schedule reads."""
        self.epoch = int(epoch)

    @property
    def current_p(self) -> float:
        """Augmentation probability for the current epoch (0.0 without an augmentor)."""
        if self.augmentor is None:
            return 0.0
        return float(self.schedule(self.epoch))

    def reseed(self, seed: int) -> None:
        """Re-seed the mask RNG and the augmentation generator from one integer: streams ``("mask", seed)``
        (128 bits for the mask's ``RandomState``) and ``("augment", seed)``."""
        if self.mask_func is not None:
            self.mask_func.rng.seed(seed_words("mask", seed))
        self.generator.manual_seed(derive_seed("augment", seed))

    def __call__(
        self,
        kspace: np.ndarray,
        mask: Optional[np.ndarray],
        target: Optional[np.ndarray],
        attrs: Dict,
        fname: str,
        slice_num: int,
    ) -> T.VarNetSample:
        """
        Args:
            kspace: Complex k-space ``[coils, H, W]``.
            mask: Stored mask ``[W]`` (test data) or None.
            target: RSS target ``[h, w]`` or None.
            attrs: File attributes + SliceDataset metadata (``padding_left/right``, ``recon_size``, ``max``).
            fname: File name.
            slice_num: Slice index.

        Returns:
            ``VarNetSample(masked_kspace [coils, H, W, 2], mask [1, 1, W, 1] bool, num_low_frequencies, target,
            fname, slice_num, max_value, crop_size)``.
        """
        p = self.current_p
        if p <= 0.0:
            return self._plain(kspace, mask, target, attrs, fname, slice_num)
        if target is None:
            raise DataError(fname, "augmentation needs a target ('reconstruction_rss')")
        if self.augment_on_device:
            return FullySampledSample(
                kspace=T.to_tensor(kspace), target=torch.from_numpy(np.asarray(target)), fname=fname,
                slice_num=slice_num, max_value=attrs["max"],
                crop_size=(attrs["recon_size"][0], attrs["recon_size"][1]),
                padding=(int(attrs["padding_left"]), int(attrs["padding_right"])),
                aug_seed=int(torch.randint(0, 2**62, (1,), generator=self.generator)),
                mask_seed=int(self.mask_func.rng.randint(0, 2**31 - 1)), p=p,
            )
        target_size = (int(target.shape[-2]), int(target.shape[-1]))
        kspace_aug, target_aug = self.augmentor.augment(
            T.to_tensor(kspace), target_size, p, generator=self.generator
        )
        if kspace_aug.is_complex():
            kspace_aug = torch.view_as_real(kspace_aug)
        seed = tuple(map(ord, fname)) if self.use_seed else None
        masked_kspace, mask_torch, num_low_frequencies = T.apply_mask(
            kspace_aug, self.mask_func, seed=seed, padding=(attrs["padding_left"], attrs["padding_right"])
        )
        return T.VarNetSample(
            masked_kspace=masked_kspace,
            mask=mask_torch.to(torch.bool),
            num_low_frequencies=num_low_frequencies,
            target=torch.as_tensor(target_aug).to(torch.from_numpy(np.asarray(target)).dtype).contiguous(),
            fname=fname,
            slice_num=slice_num,
            max_value=attrs["max"],
            crop_size=(attrs["recon_size"][0], attrs["recon_size"][1]),
        )


class FolderSliceDataset(SliceDataset):
    """``SliceDataset`` (multicoil) over the ``*.h5`` files of one folder, minus ``skip_files``.

    Other files in the folder are ignored (fastMRI's class would try to open them) and header errors name the
    file.
    """

    def __init__(
        self,
        root: PathLike,
        transform: Optional[Callable] = None,
        use_dataset_cache: bool = False,
        skip_files: Iterable[PathLike] = (),
        dataset_cache_file: PathLike = "dataset_cache.pkl",
    ):
        self.skip_files = frozenset(Path(f).name for f in skip_files)
        super().__init__(
            root=Path(root),
            challenge="multicoil",
            transform=transform,
            use_dataset_cache=use_dataset_cache,
            dataset_cache_file=dataset_cache_file,
        )
        # a cached index may list files skipped now
        self.raw_samples = [s for s in self.raw_samples if self._wanted(Path(s[0]))]

    def _wanted(self, fname: Path) -> bool:
        return fname.suffix == ".h5" and fname.name not in self.skip_files and fname.is_file()

    def _retrieve_metadata(self, fname):
        if not self._wanted(Path(fname)):
            return {}, 0
        try:
            return super()._retrieve_metadata(fname)
        except (OSError, KeyError, RuntimeError, ValueError, etree.ParseError) as err:
            raise DataError(
                fname, f"cannot read header/shape ({type(err).__name__}: {err}); run python -m varnet_ds.data.check"
            ) from None

    def __getitem__(self, i: int):
        """One slice; a read error names the file and the slice instead of an anonymous HDF5 traceback."""
        fname, slice_num = self.raw_samples[i][0], self.raw_samples[i][1]
        try:
            return super().__getitem__(i)
        except DataError:
            raise
        except (OSError, KeyError, RuntimeError, ValueError) as err:
            raise DataError(fname, f"slice {slice_num}: read failed ({type(err).__name__}: {err})") from None


def _check_rate(name: str, value: Optional[float]) -> None:
    if value is not None and not 0.0 < value <= 1.0:
        raise ValueError(f"{name} = {value}: must be in (0, 1]")


def make_slice_dataset(
    root: PathLike,
    transform: Optional[Callable],
    sample_rate: Optional[float] = None,
    volume_sample_rate: Optional[float] = None,
    use_dataset_cache: bool = False,
    max_volumes: Optional[int] = None,
    skip_files: Iterable[PathLike] = (),
    seed: int = 0,
) -> FolderSliceDataset:
    """A multicoil slice dataset over one folder with deterministic subsampling.

    Subsampling does not touch the global ``random`` module (as ``SliceDataset`` does): it uses a NumPy
    generator on stream ``("subsample", seed)``, so every rank selects the same subset.

    Args:
        root: Folder of fastMRI multicoil ``*.h5`` files.
        transform: Sample transform, e.g. :class:`VarNetTransform`.
        sample_rate: Keep this fraction of the slices (rounded, at least one).
        volume_sample_rate: Keep this fraction of the volumes (rounded, at least one); not with ``sample_rate``.
        use_dataset_cache: Use fastMRI's pickle cache of the slice index (``dataset_cache.pkl`` in the cwd).
        max_volumes: Keep only the first ``max_volumes`` volumes in file-name order (applied first).
        skip_files: File names (or paths) to leave out, e.g. ``CheckReport.bad_files``.
        seed: Seed of the subsampling (use ``run.seed``).

    Raises:
        DataError: missing folder, no ``.h5`` files, nothing left after skipping, unreadable header.
        ValueError: invalid rates or ``max_volumes``.
    """
    if sample_rate is not None and volume_sample_rate is not None:
        raise ValueError("set sample_rate (slices) or volume_sample_rate (volumes), not both")
    _check_rate("sample_rate", sample_rate)
    _check_rate("volume_sample_rate", volume_sample_rate)
    if max_volumes is not None and max_volumes < 1:
        raise ValueError(f"max_volumes = {max_volumes}: must be >= 1 or None")
    list_h5_files(root)  # clear errors for a missing or empty folder
    ds = FolderSliceDataset(root, transform, use_dataset_cache=use_dataset_cache, skip_files=skip_files)
    if not ds.raw_samples:
        raise DataError(root, f"no slices left (skipped: {sorted(ds.skip_files)})")

    names = sorted({Path(s[0]).name for s in ds.raw_samples})
    keep = set(names)
    if max_volumes is not None:
        keep = set(names[:max_volumes])
    rng = np.random.default_rng(seed_sequence("subsample", seed))
    if volume_sample_rate is not None:
        kept = sorted(keep)
        n = max(1, round(len(kept) * volume_sample_rate))
        keep = {kept[i] for i in rng.permutation(len(kept))[:n]}
    ds.raw_samples = [s for s in ds.raw_samples if Path(s[0]).name in keep]
    if sample_rate is not None:
        n = max(1, round(len(ds.raw_samples) * sample_rate))
        chosen = sorted(rng.permutation(len(ds.raw_samples))[:n].tolist())
        ds.raw_samples = [ds.raw_samples[i] for i in chosen]
    return ds


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (tuple, list, np.ndarray)):
        return tuple(_plain(v) for v in value)
    return value


def volume_table(dataset: SliceDataset) -> Dict[str, Dict[str, Any]]:
    """Per-volume metadata from ``dataset.raw_samples`` (no file access), for per-acquisition breakdowns.

    Returns:
        ``{file name: {"path", "acquisition", "num_slices" (in this dataset), "slices", "max", "patient_id",
        "recon_size", "encoding_size", "padding"}}`` in dataset order.
    """
    table: Dict[str, Dict[str, Any]] = {}
    for fname, slice_num, meta in dataset.raw_samples:
        name = Path(fname).name
        if name not in table:
            max_value = meta.get("max")
            table[name] = {
                "path": str(fname),
                "acquisition": _plain(meta.get("acquisition")),
                "num_slices": 0,
                "slices": [],
                "max": None if max_value is None else float(max_value),
                "patient_id": _plain(meta.get("patient_id")),
                "recon_size": _plain(meta.get("recon_size")),
                "encoding_size": _plain(meta.get("encoding_size")),
                "padding": (_plain(meta.get("padding_left")), _plain(meta.get("padding_right"))),
            }
        table[name]["num_slices"] += 1
        table[name]["slices"].append(int(slice_num))
    return table


def build_train_dataset(
    cfg: Any, augmentor: Optional[Any] = None, schedule: Optional[Callable[[int], float]] = None,
    skip_files: Iterable[PathLike] = (),
) -> FolderSliceDataset:
    """Training dataset from ``cfg.data`` (random masks per draw; MRAugment when ``augmentor`` is given).

    Pass the augmentor only for CPU augmentation (``aug.device == "cpu"``). The mask and augmentation streams
    start from ``("transform", run.seed)``; workers (:func:`build_loader`) and every training sample
    (:class:`varnet_ds.data.loader.PerSampleSeed`) re-seed them.
    """
    data = cfg.data
    if not data.train_path:
        raise ValueError("config key 'data.train_path' is not set")
    mask_func = build_mask_func(data.mask_type, data.center_fractions, data.accelerations)
    transform = VarNetTransform(mask_func, use_seed=False, augmentor=augmentor, schedule=schedule,
                                seed=cfg.run.seed, augment_on_device=augmentor is not None and cfg.aug.device == "cuda")
    transform.reseed(derive_seed("transform", cfg.run.seed))  # the mask RNG too, not only the generator
    return make_slice_dataset(
        data.train_path,
        transform,
        sample_rate=data.sample_rate,
        volume_sample_rate=data.volume_sample_rate,
        use_dataset_cache=data.use_dataset_cache,
        skip_files=skip_files,
        seed=cfg.run.seed,
    )


def build_eval_dataset(
    path: PathLike,
    mask_type: str,
    center_fraction: float,
    acceleration: int,
    max_volumes: Optional[int] = None,
    skip_files: Iterable[PathLike] = (),
    use_dataset_cache: bool = False,
) -> FolderSliceDataset:
    """Evaluation dataset at ONE (center fraction, acceleration); the mask is fixed per volume (file name)."""
    mask_func = build_mask_func(mask_type, [center_fraction], [acceleration])
    return make_slice_dataset(
        path,
        VarNetTransform(mask_func, use_seed=True),
        use_dataset_cache=use_dataset_cache,
        max_volumes=max_volumes,
        skip_files=skip_files,
    )

"""MRAugment in the training step (``aug.device: cuda``): loader workers ship the fully sampled k-space, the
augmentation, target re-simulation and masking run on the training device.

The worker-side transform (``VarNetTransform(augment_on_device=True)``) returns a :class:`FullySampledSample`
carrying the per-sample seeds it drew, so the device-side draw is as reproducible as the CPU path (seeded per
sample from run.seed, epoch, file and slice) and independent of ranks and workers.
"""

from __future__ import annotations

from typing import NamedTuple, Tuple

import torch
from fastmri.data import transforms as T
from fastmri.data.subsample import MaskFunc


class FullySampledSample(NamedTuple):
    """One slice before augmentation and masking (batched by the default collate).

    Attributes:
        kspace: fully sampled k-space ``[C, H, W, 2]``.
        target: RSS target ``[h, w]`` (replaced by the augmented one on the device).
        fname, slice_num, max_value, crop_size: as fastMRI's ``VarNetSample``.
        padding: ``(padding_left, padding_right)`` phase-encode columns that hold data.
        aug_seed: seed of the MRAugment draw. mask_seed: seed of the sampling mask.
        p: augmentation strength for this epoch.
    """

    kspace: torch.Tensor
    target: torch.Tensor
    fname: str
    slice_num: int
    max_value: float
    crop_size: Tuple[int, int]
    padding: Tuple[int, int]
    aug_seed: int
    mask_seed: int
    p: float


def _mask_on_device(kspace: torch.Tensor, mask_func: MaskFunc, seed: int, padding: Tuple[int, int]):
    """fastMRI's ``apply_mask`` for a k-space tensor on any device: ``[C, H, W, 2]`` -> masked, mask, ACS width."""
    shape = (1,) * len(kspace.shape[:-3]) + tuple(kspace.shape[-3:])
    mask, num_low = mask_func(shape, None, seed)
    mask[..., : int(padding[0]), :] = 0
    mask[..., int(padding[1]) :, :] = 0
    mask = mask.to(kspace.device)
    return kspace * mask + 0.0, mask.to(torch.bool), num_low


@torch.no_grad()
def augment_and_mask(batch: FullySampledSample, augmentor, mask_func: MaskFunc, device: torch.device) -> T.VarNetSample:
    """Augment every slice of ``batch`` on ``device``, re-simulate its target, then apply its sampling mask.

    Returns:
        A batched fastMRI ``VarNetSample`` as the CPU path would produce (different random draws).
    """
    kspaces, masks, targets, lows = [], [], [], []
    for b in range(batch.kspace.shape[0]):
        kspace = batch.kspace[b].to(device, non_blocking=True)
        target_size = tuple(int(s) for s in batch.target.shape[-2:])
        gen = torch.Generator().manual_seed(int(batch.aug_seed[b]))
        kspace, target = augmentor.augment(kspace, target_size, float(batch.p[b]), generator=gen)
        padding = (int(batch.padding[0][b]), int(batch.padding[1][b]))
        masked, mask, num_low = _mask_on_device(kspace, mask_func, int(batch.mask_seed[b]), padding)
        kspaces.append(masked)
        masks.append(mask)
        targets.append(target.to(device=device, dtype=batch.target.dtype))
        lows.append(num_low)
    return T.VarNetSample(
        masked_kspace=torch.stack(kspaces),
        mask=torch.stack(masks),
        num_low_frequencies=torch.tensor(lows),
        target=torch.stack(targets),
        fname=batch.fname,
        slice_num=batch.slice_num,
        max_value=batch.max_value,
        crop_size=batch.crop_size,
    )

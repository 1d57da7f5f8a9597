"""The one forward + loss contract (fastMRI's ``VarNetModule.training_step``): batch -> model -> centre crop ->
SSIM loss. The trainer, validation, offline export, planner and benchmark all go through these functions."""

from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch
from fastmri.data.transforms import center_crop_to_smallest
from fastmri.losses import SSIMLoss


def model_inputs(batch, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor, Optional[int]]:
    """Move a fastMRI ``VarNetSample`` batch to ``device``.

    Returns:
        ``masked_kspace [B, C, H, W, 2]``, ``mask [B, 1, 1, W, 1]`` and ``num_low_frequencies`` (an int when every
        sample of the batch agrees, else None: VarNet then finds the centre from the mask).
    """
    masked_kspace = batch.masked_kspace.to(device, non_blocking=True)
    mask = batch.mask.to(device, non_blocking=True)
    nlf = batch.num_low_frequencies
    if isinstance(nlf, torch.Tensor):
        nlf = int(nlf.view(-1)[0]) if nlf.numel() and bool((nlf == nlf.view(-1)[0]).all()) else None
    return masked_kspace, mask, nlf


def crop_pair(output: torch.Tensor, target: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Centre-crop reconstruction and target ``[B, H, W]`` to their common (target) size, as fastMRI validates."""
    target, output = center_crop_to_smallest(target, output)
    return output, target


def ssim_loss(device: torch.device) -> SSIMLoss:
    """fastMRI's SSIM loss module on ``device``."""
    return SSIMLoss().to(device)


def loss_of(output: torch.Tensor, target: torch.Tensor, max_value: torch.Tensor,
            loss_fn: Callable[..., torch.Tensor]) -> torch.Tensor:
    """SSIM loss of a reconstruction ``[B, H, W]`` against its target, both centre-cropped to the target size.

    The output is compared in fp32 (bf16 autocast outputs included); ``max_value [B]`` is the volume's maximum.
    """
    output, target = crop_pair(output, target)
    return loss_fn(output.unsqueeze(1).float(), target.unsqueeze(1).float(), data_range=max_value.float())


def train_loss(model: Callable[..., torch.Tensor], batch, loss_fn: Callable[..., torch.Tensor],
               device: torch.device) -> torch.Tensor:
    """Forward a ``VarNetSample`` batch and return its SSIM loss (a scalar tensor; no backward)."""
    output = model(*model_inputs(batch, device))
    return loss_of(output, batch.target.to(device), batch.max_value.to(device), loss_fn)

"""fastMRI's End-to-End VarNet with an activation-checkpointing policy and bf16 U-Nets around fp32 FFTs.

The module keeps fastMRI's parameter names, so ``state_dict()`` loads into a plain
``fastmri.models.VarNet`` with ``strict=True`` and vice versa.

Precision: with ``precision="bf16"`` only the U-Nets (the convolutions, where the activations and FLOPs are)
run under ``torch.autocast(dtype=torch.bfloat16)``; their outputs are cast back to fp32 before they meet the
sensitivity maps, so every FFT/IFFT, data-consistency term and coil combination runs in fp32 (cuFFT has no
bf16, and fp16 only for power-of-two sizes). The module's parameters always stay fp32.

Checkpointing (training only, non-reentrant ``torch.utils.checkpoint``):
    ``none``           store every activation;
    ``cascades``       store only each cascade's input k-space, recompute the cascade in backward;
    ``all``            ``cascades`` plus the sensitivity network;
    ``selective``      selective activation checkpointing of the cascades: keep the outputs of the U-Net
                       convolutions below full resolution, recompute everything else (full-resolution
                       convolutions, norms, activations, casts, FFTs, data consistency); the sensitivity network
                       stores its activations as under ``cascades``;
    ``selective_all``  ``selective`` plus the (fully) checkpointed sensitivity network of ``all``.

``selective`` sits between ``none`` and ``cascades``: each U-Net level below full resolution has about the
FLOPs of the full-resolution level at half its memory or less, so keeping their convolution outputs spares
~4/5 of the cascades' recompute FLOPs for about half the memory that keeping every convolution output would
cost; norm and activation outputs (two of every three activation tensors of a conv block) are always
recomputed (``torch.utils.checkpoint`` with ``create_selective_checkpoint_contexts``,
:class:`KeepLowResConvolutions`). The policy runs as a Python dispatch mode over every op of a cascade, so
whether it is faster than ``cascades`` on a given GPU is for ``python -m varnet_ds.bench`` / the planner to
measure.

Coil chunking (``sens_chunk = k > 0``): the sensitivity U-Net runs each coil as a batch element, so at 15-20
coils its activations are the largest single block of memory. With ``k`` it runs ``k`` coils at a time; under
``checkpointing="all"`` (or ``selective_all``) each chunk is its own checkpoint, so the recompute in backward
holds one chunk's activations instead of every coil's. The U-Net normalises each batch element on its own, so
chunking changes no result beyond float summation order (maps and gradients equal to 1e-6; tested).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Mapping, Optional

import torch
from fastmri.models import VarNet
from fastmri.models.varnet import NormUnet
from torch import nn
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from varnet_ds.config import CHECKPOINTING, PRECISIONS, SIZE_KEYS, ModelConfig
from varnet_ds.model.compiled import compiled_norm_unet

SENS_CHECKPOINTED = ("all", "selective_all")  # policies that checkpoint the sensitivity network
CONVOLUTION = torch.ops.aten.convolution.default  # conv2d and conv_transpose2d below autograd


class KeepLowResConvolutions:
    """Selective-checkpointing policy: save the outputs of convolutions below full resolution, recompute the rest.

    A U-Net level's activation memory halves with every pooling (4x fewer pixels, 2x more channels) while its
    convolution FLOPs stay about the same, so the full-resolution level holds about half of the convolution
    outputs but only ~1/5 of the FLOPs (default VarNet, 4 pools). Saving every convolution output except those
    with more than ``max_pixels`` output pixels keeps ~4/5 of the convolution work out of the recompute for about
    half the memory of saving them all.

    Args:
        max_pixels: largest output ``H x W`` whose convolution output is saved (``None``: every convolution).
    """

    def __init__(self, max_pixels: Optional[int] = None) -> None:
        self.max_pixels = max_pixels

    def __call__(self, ctx, op, *args, **kwargs) -> CheckpointPolicy:
        if op is not CONVOLUTION:
            return CheckpointPolicy.PREFER_RECOMPUTE
        if self.max_pixels is not None:
            x, stride, transposed = args[0], args[3], args[6]
            scale = math.prod(stride)
            pixels = x.shape[-2] * x.shape[-1]
            pixels = pixels * scale if transposed else pixels // scale
            if pixels > self.max_pixels:
                return CheckpointPolicy.PREFER_RECOMPUTE
        return CheckpointPolicy.MUST_SAVE


def selective_checkpoint(fn, *args, max_pixels: Optional[int] = None):
    """Non-reentrant ``torch.utils.checkpoint`` of ``fn(*args)`` keeping the convolution outputs of at most
    ``max_pixels`` pixels (see :class:`KeepLowResConvolutions`)."""
    context_fn = functools.partial(create_selective_checkpoint_contexts, KeepLowResConvolutions(max_pixels))
    return checkpoint(fn, *args, use_reentrant=False, context_fn=context_fn)


class PrecisionNormUnet(NormUnet):
    """fastMRI's NormUnet whose U-Net runs under bf16 autocast when enabled; output always fp32.

    Input/output: complex images ``[B, C, H, W, 2]``.
    """

    def __init__(self, chans: int, num_pools: int, bf16: bool = False, chunk: int = 0,
                 checkpoint_chunks: bool = False, compiled: bool = False) -> None:
        super().__init__(chans, num_pools)
        self.bf16 = bf16
        self.chunk = chunk  # batch elements per U-Net call (0: all at once)
        self.checkpoint_chunks = checkpoint_chunks  # each chunk its own checkpoint (training only)
        self.compiled = compiled  # run through the shared torch.compile'd forward (varnet_ds.model.compiled)

    def _norm_unet(self, x: torch.Tensor) -> torch.Tensor:
        if self.compiled:
            return compiled_norm_unet()(self, x)
        return super().forward(x)

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        if not self.bf16:
            return self._norm_unet(x)
        with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16):
            out = self._norm_unet(x.float())
        return out.float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        if self.checkpoint_chunks and self.training and torch.is_grad_enabled():
            run = functools.partial(checkpoint, self._run, use_reentrant=False)
        else:
            run = self._run
        if self.chunk <= 0 or x.shape[0] <= self.chunk:
            return run(x)
        return torch.cat([run(part) for part in torch.split(x, self.chunk, dim=0)], dim=0)


class VarNetDS(VarNet):
    """End-to-End VarNet (fastMRI) with a checkpointing policy and mixed-precision U-Nets.

    Args:
        num_cascades: number of unrolled cascades (fastMRI default 12).
        sens_chans: channels of the sensitivity U-Net (8).
        sens_pools: pooling layers of the sensitivity U-Net (4).
        chans: channels of each cascade U-Net (18).
        pools: pooling layers of each cascade U-Net (4).
        checkpointing: ``none`` | ``cascades`` | ``all`` | ``selective`` | ``selective_all``.
        precision: ``fp32`` | ``bf16`` (autocast U-Nets, fp32 FFT islands).
        sens_chunk: coils per sensitivity U-Net call (0: all at once); see the module docstring.
        compile_unets: run every U-Net through one shared ``torch.compile`` graph (:mod:`varnet_ds.model.compiled`).
    """

    def __init__(
        self,
        num_cascades: int = 12,
        sens_chans: int = 8,
        sens_pools: int = 4,
        chans: int = 18,
        pools: int = 4,
        checkpointing: str = "cascades",
        precision: str = "fp32",
        sens_chunk: int = 0,
        compile_unets: bool = False,
    ) -> None:
        if checkpointing not in CHECKPOINTING:
            raise ValueError(f"model.checkpointing = {checkpointing!r}: must be one of {list(CHECKPOINTING)}")
        if precision not in PRECISIONS:
            raise ValueError(f"train.precision = {precision!r}: must be one of {list(PRECISIONS)}")
        if sens_chunk < 0:
            raise ValueError(f"model.sens_chunk = {sens_chunk}: must be >= 0 (0 = all coils at once)")
        super().__init__(num_cascades, sens_chans, sens_pools, chans, pools)
        bf16 = precision == "bf16"
        # Same attribute names as fastMRI -> identical state_dict keys.
        # With chunks under "all"/"selective_all", each chunk is checkpointed inside the U-Net instead of the
        # whole sens_net.
        sens_ckpt = checkpointing in SENS_CHECKPOINTED
        self.sens_net.norm_unet = PrecisionNormUnet(sens_chans, sens_pools, bf16, chunk=sens_chunk,
                                                    checkpoint_chunks=sens_ckpt and sens_chunk > 0,
                                                    compiled=compile_unets)
        for cascade in self.cascades:
            cascade.model = PrecisionNormUnet(chans, pools, bf16, compiled=compile_unets)
        self.checkpointing = checkpointing
        self.precision = precision
        self.sens_chunk = sens_chunk
        self.compile_unets = compile_unets

    def _ckpt_active(self) -> bool:
        return self.training and torch.is_grad_enabled() and self.checkpointing != "none"

    def forward(
        self,
        masked_kspace: torch.Tensor,
        mask: torch.Tensor,
        num_low_frequencies: Optional[int] = None,
    ) -> torch.Tensor:
        """Reconstruct an RSS image.

        Args:
            masked_kspace: undersampled multi-coil k-space ``[B, C, H, W, 2]`` (fp32).
            mask: sampling mask broadcastable to the k-space, ``[B, 1, 1, W, 1]`` (bool).
            num_low_frequencies: ACS width; ``None``/0 infers it from the mask.

        Returns:
            RSS magnitude image ``[B, H, W]`` at the full k-space size (crop to the target afterwards).
        """
        ckpt = self._ckpt_active()
        if ckpt and self.checkpointing in SENS_CHECKPOINTED and not self.sens_chunk:
            sens_maps = checkpoint(
                self.sens_net, masked_kspace, mask, num_low_frequencies, use_reentrant=False
            )
        else:
            sens_maps = self.sens_net(masked_kspace, mask, num_low_frequencies)
        if not ckpt:
            run_cascade = _call
        elif self.checkpointing.startswith("selective"):  # keep conv outputs of U-Net levels 1.. (<= 1/4 pixels)
            full_pixels = masked_kspace.shape[-3] * masked_kspace.shape[-2]  # the cascade U-Nets' input size
            run_cascade = functools.partial(selective_checkpoint, max_pixels=full_pixels // 2)
        else:
            run_cascade = functools.partial(checkpoint, use_reentrant=False)
        kspace_pred = masked_kspace.clone()
        for cascade in self.cascades:
            kspace_pred = run_cascade(cascade, kspace_pred, masked_kspace, mask, sens_maps)
        return _rss_image(kspace_pred)


def _call(fn, *args):
    return fn(*args)


def _rss_image(kspace: torch.Tensor) -> torch.Tensor:
    """RSS of the coil images of ``kspace`` ``[B, C, H, W, 2]`` -> ``[B, H, W]`` (fp32)."""
    import fastmri

    return fastmri.rss(fastmri.complex_abs(fastmri.ifft2c(kspace.float())), dim=1)


OPTION_KEYS = ("checkpointing", "sens_chunk", "compile")  # ModelConfig fields besides the sizes


def build_model(sizes_or_model_cfg: Any, precision: str = "fp32", *, checkpointing: Optional[str] = None,
                sens_chunk: Optional[int] = None, compile: Optional[bool] = None) -> VarNetDS:
    """Build :class:`VarNetDS` from model sizes: the one place a ``VarNetDS`` is constructed outside tests.

    Args:
        sizes_or_model_cfg: the ``model`` config section (``ModelConfig``, its ``DictConfig``) or a mapping with
            the :data:`~varnet_ds.config.SIZE_KEYS` and optionally ``checkpointing``, ``sens_chunk``, ``compile``.
        precision: ``fp32`` | ``bf16`` (``train.precision``).
        checkpointing: overrides the section's ``checkpointing`` (absent there: ``ModelConfig``'s default).
        sens_chunk: overrides the section's ``sens_chunk`` (absent there: 0, all coils at once).
        compile: overrides the section's ``compile`` (absent there: False).

    Raises:
        ValueError: a size is missing or a key is unknown (both named), or an invalid option value.
    """
    src = sizes_or_model_cfg
    if isinstance(src, Mapping):
        unknown = sorted(set(src) - set(SIZE_KEYS) - set(OPTION_KEYS))
        if unknown:
            raise ValueError(f"unknown model keys {unknown}; expected {list(SIZE_KEYS + OPTION_KEYS)}")
        get = src.get
    else:
        def get(key: str) -> Any:
            return getattr(src, key, None)
    missing = [f"model.{k}" for k in SIZE_KEYS if get(k) is None]
    if missing:
        raise ValueError(f"model config lacks {missing}")
    chosen, defaults = dict(checkpointing=checkpointing, sens_chunk=sens_chunk, compile=compile), ModelConfig()
    opt = {k: next(v for v in (chosen[k], get(k), getattr(defaults, k)) if v is not None) for k in OPTION_KEYS}
    return VarNetDS(**{k: int(get(k)) for k in SIZE_KEYS}, checkpointing=str(opt["checkpointing"]),
                    precision=precision, sens_chunk=int(opt["sens_chunk"]), compile_unets=bool(opt["compile"]))


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


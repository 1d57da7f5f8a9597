"""``torch.compile`` of fastMRI's NormUnet: one graph for every U-Net of a VarNet (``model.compile: true``).

Why: the U-Nets' instance norms, LeakyReLUs, casts, pads and concatenations are memory-bound passes over
full-resolution activations; Inductor fuses them into fewer kernels. How: :func:`norm_unet_forward` is fastMRI's
``NormUnet.forward`` + ``Unet.forward`` written as one function of ``(net, x)`` without graph breaks (fastMRI's
U-Net decides its reflect padding with ``torch.sum(torch.tensor(padding)) != 0``, a data-dependent branch that
breaks the graph at every level; here the same decision is taken on Python ints). The module is an argument, not
the compiled object, so Dynamo traces one graph per input shape / precision / grad mode and reuses it for all 12
cascades (and the sensitivity net at its own shapes) instead of compiling each module instance. Same modules,
same parameters, same ``state_dict`` keys; results equal fastMRI's forward up to float reordering (tested).
"""

from __future__ import annotations

import functools
from typing import Callable

import torch
import torch.nn.functional as F
from fastmri.models.unet import Unet
from fastmri.models.varnet import NormUnet


def unet_forward(unet: Unet, image: torch.Tensor) -> torch.Tensor:
    """fastMRI ``Unet.forward`` without graph breaks: ``[N, in_chans, H, W]`` -> ``[N, out_chans, H, W]``."""
    stack = []
    output = image
    for layer in unet.down_sample_layers:
        output = layer(output)
        stack.append(output)
        output = F.avg_pool2d(output, kernel_size=2, stride=2, padding=0)
    output = unet.conv(output)
    for transpose_conv, conv in zip(unet.up_transpose_conv, unet.up_conv):
        skip = stack.pop()
        output = transpose_conv(output)
        pad_right = int(output.shape[-1] != skip.shape[-1])  # odd sizes: reflect-pad right/bottom by one
        pad_bottom = int(output.shape[-2] != skip.shape[-2])
        if pad_right or pad_bottom:
            output = F.pad(output, [0, pad_right, 0, pad_bottom], "reflect")
        output = conv(torch.cat([output, skip], dim=1))
    return output


def norm_unet_forward(net: NormUnet, x: torch.Tensor) -> torch.Tensor:
    """fastMRI ``NormUnet.forward`` with :func:`unet_forward`: complex ``[B, C, H, W, 2]`` in and out."""
    if x.shape[-1] != 2:
        raise ValueError(f"NormUnet input must have a last dimension of 2 (real, imag), got shape {tuple(x.shape)}")
    x = net.complex_to_chan_dim(x)
    x, mean, std = net.norm(x)
    x, pad_sizes = net.pad(x)
    x = unet_forward(net.unet, x)
    x = net.unpad(x, *pad_sizes)
    x = net.unnorm(x, mean, std)
    return net.chan_complex_to_last_dim(x)


BACKEND = "inductor"  # torch.compile backend (tests use "aot_eager": same tracing, no code generation)


def compiled_norm_unet() -> Callable[[NormUnet, torch.Tensor], torch.Tensor]:
    """The process-wide compiled :func:`norm_unet_forward` for :data:`BACKEND` (compiled lazily, per shape)."""
    return _compiled(BACKEND)


@functools.cache
def _compiled(backend: str) -> Callable[[NormUnet, torch.Tensor], torch.Tensor]:
    return torch.compile(norm_unet_forward, backend=backend)

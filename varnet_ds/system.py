"""What this process runs on: library versions, the device name and memory counters (peak, release)."""

from __future__ import annotations

import gc
import platform
import resource
import time
from typing import Dict, Optional, Union

import torch

from varnet_ds.provenance import library_versions

GIB = 2**30


def device_name() -> str:
    """The CUDA device's name, else the CPU's."""
    return torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu"


def versions() -> Dict[str, Optional[str]]:
    """Library versions and device recorded in every benchmark (runs record :mod:`varnet_ds.provenance`).

    Read from the installed distributions' metadata (``None``: not installed): importing wandb only for its
    version would cost every training process about a second of start-up when W&B is off.
    """
    return {"python": platform.python_version(), **library_versions(), "torch": torch.__version__,
            "device": device_name(), "date": time.strftime("%Y-%m-%d")}


def resolve_device(device: Union[str, torch.device]) -> torch.device:
    """``torch.device`` from a name; a clear error when CUDA is asked for and missing."""
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available here (torch.cuda.is_available() is False)")
    return dev


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak-memory window (CUDA; the CPU's resident peak cannot be reset)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: torch.device) -> float:
    """Peak allocated GPU memory (CUDA), or the process's peak resident memory on CPU, in GiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / GIB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def release_memory(device: torch.device) -> None:
    """Collect garbage (engine/optimizer cycles) and hand cached CUDA blocks back, so the next run starts clean."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()

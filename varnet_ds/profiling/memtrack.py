"""Device-independent memory accounting: the peak of live tensor bytes during a training step, on any device.

PyTorch keeps allocator statistics only for CUDA. :class:`LiveTensorMemory` counts instead what every
allocator has to hold: the bytes of every tensor storage alive at each operator call. It is a
``TorchDispatchMode``, so it sees every ATen op, including those autograd runs in backward and the recompute of
checkpointed regions, and it works on CPU. Run a training step on the CPU inside it and you get the step's
tensor-memory peak, which is what ``torch.cuda.max_memory_allocated`` reports for the same step on a GPU minus
what only a GPU allocates: cuDNN/cuFFT workspaces, the caching allocator's 512-byte rounding, and any op whose
CUDA kernel saves different tensors. ``python -m varnet_ds.bench`` on a CPU reports these estimates (``~``);
docs/measurements/2026-11-27-cpu-memory.md compares them with the H100 reference figures.

Not seen: memory an op allocates and frees inside its own kernel (scratch space), and tensors created outside
the mode that were not registered with :meth:`LiveTensorMemory.track`.

    mem = LiveTensorMemory()
    mem.track(model, batch)              # what existed before the step
    with mem:
        step()                           # forward, backward, optimizer step
    print(mem.peak_bytes / 2**30, mem.peak_op)
"""

from __future__ import annotations

import gc
from typing import Any, Callable, Dict, Iterable, NamedTuple, Optional, Tuple

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

__all__ = ["LiveTensorMemory", "StepCost", "measure_step"]


class LiveTensorMemory(TorchDispatchMode):
    """Track the bytes of live tensor storages across ops; keep the peak and the op at which it happened.

    Attributes:
        current_bytes: bytes of the storages alive after the last op.
        peak_bytes: the largest ``current_bytes`` seen (outputs of an op counted while its inputs are alive).
        peak_op: name of the ATen op that set the peak.
        ops: number of ops seen.
    """

    def __init__(self) -> None:
        super().__init__()
        self._live: Dict[int, Tuple[StorageWeakRef, int]] = {}
        self.current_bytes = 0
        self.peak_bytes = 0
        self.peak_op = ""
        self.ops = 0

    # ------------------------------------------------------------------------------------------ registration
    def _add(self, tensor: torch.Tensor) -> None:
        if tensor.is_meta or tensor.layout != torch.strided:
            return
        try:
            storage = tensor.untyped_storage()
        except (RuntimeError, NotImplementedError):  # tensor subclasses without a storage of their own
            return
        key = storage._cdata
        if key in self._live and not self._live[key][0].expired():
            return
        nbytes = storage.nbytes()
        self._live[key] = (StorageWeakRef(storage), nbytes)
        self.current_bytes += nbytes

    def track(self, *objects: Any) -> LiveTensorMemory:
        """Register tensors that exist before tracking starts (modules, optimizers, tensors, nested containers).

        Modules contribute parameters, gradients and buffers; optimizers their state tensors.
        """
        for obj in objects:
            for tensor in _tensors_of(obj):
                self._add(tensor)
        self._set_peak("track")
        return self

    def track_live(self) -> LiveTensorMemory:
        """Register every tensor the garbage collector can reach now (whatever exists before the step)."""
        self.track([obj for obj in gc.get_objects() if issubclass(type(obj), torch.Tensor)])
        return self

    # ------------------------------------------------------------------------------------------ accounting
    def _sweep(self) -> None:
        dead = [key for key, (ref, _) in self._live.items() if ref.expired()]
        for key in dead:
            self.current_bytes -= self._live.pop(key)[1]

    def _set_peak(self, name: str) -> None:
        if self.current_bytes > self.peak_bytes:
            self.peak_bytes = self.current_bytes
            self.peak_op = name

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: D105
        self._sweep()  # frees between ops happened before this op started
        out = func(*args, **(kwargs or {}))
        self.ops += 1
        for item in tree_flatten(out)[0]:
            if isinstance(item, torch.Tensor):
                self._add(item)
        self._set_peak(str(func.__name__))
        return out

    def __exit__(self, *exc) -> None:
        result = super().__exit__(*exc)
        self._sweep()
        return result


def _tensors_of(obj: Any) -> Iterable[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
        if obj.is_leaf and obj.grad is not None:  # only leaves carry .grad
            yield obj.grad
    elif isinstance(obj, torch.nn.Module):
        for p in obj.parameters():
            yield from _tensors_of(p)
        yield from obj.buffers()
    elif isinstance(obj, torch.optim.Optimizer):
        for state in obj.state.values():
            yield from _tensors_of(list(state.values()))
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors_of(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors_of(v)


class StepCost(NamedTuple):
    """What one training step costs, counted op by op.

    Attributes:
        peak_bytes: live tensor bytes at the step's peak (``None`` when memory was not tracked).
        peak_op: the ATen op at the peak.
        flops: FLOPs of the step counted by ``torch.utils.flop_counter`` (convolutions and matmuls, recompute
            of checkpointed regions included; FFTs and elementwise ops are not counted).
    """

    peak_bytes: Optional[int]
    peak_op: str
    flops: int


def measure_step(step: Callable[[], Any], track_memory: bool = True) -> StepCost:
    """Count the FLOPs of one run of ``step`` and, if ``track_memory``, its tensor-memory peak in a second run.

    The two counts take separate runs because the FLOP counter's module hooks keep some outputs alive longer than
    training does. Everything alive before the memory run (parameters, gradients, optimizer and DeepSpeed buffers,
    the batch) is found with a garbage-collector scan and counted from the start, so ``peak_bytes`` is the whole
    process's tensor peak.
    """
    from torch.utils.flop_counter import FlopCounterMode

    flop_counter = FlopCounterMode(display=False)
    with flop_counter:
        step()
    if not track_memory:
        return StepCost(None, "", flop_counter.get_total_flops())
    gc.collect()
    mem = LiveTensorMemory().track_live()
    with mem:
        step()
    return StepCost(mem.peak_bytes, mem.peak_op, flop_counter.get_total_flops())

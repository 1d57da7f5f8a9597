"""Memory-budget planner: pick the fastest checkpointing x precision policy whose measured peak fits a budget.

    choice = plan(cfg.model, [cfg.data.train_path], budget_gib=2.0, device=torch.device("cuda"),
                  ds_config="ds_configs/zero2.json")
    cfg.model.checkpointing, cfg.train.precision = choice.policy.checkpointing, choice.policy.precision

Steps: :func:`largest_shape` reads the data folders' headers; :func:`profile_policies` trains a fresh
:class:`~varnet_ds.model.varnet.VarNetDS` for a few steps per policy on the actual CUDA device (plain PyTorch: Adam,
fastMRI ``SSIMLoss``; no DeepSpeed and no process group needed) and records the peak of
``torch.cuda.max_memory_allocated`` over all steps, warm-up included, and the median step time after warm-up;
:func:`choose_policy` (a pure function) takes the fastest policy with ``peak x (1 + margin) <= budget``.

DeepSpeed margin: the profile runs without DeepSpeed, because ZeRO-2's model-state sharding moves little for a
30 M-parameter VarNet (model states are ~0.45 GiB against GiBs of activations). What DeepSpeed adds on top of
plain PyTorch is added to every profiled peak (:func:`deepspeed_extra_bytes`) when a ds config is given:
``reduce_bucket_size x 4 bytes x 2`` (gradient bucket buffers, double-buffered with ``overlap_comm``) plus, for
ZeRO stage >= 1, the fp32 master copy of this rank's parameter partition (``num_params x 4 / world_size``; DeepSpeed
clones it even in fp32 training). For ds_configs/zero2.json (2e7-element buckets) and the default VarNet on one
GPU that is 0.149 + 0.112 = 0.261 GiB.

CPU: PyTorch has no peak-memory counter for CPU tensors and CPU step times say nothing about GPU ones, so the
planner only works on CUDA; on CPU set ``model.checkpointing`` / ``train.precision`` by hand. To see what each
policy would need on a GPU before you have one, ``python -m varnet_ds.bench --ds none zero2 --shape ...`` prints
CPU estimates of every policy's peak (:mod:`varnet_ds.profiling.memtrack`).
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import torch

from varnet_ds.config import CHECKPOINTING, PRECISIONS
from varnet_ds.model.step import loss_of, ssim_loss
from varnet_ds.model.varnet import SENS_CHECKPOINTED, build_model, count_parameters
from varnet_ds.seeding import derive_seed
from varnet_ds.system import GIB, release_memory

PathLike = Union[str, Path]
Batch = Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
DS_DEFAULT_BUCKET = 500_000_000  # DeepSpeed's reduce_bucket_size default (elements)


def print_log(line: str) -> None:
    """Default log sink: one ``[varnet_ds]`` line on stdout, like the engine's messages."""
    print(f"[varnet_ds] {line}", flush=True)


class PlannerError(RuntimeError):
    """The planner cannot run here (e.g. no CUDA device)."""


class BudgetError(PlannerError):
    """No policy fits the memory budget; the message says what would."""


@dataclass(frozen=True)
class Policy:
    """One activation-checkpointing x precision (x sensitivity-net coil chunk) choice.

    ``model.checkpointing`` x ``train.precision`` x ``model.sens_chunk`` (coils per sensitivity U-Net call;
    0 = all at once; only changes memory under ``checkpointing="all"`` or ``"selective_all"``).
    """

    checkpointing: str
    precision: str
    sens_chunk: int = 0

    def __post_init__(self) -> None:
        if self.sens_chunk < 0:
            raise ValueError(f"model.sens_chunk = {self.sens_chunk}: must be >= 0")
        if self.checkpointing not in CHECKPOINTING:
            raise ValueError(f"model.checkpointing = {self.checkpointing!r}: must be one of {list(CHECKPOINTING)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"train.precision = {self.precision!r}: must be one of {list(PRECISIONS)}")

    def overrides(self) -> List[str]:
        """Config dotlist that selects this policy."""
        return [f"model.checkpointing={self.checkpointing}", f"train.precision={self.precision}",
                f"model.sens_chunk={self.sens_chunk}"]

    def __str__(self) -> str:
        return " ".join(self.overrides()[: 3 if self.sens_chunk else 2])


SENS_CHUNK = 4  # coils per sensitivity U-Net call in the chunked candidates
POLICIES: Tuple[Policy, ...] = tuple(Policy(c, p) for c in CHECKPOINTING for p in PRECISIONS) + tuple(
    Policy(c, p, SENS_CHUNK) for c in SENS_CHECKPOINTED for p in PRECISIONS)


class PolicyProfile(NamedTuple):
    """Measured cost of one policy.

    Attributes:
        policy: the policy.
        peak_gib: peak GiB used for the decision: measured peak + ``ds_extra_gib`` (``inf``: ran out of memory).
        step_s: median seconds per training step after warm-up (``inf`` when it ran out of memory).
        ds_extra_gib: DeepSpeed margin included in ``peak_gib`` (0 without a ds config).
    """

    policy: Policy
    peak_gib: float
    step_s: float
    ds_extra_gib: float = 0.0


class Choice(NamedTuple):
    """The planner's decision: the policy, its profile and a one-line reason."""

    policy: Policy
    profile: PolicyProfile
    reason: str


# ---------------------------------------------------------------------------------------------- measuring


def make_batch(coils: int, h: int, w: int, device: Union[str, torch.device], batch_size: int = 1,
               acceleration: int = 4, seed: int = 0) -> Batch:
    """A random masked multi-coil k-space batch, its equispaced mask and a target of up to 320x320.

    Returns:
        ``(masked_kspace [B, coils, h, w, 2], mask [B, 1, 1, w, 1] bool, target [B, th, tw], max_value [B])``.
    """
    g = torch.Generator().manual_seed(derive_seed("planner", 0, seed))
    kspace = torch.randn(batch_size, coils, h, w, 2, generator=g) * 1e-4
    mask = torch.zeros(batch_size, 1, 1, w, 1, dtype=torch.bool)
    mask[..., ::acceleration, :] = True
    center = max(int(round(w * 0.08)), 2)
    mask[..., (w - center + 1) // 2 : (w - center + 1) // 2 + center, :] = True
    th, tw = min(h // 2, 320), min(w, 320)
    target = torch.rand(batch_size, th, tw, generator=g) * 1e-4
    max_value = torch.full((batch_size,), 1e-4)
    return (kspace * mask).to(device), mask.to(device), target.to(device), max_value.to(device)


def train_step_fn(model: Callable, backward: Callable, optimizer_step: Callable, batch: Batch,
                  loss_fn: torch.nn.Module) -> Callable[[], float]:
    """One training step closure: forward, fastMRI SSIM loss on the centre crop, backward, optimizer step."""
    kspace, mask, target, max_value = batch

    def step() -> float:
        loss = loss_of(model(kspace, mask, None), target, max_value, loss_fn)
        backward(loss)
        optimizer_step()
        return float(loss.detach())

    return step


def time_steps(step: Callable[[], float], device: torch.device, steps: int) -> Tuple[List[float], float]:
    """Run ``steps`` timed steps (synchronising CUDA); returns the per-step seconds and the last loss."""
    times: List[float] = []
    loss = float("nan")
    for _ in range(steps):
        t0 = time.perf_counter()
        loss = step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return times, loss


def run_policy(model_cfg: Any, policy: Policy, batch: Batch, device: torch.device,
               steps: int) -> Tuple[float, float]:
    """Train a fresh :class:`VarNetDS` under ``policy`` with plain Adam: one warm-up step + ``steps`` timed ones.

    Args:
        model_cfg: the ``model`` config section or a mapping of the sizes (:func:`varnet_ds.model.varnet.build_model`);
            ``model.compile: true`` profiles the compiled U-Nets; ``policy`` sets the rest.

    Returns:
        ``(median step seconds after warm-up, last loss)``.
    """
    torch.manual_seed(derive_seed("planner", 1))  # the same initial weights for every policy
    model = build_model(model_cfg, policy.precision, checkpointing=policy.checkpointing,
                        sens_chunk=policy.sens_chunk).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-4)

    def opt_step() -> None:
        opt.step()
        opt.zero_grad(set_to_none=True)

    step = train_step_fn(model, lambda loss: loss.backward(), opt_step, batch, ssim_loss(device))
    time_steps(step, device, 1)  # warm-up: cuDNN autotune, Adam state allocation
    times, loss = time_steps(step, device, steps)
    return statistics.median(times), loss


# ---------------------------------------------------------------------------------------------- planning


def deepspeed_extra_bytes(ds_config: Union[None, PathLike, Mapping[str, Any]], num_params: int,
                          world_size: int = 1) -> int:
    """Bytes DeepSpeed adds over plain PyTorch for a ds config (see the module docstring); 0 for ``None``.

    ``reduce_bucket_size x 4 x 2`` (DeepSpeed's 5e8 default when the key is absent and stage >= 1) plus, for
    stage >= 1, the fp32 master partition ``num_params x 4 / world_size`` (on the CPU, so not counted, when
    ``offload_optimizer.device`` is ``cpu``/``nvme``).
    """
    if ds_config is None:
        return 0
    if not isinstance(ds_config, Mapping):
        path = Path(ds_config)
        try:
            ds_config = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"ds config {path}: cannot read JSON ({err})") from None
    zero = ds_config.get("zero_optimization", {}) or {}
    stage = int(zero.get("stage", 0))
    bucket = zero.get("reduce_bucket_size", DS_DEFAULT_BUCKET if stage >= 1 else 0)
    extra = int(float(bucket)) * 4 * 2
    offload = (zero.get("offload_optimizer") or {}).get("device", "none") in ("cpu", "nvme")
    if stage >= 1 and not offload:
        extra += num_params * 4 // max(world_size, 1)
    return extra


def require_cuda(device: Union[str, torch.device]) -> torch.device:
    """``device`` as a ``torch.device``; raises :class:`PlannerError` unless it is CUDA."""
    device = torch.device(device)
    if device.type != "cuda":
        raise PlannerError(
            f"the memory planner profiles CUDA memory (device here: {device}); on CPU set model.checkpointing / "
            "train.precision by hand and leave train.memory_budget_gib unset"
        )
    return device


def profile_policies(model_cfg: Any, shape: Tuple[int, int, int], device: Union[str, torch.device],
                     steps: int = 2, policies: Optional[Iterable[Policy]] = None, batch_size: int = 1,
                     ds_config: Union[None, PathLike, Mapping[str, Any]] = None,
                     world_size: int = 1, log: Optional[Callable[[str], None]] = None) -> List[PolicyProfile]:
    """Profile each policy for ``steps`` training steps (plus one warm-up) on a CUDA device.

    Args:
        model_cfg: the ``model`` config section or a mapping of the sizes (its ``checkpointing`` and ``sens_chunk``
            are ignored: each policy sets them; ``compile: true`` profiles the compiled U-Nets).
        shape: ``(coils, H, W)`` k-space size to profile (see :func:`largest_shape`).
        device: a CUDA device.
        steps: timed steps per policy (>= 1).
        policies: candidates (default :data:`POLICIES`: every checkpointing x precision pair, and ``all`` and
            ``selective_all`` with a chunked sensitivity net in both precisions: 14).
        batch_size: slices per step (``data.batch_size``).
        ds_config: DeepSpeed JSON path or dict whose overhead is added to every peak (``None``: no margin).
        world_size: data-parallel ranks (shrinks the ZeRO master-copy share).
        log: sink for one line per policy (default :func:`print_log`; pass ``lambda s: None`` on ranks > 0).

    Returns:
        One :class:`PolicyProfile` per policy, in the given order; a policy that runs out of device memory gets
        ``peak_gib = step_s = inf``.

    Raises:
        PlannerError: ``device`` is not CUDA.
    """
    device = require_cuda(device)
    if steps < 1:
        raise ValueError(f"steps = {steps}: must be >= 1")
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"shape = {shape}: must be (coils, H, W) with positive sizes")
    num_params = count_parameters(build_model(model_cfg, checkpointing="none"))  # also checks the sizes
    extra_gib = deepspeed_extra_bytes(ds_config, num_params, world_size) / GIB
    results = []
    for policy in list(POLICIES if policies is None else policies):
        release_memory(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        try:
            batch = make_batch(*shape, device=device, batch_size=batch_size)
            step_s, _ = run_policy(model_cfg, policy, batch, device, steps)
            peak = (torch.cuda.max_memory_allocated(device) - base) / GIB + extra_gib
        except torch.cuda.OutOfMemoryError:
            step_s, peak = float("inf"), float("inf")
        batch = None
        results.append(PolicyProfile(policy, peak, step_s, extra_gib))
        (log or print_log)(f"memory planner: {policy}: peak {peak:.2f} GiB (incl. {extra_gib:.2f} GiB DeepSpeed "
                           f"margin), {step_s:.3f} s/step")
    release_memory(device)
    return results


def choose_policy(profiles: Sequence[PolicyProfile], budget_gib: float, margin: float = 0.10) -> Choice:
    """The fastest profiled policy whose ``peak_gib x (1 + margin)`` is within ``budget_gib`` (pure function).

    Ties in step time go to the smaller peak.

    Raises:
        ValueError: empty ``profiles``, non-positive budget or negative margin.
        BudgetError: nothing fits; the message gives the smallest measured peak, its policy and the budget it needs.
    """
    if not profiles:
        raise ValueError("choose_policy: no profiles given")
    if not budget_gib > 0:
        raise ValueError(f"train.memory_budget_gib = {budget_gib}: must be > 0")
    if margin < 0:
        raise ValueError(f"margin = {margin}: must be >= 0")
    factor = 1.0 + margin
    fits = [p for p in profiles if p.peak_gib * factor <= budget_gib]
    if not fits:
        smallest = min(profiles, key=lambda p: (p.peak_gib, p.step_s))
        if smallest.peak_gib == float("inf"):
            raise BudgetError(f"train.memory_budget_gib = {budget_gib:g}: every policy ran out of device memory "
                              "while profiling; reduce coils / crop the k-space or use a larger GPU")
        raise BudgetError(
            f"train.memory_budget_gib = {budget_gib:g} is too small: needs >= {smallest.peak_gib * factor:.2f} GiB "
            f"({margin:.0%} margin); fits with {smallest.policy} at {smallest.peak_gib:.2f} GiB peak, "
            "or reduce coils / crop the k-space"
        )
    best = min(fits, key=lambda p: (p.step_s, p.peak_gib))
    faster = [p for p in profiles if p.step_s < best.step_s]
    why = ""
    if faster:
        quickest = min(faster, key=lambda p: p.step_s)
        why = f"; faster {quickest.policy} ({quickest.step_s:.3f} s) needs {quickest.peak_gib * factor:.2f} GiB"
    reason = (f"{best.policy}: fastest policy that fits, peak {best.peak_gib:.2f} GiB x {factor:.2f} = "
              f"{best.peak_gib * factor:.2f} GiB <= budget {budget_gib:g} GiB, {best.step_s:.3f} s/step{why}")
    return Choice(best.policy, best, reason)


def largest_shape(folders: Union[PathLike, Sequence[PathLike]]) -> Tuple[int, int, int]:
    """The ``(coils, H, W)`` envelope of every volume in the data folders.

    Each of coils, H and W is the maximum over all volumes (memory grows with each, so a policy that fits the
    envelope fits every volume). Headers only: ``check_folder(..., require_target=False, scan_values=False)``.

    Raises:
        ValueError: no folder given.
        DataError: a folder is missing/empty or holds a bad file (named).
    """
    from varnet_ds.data.check import check_folder

    paths = [folders] if isinstance(folders, (str, Path)) else [f for f in folders if f is not None]
    if not paths:
        raise ValueError("largest_shape: no data folder given")
    coils = h = w = 0
    for folder in paths:
        for vol in check_folder(folder, require_target=False, scan_values=False).volumes:
            coils, h, w = max(coils, vol.num_coils), max(h, vol.shape[0]), max(w, vol.shape[1])
    return coils, h, w


def plan(model_cfg: Any, folders: Union[PathLike, Sequence[PathLike]], budget_gib: float,
         device: Union[str, torch.device], *, batch_size: int = 1,
         ds_config: Union[None, PathLike, Mapping[str, Any]] = None, world_size: int = 1, steps: int = 2,
         margin: float = 0.10, policies: Optional[Iterable[Policy]] = None,
         log: Optional[Callable[[str], None]] = None) -> Choice:
    """Largest shape in ``folders`` -> profile on ``device`` -> fastest policy within ``budget_gib``; logs it all.

    Every rank can run it on its own GPU, but timing noise may make ranks disagree: run it on rank 0 and
    broadcast the choice (``varnet_ds.distributed.broadcast_object``), or broadcast rank 0's result.

    Raises:
        PlannerError: not a CUDA device.
        BudgetError: nothing fits (the message names the shape and what would fit).
    """
    if not budget_gib > 0:
        raise ValueError(f"train.memory_budget_gib = {budget_gib}: must be > 0")
    require_cuda(device)
    shape = largest_shape(folders)
    log = log or print_log
    log(f"memory planner: largest volume {shape[0]} coils x {shape[1]}x{shape[2]}, batch {batch_size}, "
        f"budget {budget_gib:g} GiB, margin {margin:.0%}")
    profiles = profile_policies(model_cfg, shape, device, steps, policies, batch_size, ds_config, world_size, log)
    try:
        choice = choose_policy(profiles, budget_gib, margin)
    except BudgetError as err:
        raise BudgetError(f"{err} (profiled {shape[0]} coils x {shape[1]}x{shape[2]}, batch {batch_size})") from None
    log(f"memory planner: chose {choice.reason} (measured peak {choice.profile.peak_gib:.2f} GiB incl. "
        f"{choice.profile.ds_extra_gib:.2f} GiB DeepSpeed margin)")
    return choice

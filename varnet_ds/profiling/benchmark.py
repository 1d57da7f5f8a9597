"""Benchmark rows: the plain-PyTorch fp32 reference, our VarNetDS policies (plain Adam or a DeepSpeed engine) and
MRAugment, each measured in this process with the model freed afterwards. The CLI is :mod:`varnet_ds.bench`."""

from __future__ import annotations

import math
import statistics
import sys
import time
import weakref
from dataclasses import dataclass, fields
from pathlib import Path
from typing import List, Optional, Tuple

import torch
from fastmri.models import VarNet

from varnet_ds.config import DS_CONF_DIR, AugConfig
from varnet_ds.data.augment import MRAugment
from varnet_ds.model.step import ssim_loss
from varnet_ds.model.varnet import VarNetDS, build_model
from varnet_ds.profiling.memtrack import measure_step
from varnet_ds.profiling.planner import make_batch, time_steps, train_step_fn
from varnet_ds.seeding import derive_seed
from varnet_ds.system import GIB, release_memory

REFERENCE = "reference fp32 (plain PyTorch)"
DS_DIR = DS_CONF_DIR  # the packaged DeepSpeed JSONs (= a checkout's ds_configs/)
Config = Tuple[str, str, str, int]  # checkpointing, precision, ds_configs stem, sens_chunk


@dataclass
class BenchResult:
    """One training configuration: peak GiB, median step seconds, last loss, FLOPs per step, hygiene checks."""

    name: str
    peak_gib: Optional[float]
    step_s: float
    loss: float
    start_gib: Optional[float] = None  # CUDA memory allocated when the configuration started
    freed: bool = True  # the model was garbage-collected after the configuration
    peak_estimated: bool = False  # CPU: peak_gib is the live-tensor estimate, not an allocator statistic
    gflop: Optional[float] = None  # FLOPs of one training step / 1e9 (torch.utils.flop_counter)
    peak_op: str = ""  # CPU estimate: the op at the peak


@dataclass
class AugmentResult:
    """MRAugment throughput (``p = 1``, every transform fires) on one device."""

    name: str
    device: str
    ms_per_slice: float
    ms_min: float
    ms_max: float
    threads: int
    frac_of_ref_step: Optional[float] = None  # GPU only: augment ms / reference step ms
    frac_of_fastest_step: Optional[float] = None  # GPU only: augment ms / our fastest step ms
    workers_to_keep_up: Optional[int] = None  # CPU only: loader workers needed to feed our fastest step
    error: Optional[str] = None


def _allocated_gib(device: torch.device) -> Optional[float]:
    return torch.cuda.memory_allocated(device) / GIB if device.type == "cuda" else None


def _measure(name: str, model: torch.nn.Module, backward, optimizer_step, batch, device: torch.device,
             steps: int, count_ops: bool = True) -> BenchResult:
    start = _allocated_gib(device)
    step = train_step_fn(model, backward, optimizer_step, batch, ssim_loss(device))
    time_steps(step, device, 1)  # warm-up (cuDNN, allocator, Adam state)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times, loss = time_steps(step, device, steps)
    peak = torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else None
    if not count_ops:  # compiled kernels are invisible to op counting: no FLOPs, no CPU estimate
        return BenchResult(name, peak, statistics.median(times), loss, start_gib=start)
    cost = measure_step(step, track_memory=device.type != "cuda")  # one more step: FLOPs (+ CPU memory)
    if cost.peak_bytes is not None:
        peak = cost.peak_bytes / GIB
    return BenchResult(name, peak, statistics.median(times), loss, start_gib=start,
                       peak_estimated=cost.peak_bytes is not None, gflop=cost.flops / 1e9, peak_op=cost.peak_op)


def _bench_plain(model: torch.nn.Module, name: str, batch, device: torch.device, steps: int,
                 compiled: bool = False) -> BenchResult:
    """Train ``model`` with a plain ``torch.optim.Adam`` (no DeepSpeed); free it afterwards."""
    model = model.to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-4)

    def opt_step() -> None:
        opt.step()
        opt.zero_grad(set_to_none=True)

    res = _measure(name, model, lambda loss: loss.backward(), opt_step, batch, device, steps, not compiled)
    alive = weakref.ref(model)
    opt_step = opt = model = None  # noqa: F841 (drop the closure's references too)
    release_memory(device)
    res.freed = alive() is None
    return res


def bench_reference(model_kw: dict, batch, device: torch.device, steps: int, name: str = REFERENCE) -> BenchResult:
    """fastMRI VarNet + torch Adam + SSIMLoss, fp32, no DeepSpeed, no checkpointing."""
    torch.manual_seed(derive_seed("benchmark", 0))
    return _bench_plain(VarNet(**model_kw), name, batch, device, steps)


def _our_model(model_kw: dict, checkpointing: str, precision: str, sens_chunk: int, compiled: bool) -> VarNetDS:
    torch.manual_seed(derive_seed("benchmark", 0))
    weights = VarNet(**model_kw).state_dict()  # the reference's initial weights (same seed)
    model = build_model(model_kw, precision, checkpointing=checkpointing, sens_chunk=sens_chunk, compile=compiled)
    model.load_state_dict(weights)
    return model


def _policy_name(prefix: str, checkpointing: str, precision: str, sens_chunk: int, compiled: bool) -> str:
    return (f"{prefix} ckpt={checkpointing} {precision}" + (f" chunk={sens_chunk}" if sens_chunk else "")
            + (" compiled" if compiled else ""))


def bench_plain(model_kw: dict, batch, device: torch.device, steps: int, checkpointing: str, precision: str,
                sens_chunk: int = 0, compiled: bool = False) -> BenchResult:
    """Our VarNetDS policy with plain torch Adam, no DeepSpeed (``--ds none``): the policy's own cost."""
    name = _policy_name("plain", checkpointing, precision, sens_chunk, compiled)
    return _bench_plain(_our_model(model_kw, checkpointing, precision, sens_chunk, compiled), name, batch, device,
                        steps, compiled)  # no local reference: _bench_plain checks that the model is freed


def bench_engine(model_kw: dict, batch, device: torch.device, steps: int, checkpointing: str, precision: str,
                 ds_json: Path, sens_chunk: int = 0, compiled: bool = False) -> BenchResult:
    """Our VarNetDS (the reference's initial weights) under a DeepSpeed engine from ``ds_json``, freed afterwards."""
    import deepspeed

    from varnet_ds.distributed import load_ds_config

    model = _our_model(model_kw, checkpointing, precision, sens_chunk, compiled)
    opt = torch.optim.Adam(model.parameters(), lr=3e-4)
    engine, ds_opt, _, _ = deepspeed.initialize(model=model, optimizer=opt, config=load_ds_config(ds_json, 1, 1))
    name = _policy_name(f"ours {ds_json.stem}", checkpointing, precision, sens_chunk, compiled)
    res = _measure(name, engine, engine.backward, engine.step, batch, device, steps, count_ops=not compiled)
    alive = weakref.ref(model)
    engine.destroy()
    engine = ds_opt = opt = model = None  # noqa: F841
    release_memory(device)
    res.freed = alive() is None
    return res


def run(shape: Tuple[int, int, int], steps: int, model_kw: dict, configs: List[Config],
        reference: bool = True, repeat_reference: bool = False, compiled: bool = False) -> List[BenchResult]:
    """Benchmark the reference and each (checkpointing, precision, ds_config stem, sens_chunk) in this process.

    ``compiled``: our models run their U-Nets through ``torch.compile`` (:mod:`varnet_ds.model.compiled`); compile time
    falls into the warm-up step, and those rows get no FLOP count or CPU memory estimate (op counting cannot see
    into compiled kernels).
    """
    from varnet_ds.distributed import init_distributed

    for _, _, ds, _ in configs:
        if ds != "none" and not (DS_DIR / f"{ds}.json").is_file():
            raise FileNotFoundError(f"--ds {ds}: {DS_DIR / (ds + '.json')} not found")
    dist = init_distributed()
    batch = make_batch(*shape, device=dist.device)
    results = []
    if reference:
        results.append(bench_reference(model_kw, batch, dist.device, steps))
    for ck, prec, ds, chunk in configs:
        if ds == "none":
            results.append(bench_plain(model_kw, batch, dist.device, steps, ck, prec, chunk, compiled))
        else:
            results.append(bench_engine(model_kw, batch, dist.device, steps, ck, prec, DS_DIR / f"{ds}.json", chunk,
                                        compiled))
    if repeat_reference:
        results.append(bench_reference(model_kw, batch, dist.device, steps, name=f"{REFERENCE} repeat"))
    base = results[0].start_gib if results else None
    for r in results:  # CUDA: every row must start from the batch alone; any model must be collected
        left = r.start_gib - base if base is not None and r.start_gib is not None else 0.0
        if not r.freed or left > 1 / 64:
            print(f"bench: warning: {r.name}: model freed = {r.freed}, started {left:.3f} GiB above the first row",
                  file=sys.stderr)
    return results


def bench_augment(shape: Tuple[int, int, int] = (15, 640, 368), device: str = "cpu", repeats: int = 5,
                  p: float = 1.0, upsample: bool = False) -> dict:
    """Time :meth:`MRAugment.augment` on random k-space with every weight 1 (``p = 1``: all transforms fire).

    Returns:
        dict with ``ms_per_slice`` (median), ``ms_min``, ``ms_max``, ``shape``, ``device``, ``repeats``, ``p``,
        ``upsample``, ``threads``.
    """
    if repeats < 1:
        raise ValueError(f"repeats = {repeats}: must be >= 1")
    cfg = AugConfig(upsample=upsample)
    for weight in fields(cfg.weights):
        setattr(cfg.weights, weight.name, 1.0)
    aug = MRAugment(cfg)
    gen = torch.Generator().manual_seed(derive_seed("benchmark", 1))
    kspace = torch.randn(*shape, dtype=torch.complex64, generator=gen).to(device)
    times = []
    for i in range(repeats + 1):  # first run is warm-up
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        aug.augment(kspace, (320, 320), p, generator=gen)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if i > 0:
            times.append(1000.0 * (time.perf_counter() - start))
    times.sort()
    return dict(ms_per_slice=times[len(times) // 2], ms_min=times[0], ms_max=times[-1], shape=tuple(shape),
                device=device, repeats=repeats, p=p, upsample=upsample, threads=torch.get_num_threads())


def bench_augment_rows(shape: Tuple[int, int, int], device: torch.device, repeats: int = 5,
                       ref_step_s: Optional[float] = None, fastest_step_s: Optional[float] = None
                       ) -> List[AugmentResult]:
    """MRAugment ms/slice on one CPU thread and, on CUDA, on the GPU, relative to the measured step times."""
    devices = ["cpu"] + (["cuda"] if device.type == "cuda" else [])
    rows = []
    for dev in devices:
        threads = torch.get_num_threads()
        if dev == "cpu":
            torch.set_num_threads(1)
        name = "MRAugment cpu (1 thread = 1 loader worker)" if dev == "cpu" else "MRAugment cuda (on the GPU)"
        try:
            r = bench_augment(shape, dev, repeats, p=1.0)
        except Exception as err:  # report and keep the training rows already measured
            rows.append(AugmentResult(name, dev, math.nan, math.nan, math.nan, 0, error=f"{type(err).__name__}: {err}"))
            continue
        finally:
            torch.set_num_threads(threads)
        row = AugmentResult(name, dev, r["ms_per_slice"], r["ms_min"], r["ms_max"], r["threads"])
        if dev == "cuda":
            row.frac_of_ref_step = r["ms_per_slice"] / (1000 * ref_step_s) if ref_step_s else None
            row.frac_of_fastest_step = r["ms_per_slice"] / (1000 * fastest_step_s) if fastest_step_s else None
        elif fastest_step_s:
            row.workers_to_keep_up = math.ceil(r["ms_per_slice"] / (1000 * fastest_step_s))
        rows.append(row)
    return rows

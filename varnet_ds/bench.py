"""Memory/speed benchmark: the plain-PyTorch fp32 reference vs our engine's policies, in ONE process.

    python -m varnet_ds.bench --shape knee --steps 10 --repeat-reference   # GPU: the README table
    python -m varnet_ds.bench --shape 64x48x4 --cascades 2 --chans 8 --steps 2   # CPU smoke run
    python -m varnet_ds.bench --plan 2.0 --shape knee                    # memory planner (CUDA only)
    python -m varnet_ds.bench --comms --step-time 0.23                   # ZeRO-2 multi-GPU on paper

Every configuration trains a VarNet from the same initial weights on the same random batch (batch 1, Adam,
fastMRI SSIMLoss on the centre crop) and reports peak memory, the median step time after one warm-up step and the
last loss (fp32 rows must match the reference's loss: a correctness cross-check). The
reference is fastMRI's ``VarNet`` with a plain ``torch.optim.Adam``; ours is :class:`varnet_ds.model.VarNetDS`
inside a DeepSpeed engine built from a ds_configs/ JSON.

Peak memory is ``torch.cuda.max_memory_allocated`` over the timed steps (reset after the warm-up), which includes
the shared batch. On CPU, where PyTorch keeps no allocator statistics, one more step runs under
:class:`varnet_ds.memtrack.LiveTensorMemory` and the peak of live tensor bytes is reported as an estimate (``~``):
the same tensors a GPU would hold, without cuDNN/cuFFT workspaces. Every configuration also gets the FLOPs of one
step (``torch.utils.flop_counter``: convolutions, with the recompute of checkpointed regions), a device-independent
measure of what checkpointing costs.

Order must not bias the numbers: after each configuration the engine is destroyed (its ZeRO hooks removed), every
reference dropped, ``gc.collect()`` and ``torch.cuda.empty_cache()`` run; the row records whether the model was
really freed (``freed``) and, on CUDA, the memory still allocated when the configuration started (``start_gib``,
the batch only). ``--repeat-reference`` measures the reference again at the end as a drift check.

MRAugment rows (``--augment``, on by default): ms per slice on one CPU thread (= one loader worker) and, on CUDA,
on the GPU, with the share of the measured reference step it adds (issue target: <= 5 % on GPU).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import sys
import weakref
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import torch
from fastmri.losses import SSIMLoss
from fastmri.models import VarNet

from varnet_ds.bench_format import (
    AUG_TARGET,
    REFERENCE,
    format_augment,
    format_plan,
    format_table,
    header,
    header_line,
    reference_drift,
)
from varnet_ds.memtrack import measure_step
from varnet_ds.model import CHECKPOINTING, SENS_CHECKPOINTED, VarNetDS, count_parameters
from varnet_ds.planner import GIB, make_batch, release_memory, time_steps, train_step_fn

SHAPES: Dict[str, Tuple[int, int, int]] = {  # coils, H, W
    "knee": (15, 640, 368),
    "brain": (16, 640, 320),
    "brain_big": (20, 768, 396),
}
DS_DIR = Path(__file__).resolve().parent.parent / "ds_configs"
Config = Tuple[str, str, str, int]  # checkpointing, precision, ds_configs stem, sens_chunk

__all__ = ["BenchResult", "AugmentResult", "SHAPES", "AUG_TARGET", "REFERENCE", "make_batch", "parse_shape", "run",
           "bench_augment_rows", "format_table", "format_augment", "header", "header_line", "reference_drift",
           "main"]


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


def parse_shape(text: str) -> Tuple[int, int, int]:
    """``knee`` | ``brain`` | ``brain_big`` | ``HxWxC`` -> (coils, H, W)."""
    if text in SHAPES:
        return SHAPES[text]
    try:
        h, w, c = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shape {text!r}: use knee, brain, brain_big or HxWxC") from None
    if min(h, w, c) < 1:
        raise argparse.ArgumentTypeError(f"--shape {text!r}: sizes must be positive")
    return c, h, w


def _allocated_gib(device: torch.device) -> Optional[float]:
    return torch.cuda.memory_allocated(device) / GIB if device.type == "cuda" else None


def _measure(name: str, model: torch.nn.Module, backward, optimizer_step, batch, device: torch.device,
             steps: int, count_ops: bool = True) -> BenchResult:
    start = _allocated_gib(device)
    step = train_step_fn(model, backward, optimizer_step, batch, SSIMLoss().to(device))
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
    torch.manual_seed(0)
    return _bench_plain(VarNet(**model_kw), name, batch, device, steps)


def _our_model(model_kw: dict, checkpointing: str, precision: str, sens_chunk: int, compiled: bool) -> VarNetDS:
    torch.manual_seed(0)
    weights = VarNet(**model_kw).state_dict()  # the reference's initial weights (same seed)
    model = VarNetDS(**model_kw, checkpointing=checkpointing, precision=precision, sens_chunk=sens_chunk,
                     compile_unets=compiled)
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

    ``compiled``: our models run their U-Nets through ``torch.compile`` (:mod:`varnet_ds.compiled`); compile time
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


def bench_augment_rows(shape: Tuple[int, int, int], device: torch.device, repeats: int = 5,
                       ref_step_s: Optional[float] = None, fastest_step_s: Optional[float] = None
                       ) -> List[AugmentResult]:
    """MRAugment ms/slice on one CPU thread and, on CUDA, on the GPU, relative to the measured step times."""
    from varnet_ds.data.augment import bench_augment

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


@contextlib.contextmanager
def _stdout_to_stderr(active: bool) -> Iterator[None]:
    """Send everything written to fd 1 (DeepSpeed's op-build and log prints) to stderr, so --json stays parseable."""
    if not active:
        yield
        return
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m varnet_ds.bench", description=__doc__.splitlines()[0])
    p.add_argument("--shape", type=parse_shape, default=SHAPES["knee"], help="knee | brain | brain_big | HxWxC")
    p.add_argument("--steps", type=int, default=10, help="timed steps per configuration (after 1 warm-up)")
    p.add_argument("--cascades", type=int, default=12)
    p.add_argument("--chans", type=int, default=18)
    p.add_argument("--pools", type=int, default=4)
    p.add_argument("--sens-chans", type=int, default=8)
    p.add_argument("--sens-pools", type=int, default=4)
    p.add_argument("--checkpointing", nargs="+", default=["none", "cascades", "all"], choices=list(CHECKPOINTING))
    p.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument("--sens-chunk", nargs="+", type=int, default=[0, 4],
                   help="with ckpt=all|selective_all: coils per sensitivity U-Net call (0 = all at once)")
    p.add_argument("--ds", nargs="+", default=["zero0", "zero2"],
                   help="ds_configs/*.json stems; none = plain torch Adam")
    p.add_argument("--compile", action="store_true", help="our models' U-Nets through torch.compile (one graph)")
    p.add_argument("--no-reference", action="store_true")
    p.add_argument("--repeat-reference", action="store_true", help="measure the reference again at the end (drift)")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True, help="MRAugment rows")
    p.add_argument("--augment-repeats", type=int, default=5)
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout (logs go to stderr)")
    p.add_argument("--plan", type=float, metavar="GIB", help="memory planner: fastest policy within GIB (CUDA)")
    p.add_argument("--data", nargs="+", metavar="FOLDER", help="with --plan: profile the largest volume here")
    p.add_argument("--margin", type=float, default=0.10, help="with --plan: safety margin on the peak (0.10)")
    p.add_argument("--comms", action="store_true", help="ZeRO-2 multi-GPU communication estimate")
    p.add_argument("--step-time", type=float, help="with --comms: 1-GPU step seconds (default: our fastest row)")
    p.add_argument("--world-size", type=int, default=8, help="with --comms: GPUs")
    return p


def _plan(args, model_kw: dict) -> Tuple[dict, int]:
    from varnet_ds.planner import BudgetError, PlannerError, Policy, choose_policy, largest_shape, profile_policies

    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    policies = [Policy(c, pr, k) for c in args.checkpointing for pr in args.precision
                for k in (args.sens_chunk if c in SENS_CHECKPOINTED else [0])]
    ds_json = DS_DIR / f"{args.ds[-1]}.json"
    out: dict = dict(budget_gib=args.plan, margin=args.margin, ds_config=str(ds_json))
    try:
        shape = largest_shape(args.data) if args.data else args.shape
        out["shape"] = list(shape)
        profiles = profile_policies(dict(model_kw, compile=args.compile), shape, device, steps=args.steps,
                                    policies=policies, ds_config=ds_json)
        out["profiles"] = [dict(policy=str(p.policy), peak_gib=p.peak_gib, step_s=p.step_s,
                                ds_extra_gib=p.ds_extra_gib) for p in profiles]
        choice = choose_policy(profiles, args.plan, args.margin)
    except (PlannerError, ValueError, OSError) as err:
        out["error"] = str(err)
        return out, 1 if isinstance(err, BudgetError) else 2
    out["choice"] = dict(policy=str(choice.policy), overrides=choice.policy.overrides(), reason=choice.reason)
    return out, 0


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    for name in ("steps", "augment_repeats", "world_size"):
        if getattr(args, name) < 1:
            _parser().error(f"--{name.replace('_', '-')} = {getattr(args, name)}: must be >= 1")
    if min(args.sens_chunk) < 0:
        _parser().error(f"--sens-chunk {args.sens_chunk}: must be >= 0")
    model_kw = dict(num_cascades=args.cascades, chans=args.chans, pools=args.pools,
                    sens_chans=args.sens_chans, sens_pools=args.sens_pools)
    rc = 0
    with _stdout_to_stderr(args.json):
        doc: dict = dict(header(), shape=dict(coils=args.shape[0], height=args.shape[1], width=args.shape[2]),
                         steps=args.steps, model=model_kw)
        text: List[str] = [header_line(doc)]
        if args.plan is not None:
            doc["plan"], rc = _plan(args, model_kw)
            text.append(format_plan(doc["plan"]))
        elif not (args.comms and args.step_time):
            configs = [(c, pr, d, k) for d in args.ds for pr in args.precision for c in args.checkpointing
                       for k in (args.sens_chunk if c in SENS_CHECKPOINTED else [0])]
            results = run(args.shape, args.steps, model_kw, configs, reference=not args.no_reference,
                          repeat_reference=args.repeat_reference, compiled=args.compile)
            doc["results"] = [asdict(r) for r in results]
            doc["reference_drift"] = reference_drift(results)
            text.append(format_table(results, args.shape))
            ref = next((r.step_s for r in results if r.name == REFERENCE), None)
            ours = [r.step_s for r in results if r.name.startswith("ours")]
            fastest = min(ours) if ours else ref
            if args.step_time is None:
                args.step_time = fastest
            if args.augment:
                from varnet_ds.distributed import init_distributed

                rows = bench_augment_rows(args.shape, init_distributed().device, args.augment_repeats, ref, fastest)
                doc["augment"] = [asdict(r) for r in rows]
                text.append(format_augment(rows, args.shape))
        if args.comms and args.step_time:
            from varnet_ds.comms import LINKS, comms_table, zero2_comm_estimate

            num_params = count_parameters(VarNet(**model_kw))
            doc["comms"] = [dict(zero2_comm_estimate(num_params, args.world_size, args.step_time, gbps), link=name)
                            for name, gbps in LINKS.items()]
            text.append(comms_table(num_params, args.step_time, args.world_size))
    if args.json:
        print(json.dumps(doc))
    else:
        print("\n".join(text))
    if rc and not args.json:
        print(f"bench: error: {doc['plan']['error']}", file=sys.stderr)
    return rc


if __name__ == "__main__":
    sys.exit(main())

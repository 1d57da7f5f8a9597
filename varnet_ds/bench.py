"""Memory/speed benchmark: the plain-PyTorch fp32 reference vs our engine's policies, in ONE process.

    python -m varnet_ds.bench --shape knee --steps 10            # GPU: the README table
    python -m varnet_ds.bench --shape 64x48x4 --cascades 2 --chans 8 --steps 2   # CPU smoke run

Every configuration trains a freshly initialised VarNet on the same random batch (batch 1, Adam, fastMRI
SSIMLoss on the centre crop) and reports peak memory (``torch.cuda.max_memory_allocated``; n/a on CPU) and the
median step time after one warm-up step. The reference is fastMRI's ``VarNet`` with a plain ``torch.optim.Adam``;
ours is :class:`varnet_ds.model.VarNetDS` inside a DeepSpeed engine built from a ds_configs/ JSON.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch
from fastmri.losses import SSIMLoss
from fastmri.models import VarNet

from varnet_ds.model import VarNetDS

SHAPES: Dict[str, Tuple[int, int, int]] = {  # coils, H, W
    "knee": (15, 640, 368),
    "brain": (16, 640, 320),
    "brain_big": (20, 768, 396),
}
DS_DIR = Path(__file__).resolve().parent.parent / "ds_configs"


@dataclass
class BenchResult:
    name: str
    peak_gib: Optional[float]
    step_s: float
    loss: float


def parse_shape(text: str) -> Tuple[int, int, int]:
    """``knee`` | ``brain`` | ``brain_big`` | ``HxWxC`` -> (coils, H, W)."""
    if text in SHAPES:
        return SHAPES[text]
    try:
        h, w, c = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shape {text!r}: use knee, brain, brain_big or HxWxC") from None
    return c, h, w


def make_batch(coils: int, h: int, w: int, device: torch.device, acceleration: int = 4, seed: int = 0):
    """A random multi-coil k-space batch with an equispaced mask and a 320x320-like target."""
    g = torch.Generator().manual_seed(seed)
    kspace = torch.randn(1, coils, h, w, 2, generator=g) * 1e-4
    mask = torch.zeros(1, 1, 1, w, 1, dtype=torch.bool)
    mask[..., ::acceleration, :] = True
    center = max(int(round(w * 0.08)), 2)
    mask[..., (w - center + 1) // 2 : (w - center + 1) // 2 + center, :] = True
    th, tw = min(h // 2, 320), min(w, 320)
    target = torch.rand(1, th, tw, generator=g) * 1e-4
    return (kspace * mask).to(device), mask.to(device), target.to(device), torch.tensor([1e-4], device=device)


def _step_fn(model, optimizer_step, backward, batch, loss_fn) -> Callable[[], float]:
    kspace, mask, target, max_value = batch

    def step() -> float:
        out = model(kspace, mask, None)
        from fastmri.data.transforms import center_crop_to_smallest

        tgt, out = center_crop_to_smallest(target, out)
        loss = loss_fn(out.unsqueeze(1).float(), tgt.unsqueeze(1), data_range=max_value)
        backward(loss)
        optimizer_step()
        return float(loss.detach())

    return step


def _measure(name: str, step: Callable[[], float], device: torch.device, steps: int) -> BenchResult:
    loss = step()  # warm-up (cuDNN autotune, allocator)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times: List[float] = []
    for _ in range(steps):
        t0 = time.perf_counter()
        loss = step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    return BenchResult(name, peak, statistics.median(times), loss)


def bench_reference(model_kw: dict, batch, device, steps: int) -> BenchResult:
    """fastMRI VarNet + torch Adam + SSIMLoss, fp32, no DeepSpeed, no checkpointing."""
    torch.manual_seed(0)
    model = VarNet(**model_kw).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-4)

    def opt_step():
        opt.step()
        opt.zero_grad(set_to_none=True)

    res = _measure("reference fp32 (plain PyTorch)", _step_fn(model, opt_step, lambda loss: loss.backward(), batch,
                                                              SSIMLoss().to(device)), device, steps)
    return res


def bench_engine(model_kw: dict, batch, device, steps: int, checkpointing: str, precision: str,
                 ds_json: Path) -> BenchResult:
    """Our VarNetDS under a DeepSpeed engine from ``ds_json``."""
    import deepspeed

    from varnet_ds.distributed import load_ds_config

    torch.manual_seed(0)
    model = VarNetDS(**model_kw, checkpointing=checkpointing, precision=precision)
    opt = torch.optim.Adam(model.parameters(), lr=3e-4)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=opt, config=load_ds_config(ds_json, 1, 1))
    name = f"ours {ds_json.stem} ckpt={checkpointing} {precision}"
    res = _measure(name, _step_fn(engine, engine.step, engine.backward, batch, SSIMLoss().to(device)), device, steps)
    engine.destroy() if hasattr(engine, "destroy") else None
    del engine, model, opt
    return res


def run(shape: Tuple[int, int, int], steps: int, model_kw: dict, configs: List[Tuple[str, str, str]],
        reference: bool = True) -> List[BenchResult]:
    """Benchmark the reference and each (checkpointing, precision, ds_config stem) in this process."""
    from varnet_ds.distributed import init_distributed

    dist = init_distributed()
    batch = make_batch(*shape, device=dist.device)
    results = []
    if reference:
        results.append(bench_reference(model_kw, batch, dist.device, steps))
        _free(dist.device)
    for ck, prec, ds in configs:
        results.append(bench_engine(model_kw, batch, dist.device, steps, ck, prec, DS_DIR / f"{ds}.json"))
        _free(dist.device)
    return results


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def header() -> str:
    import deepspeed

    dev = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    return (f"device: {dev} | torch {torch.__version__} | deepspeed {deepspeed.__version__} | "
            f"date {time.strftime('%Y-%m-%d')}")


def format_table(results: List[BenchResult], shape: Tuple[int, int, int]) -> str:
    ref = results[0] if results and results[0].name.startswith("reference") else None
    lines = [f"shape: {shape[0]} coils x {shape[1]}x{shape[2]}, batch 1",
             f"{'configuration':<44} {'peak GiB':>9} {'step s':>8} {'vs ref time':>11}"]
    for r in results:
        peak = f"{r.peak_gib:.2f}" if r.peak_gib is not None else "n/a"
        rel = f"{r.step_s / ref.step_s:.2f}x" if ref else "-"
        lines.append(f"{r.name:<44} {peak:>9} {r.step_s:>8.3f} {rel:>11}")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", type=parse_shape, default=SHAPES["knee"], help="knee | brain | brain_big | HxWxC")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--cascades", type=int, default=12)
    p.add_argument("--chans", type=int, default=18)
    p.add_argument("--pools", type=int, default=4)
    p.add_argument("--sens-chans", type=int, default=8)
    p.add_argument("--sens-pools", type=int, default=4)
    p.add_argument("--checkpointing", nargs="+", default=["none", "cascades", "all"])
    p.add_argument("--precision", nargs="+", default=["fp32", "bf16"])
    p.add_argument("--ds", nargs="+", default=["zero0", "zero2"], help="ds_configs/*.json stems")
    p.add_argument("--no-reference", action="store_true")
    p.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    args = p.parse_args(argv)
    model_kw = dict(num_cascades=args.cascades, chans=args.chans, pools=args.pools,
                    sens_chans=args.sens_chans, sens_pools=args.sens_pools)
    configs = [(c, pr, d) for d in args.ds for pr in args.precision for c in args.checkpointing]
    results = run(args.shape, args.steps, model_kw, configs, reference=not args.no_reference)
    if args.json:
        print(json.dumps({"header": header(), "shape": args.shape, "results": [asdict(r) for r in results]}))
    else:
        print(header())
        print(format_table(results, args.shape))
    return 0


if __name__ == "__main__":
    sys.exit(main())

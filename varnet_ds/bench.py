"""Memory/speed benchmark: the plain-PyTorch fp32 reference vs our engine's policies, in ONE process.

    python -m varnet_ds.bench --shape knee --steps 10 --repeat-reference   # GPU: docs/memory-and-speed.md
    ... --json: one JSON document on stdout instead of the table; --json-out FILE: the document in FILE too
    python -m varnet_ds.bench --shape 64x48x4 --cascades 2 --chans 8 --steps 2   # CPU smoke run
    python -m varnet_ds.bench --plan 2.0 --shape knee                    # memory planner (CUDA only)
    python -m varnet_ds.bench --comms --step-time 0.23                   # ZeRO-2 multi-GPU on paper

Every configuration trains a VarNet from the same initial weights on the same random batch (batch 1, Adam,
fastMRI SSIMLoss on the centre crop) and reports peak memory, the median step time after one warm-up step and the
last loss (fp32 rows must match the reference's loss: a correctness cross-check). The
reference is fastMRI's ``VarNet`` with a plain ``torch.optim.Adam``; ours is :class:`varnet_ds.model.varnet.VarNetDS`
inside a DeepSpeed engine built from a ds_configs/ JSON.

Peak memory is ``torch.cuda.max_memory_allocated`` over the timed steps (reset after the warm-up), which includes the
shared batch. On CPU, where PyTorch keeps no allocator statistics, one more step runs under
:class:`varnet_ds.profiling.memtrack.LiveTensorMemory` and the peak of live tensor bytes is reported as an estimate
(``~``): the same tensors a GPU would hold, without cuDNN/cuFFT workspaces. Every configuration also gets the FLOPs of
one step (``torch.utils.flop_counter``: convolutions, with the recompute of checkpointed regions), a
device-independent measure of what checkpointing costs.

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
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from fastmri.models import VarNet

from varnet_ds.config import CHECKPOINTING, FASTMRI_SIZES, PRECISIONS, SIZE_KEYS
from varnet_ds.exits import entry_point
from varnet_ds.files import atomic_write_json, strict_json
from varnet_ds.model.varnet import SENS_CHECKPOINTED, count_parameters
from varnet_ds.profiling.benchmark import DS_DIR, REFERENCE, bench_augment_rows, run
from varnet_ds.system import versions

SHAPES: Dict[str, Tuple[int, int, int]] = {  # coils, H, W
    "knee": (15, 640, 368),
    "brain": (16, 640, 320),
    "brain_big": (20, 768, 396),
}
SIZE_FLAGS = {key: "--" + key.replace("num_", "").replace("_", "-") for key in SIZE_KEYS}  # --cascades, --chans, ...
AUG_TARGET = 0.05  # issue 4: augmentation adds <= 5 % to a GPU training step


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


def header() -> Dict[str, str]:
    """Device, library versions and date of this run."""
    return {k: v for k, v in versions().items() if k in ("device", "torch", "deepspeed", "date")}


def header_line(h: Dict[str, str]) -> str:
    return f"device: {h['device']} | torch {h['torch']} | deepspeed {h['deepspeed']} | date {h['date']}"


def reference_drift(results: Sequence) -> Optional[Dict[str, Optional[float]]]:
    """Relative step-time change and peak change (GiB) of the repeated reference vs the first one."""
    refs = [r for r in results if r.name.startswith(REFERENCE)]
    if len(refs) < 2:
        return None
    first, last = refs[0], refs[-1]
    peak = last.peak_gib - first.peak_gib if first.peak_gib is not None and last.peak_gib is not None else None
    return dict(step_rel=last.step_s / first.step_s - 1.0, peak_gib=peak)


def format_table(results: Sequence, shape: Tuple[int, int, int]) -> str:
    """One row per configuration; CPU peaks are live-tensor estimates (marked ``~``), GPU peaks are measured."""
    ref = results[0] if results and results[0].name.startswith(REFERENCE) else None
    lines = [f"shape: {shape[0]} coils x {shape[1]}x{shape[2]}, batch 1",
             f"{'configuration':<52} {'peak GiB':>9} {'step s':>8} {'vs ref time':>11} {'GFLOP':>7} "
             f"{'vs ref':>6} {'loss':>9}"]
    for r in results:
        peak = "n/a" if r.peak_gib is None else ("~" if r.peak_estimated else "") + f"{r.peak_gib:.2f}"
        rel = f"{r.step_s / ref.step_s:.2f}x" if ref else "-"
        gflop = f"{r.gflop:.4g}" if r.gflop is not None else "n/a"
        frel = f"{r.gflop / ref.gflop:.2f}x" if ref and r.gflop and ref.gflop else "-"
        lines.append(f"{r.name:<52} {peak:>9} {r.step_s:>8.3f} {rel:>11} {gflop:>7} {frel:>6} {r.loss:>9.5f}"
                     + ("" if r.freed else "  (NOT freed)"))
    if any(r.peak_estimated for r in results):
        lines.append("~ = CPU estimate: peak of live tensor bytes (varnet_ds.profiling.memtrack); a GPU adds "
                     "cuDNN/cuFFT workspaces (see docs/memory-and-speed.md)")
    drift = reference_drift(results)
    if drift:
        peak = f", peak {drift['peak_gib']:+.3f} GiB" if drift["peak_gib"] is not None else ""
        lines.append(f"reference drift (repeat vs first): step {100 * drift['step_rel']:+.1f} %{peak}")
    return "\n".join(lines)


def format_augment(rows: List, shape: Tuple[int, int, int]) -> str:
    lines = [f"MRAugment p=1 (all transforms), {shape[0]} coils x {shape[1]}x{shape[2]}, per slice:"]
    for r in rows:
        if r.error:
            lines.append(f"{r.name:<44} failed: {r.error}")
            continue
        text = f"{r.name:<44} {r.ms_per_slice:>8.1f} ms (min {r.ms_min:.1f}, max {r.ms_max:.1f})"
        if r.frac_of_ref_step is not None:
            verdict = "ok" if r.frac_of_ref_step <= AUG_TARGET else "over"
            text += f" = {100 * r.frac_of_ref_step:.1f} % of the reference step (target <= 5 %: {verdict})"
        if r.frac_of_fastest_step is not None:
            text += f", {100 * r.frac_of_fastest_step:.1f} % of our fastest step"
        if r.workers_to_keep_up is not None:
            text += f"; {r.workers_to_keep_up} worker(s) keep up with our fastest step"
        lines.append(text)
    return "\n".join(lines)


def format_plan(out: dict) -> str:
    lines = [f"memory planner: budget {out['budget_gib']:g} GiB, margin {out['margin']:.0%}, "
             f"DeepSpeed margin from {Path(out['ds_config']).name}"]
    if "shape" in out:
        lines.append(f"shape: {out['shape'][0]} coils x {out['shape'][1]}x{out['shape'][2]}, batch 1")
    for p in out.get("profiles", []):
        lines.append(f"  {p['policy']:<52} peak {p['peak_gib']:6.2f} GiB (incl. {p['ds_extra_gib']:.2f} DS) "
                     f"{p['step_s']:7.3f} s/step")
    if "choice" in out:
        lines.append(f"chose {out['choice']['reason']}")
    return "\n".join(lines)


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
    for key, flag in SIZE_FLAGS.items():
        p.add_argument(flag, dest=key, type=int, default=FASTMRI_SIZES[key], help=f"default: {FASTMRI_SIZES[key]}")
    p.add_argument("--checkpointing", nargs="+", default=["none", "cascades", "all"], choices=list(CHECKPOINTING))
    p.add_argument("--precision", nargs="+", default=list(PRECISIONS), choices=list(PRECISIONS))
    p.add_argument("--sens-chunk", nargs="+", type=int, default=[0, 4],
                   help="with ckpt=all|selective_all: coils per sensitivity U-Net call (0 = all at once)")
    p.add_argument("--ds", nargs="+", default=["zero0", "zero2"],
                   help="packaged DeepSpeed JSON names (varnet_ds/conf/ds/*.json = ds_configs/*.json); "
                        "none = plain torch Adam")
    p.add_argument("--compile", action="store_true", help="our models' U-Nets through torch.compile (one graph)")
    p.add_argument("--no-reference", action="store_true")
    p.add_argument("--repeat-reference", action="store_true", help="measure the reference again at the end (drift)")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True, help="MRAugment rows")
    p.add_argument("--augment-repeats", type=int, default=5)
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout (logs go to stderr)")
    p.add_argument("--json-out", type=Path, metavar="FILE", help="also write the JSON document to FILE")
    p.add_argument("--plan", type=float, metavar="GIB", help="memory planner: fastest policy within GIB (CUDA)")
    p.add_argument("--data", nargs="+", metavar="FOLDER", help="with --plan: profile the largest volume here")
    p.add_argument("--margin", type=float, default=0.10, help="with --plan: safety margin on the peak (0.10)")
    p.add_argument("--comms", action="store_true", help="ZeRO-2 multi-GPU communication estimate")
    p.add_argument("--step-time", type=float, help="with --comms: 1-GPU step seconds (default: our fastest row)")
    p.add_argument("--world-size", type=int, default=8, help="with --comms: GPUs")
    return p


def _plan(args, model_kw: dict) -> Tuple[dict, int]:
    from varnet_ds.profiling.planner import (
        BudgetError,
        PlannerError,
        Policy,
        choose_policy,
        largest_shape,
        profile_policies,
    )

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


@entry_point
def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    for name in ("steps", "augment_repeats", "world_size"):
        if getattr(args, name) < 1:
            _parser().error(f"--{name.replace('_', '-')} = {getattr(args, name)}: must be >= 1")
    if min(args.sens_chunk) < 0:
        _parser().error(f"--sens-chunk {args.sens_chunk}: must be >= 0")
    if args.json_out is not None:  # checked before minutes of measuring, not after
        if args.json_out.is_dir():
            _parser().error(f"--json-out {args.json_out}: is a folder; give a file name")
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
    model_kw = {key: getattr(args, key) for key in SIZE_FLAGS}
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
            from varnet_ds.profiling.comms import LINKS, comms_table, zero2_comm_estimate

            num_params = count_parameters(VarNet(**model_kw))
            doc["comms"] = [dict(zero2_comm_estimate(num_params, args.world_size, args.step_time, gbps), link=name)
                            for name, gbps in LINKS.items()]
            text.append(comms_table(num_params, args.step_time, args.world_size))
    if args.json_out is not None:
        atomic_write_json(args.json_out, doc)
    if args.json:
        print(json.dumps(strict_json(doc)))  # the same document as --json-out (NaN -> null)
    else:
        print("\n".join(text))
    if rc and not args.json:
        print(f"bench: error: {doc['plan']['error']}", file=sys.stderr)
    return rc


if __name__ == "__main__":
    sys.exit(main())

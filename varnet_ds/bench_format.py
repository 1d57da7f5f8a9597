"""Text output of ``python -m varnet_ds.bench``: header line, the memory/speed table, MRAugment rows, the plan."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

REFERENCE = "reference fp32 (plain PyTorch)"
AUG_TARGET = 0.05  # issue 4: augmentation adds <= 5 % to a GPU training step


def header() -> Dict[str, str]:
    """Device, library versions and date of this run."""
    import deepspeed

    return dict(device=torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU",
                torch=torch.__version__, deepspeed=deepspeed.__version__, date=time.strftime("%Y-%m-%d"))


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
        lines.append("~ = CPU estimate: peak of live tensor bytes (varnet_ds.memtrack); a GPU adds cuDNN/cuFFT "
                     "workspaces (see README)")
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



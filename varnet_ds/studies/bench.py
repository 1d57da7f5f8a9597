"""Benchmark of the study layout: demo training throughput of the runner's layout against a plain fastMRI loop.

Command line: ``python -m varnet_ds.study_bench [--steps 150] [--data runs/demo-data]``.

Measured side by side in one invocation, on the demo data and the demo model (``varnet_ds/conf/demo.yaml``):

- ``plain``: one process, fastMRI's ``VarNet`` + ``SliceDataset`` + ``VarNetDataTransform`` + ``SSIMLoss`` + Adam,
  batch 1, no DeepSpeed, no evaluation, with 1 and with 2 threads;
- ``study``: the layout ``python -m varnet_ds.study`` uses on a CPU box: one 1-rank DeepSpeed run per core side by
  side (``OMP_NUM_THREADS=1`` each), throughput summed over the runs;
- ``2-rank``: one DeepSpeed ZeRO-2 run of 2 CPU ranks (the demo's layout before the study runner).

DeepSpeed rows are the mean ``samples_per_s`` of the runs' own ``metrics.jsonl`` train rows after a warm-up (the
evaluation at the end of a run is excluded). Ratios are against the plain 1-thread loop measured in the same run.
A benchmark, not a test: numbers depend on the machine; the table says which.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Sequence, Tuple

from varnet_ds.config import DEFAULT_DS_CONFIG
from varnet_ds.studies.launch import Slot, cpu_name
from varnet_ds.studies.ports import PortPool
from varnet_ds.studies.runner import TRAIN_SCRIPT

WARMUP = 10


def plain_loop(data: Path, steps: int, threads: int, warmup: int = WARMUP) -> float:
    """Samples/s of a plain 1-process fastMRI VarNet training loop at the demo size (after ``warmup`` steps)."""
    import torch
    from fastmri.data import SliceDataset
    from fastmri.data.subsample import create_mask_for_mask_type
    from fastmri.data.transforms import VarNetDataTransform
    from fastmri.losses import SSIMLoss
    from fastmri.models import VarNet

    from varnet_ds.config import load_config
    from varnet_ds.seeding import derive_seed

    torch.set_num_threads(threads)
    torch.manual_seed(derive_seed("benchmark", 2))
    cfg = load_config("demo")
    m = cfg.model
    model = VarNet(num_cascades=m.num_cascades, chans=m.chans, pools=m.pools, sens_chans=m.sens_chans,
                   sens_pools=m.sens_pools)
    mask = create_mask_for_mask_type("random", list(cfg.data.center_fractions), list(cfg.data.accelerations))
    dataset = SliceDataset(data, challenge="multicoil", transform=VarNetDataTransform(mask_func=mask))
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, shuffle=True, num_workers=0)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    loss_fn = SSIMLoss()
    done, t0 = 0, 0.0
    while done < steps + warmup:
        for batch in loader:
            if done == warmup:
                t0 = time.perf_counter()
            output = model(batch.masked_kspace, batch.mask, batch.num_low_frequencies)
            target, output = _crop(batch.target, output)
            loss = loss_fn(output.unsqueeze(1), target.unsqueeze(1), data_range=batch.max_value)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            done += 1
            if done >= steps + warmup:
                break
    return steps / (time.perf_counter() - t0)


def _crop(target, output):
    from fastmri.data.transforms import center_crop_to_smallest

    return center_crop_to_smallest(target, output)


def _plain_subprocess(data: Path, steps: int, threads: int) -> float:
    code = (f"from varnet_ds.studies.bench import plain_loop; from pathlib import Path; "
            f"print(plain_loop(Path({str(data)!r}), {steps}, {threads}))")
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def _train_cmd(launcher: List[str], data: Path, out: Path, steps: int) -> List[str]:
    return [*launcher, str(TRAIN_SCRIPT), "--ds_config", DEFAULT_DS_CONFIG,
            "--config", "demo", f"data.train_path={data}", f"run.out_dir={out}", "data.val_path=null",
            "data.transfer_path=null", f"train.max_steps={steps + WARMUP}", "log.progress=false",
            "log.wandb.mode=disabled", "eval.every_epochs=1000", "train.checkpoint_every_steps=100000"]


def _rate(run_dir: Path) -> float:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    rates = [r["samples_per_s"] for r in rows if r["split"] == "train" and r["step"] > WARMUP]
    return sum(rates) / len(rates)


def deepspeed_runs(data: Path, steps: int, runs: int, ranks: int) -> float:
    """Summed train samples/s of ``runs`` DeepSpeed runs of ``ranks`` CPU ranks each, started side by side."""
    threads = max((os.cpu_count() or 1) // (runs * ranks), 1)
    ports = PortPool()  # one --master_port per live run, none handed out twice
    with tempfile.TemporaryDirectory(prefix="study_bench_") as tmp, contextlib.closing(ports):
        procs, outs = [], []
        for i in range(runs):
            slot = Slot(None, ranks, threads)
            out = Path(tmp) / f"run{i}"
            outs.append(out)
            launcher = slot.launcher(None if slot.direct else ports.acquire())
            procs.append(subprocess.Popen(_train_cmd(launcher, data, out, steps), env=slot.env(),
                                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
        for proc in procs:
            _, err = proc.communicate()
            if proc.returncode != 0:
                raise RuntimeError(f"benchmark run failed (exit {proc.returncode}):\n{err[-2000:]}")
        return sum(_rate(out) for out in outs)


def measure(data: Path, steps: int) -> List[Tuple[str, float]]:
    """``(layout, samples/s)`` of the four layouts on the knee training data ``data``, plain 1 thread first."""
    cores = os.cpu_count() or 1
    return [("plain fastMRI loop, 1 process, 1 thread", _plain_subprocess(data, steps, 1)),
            ("plain fastMRI loop, 1 process, 2 threads", _plain_subprocess(data, steps, 2)),
            (f"study layout: {cores} x 1-rank DeepSpeed runs side by side", deepspeed_runs(data, steps, cores, 1)),
            ("one 2-rank DeepSpeed ZeRO-2 run", deepspeed_runs(data, steps, 1, 2))]


def format_table(rows: Sequence[Tuple[str, float]], steps: int) -> str:
    """The benchmark table: the machine and date, then each layout's samples/s and ratio to the first row."""
    base = rows[0][1]
    lines = [f"demo training throughput, {cpu_name()} ({os.cpu_count() or 1} cores), {time.strftime('%Y-%m-%d')}, "
             f"{steps} timed steps each", f"{'layout':58s} {'samples/s':>10s} {'vs plain 1 thread':>18s}"]
    lines += [f"{name:58s} {rate:10.2f} {rate / base:17.2f}x" for name, rate in rows]
    return "\n".join(lines)

"""``make demo``: the whole knee->brain study on the embedded simulator data, end to end.

1. simulate the demo data (procedural phantom knees for train/val, real-anatomy Colin27 brains with simulated
   coils for transfer) into ``runs/demo-data``;
2. train the baseline and the MRAugment arm with ``varnet_ds/conf/demo.yaml`` under the DeepSpeed launcher
   (2 CPU ranks without a GPU, every GPU otherwise), identical except for ``aug.enabled``;
3. reconstruct the brain set with each model (``varnet_ds.evaluate``) for the report's panels;
4. write the comparison report (``analysis/compare.py``) to ``runs/demo-report``.

Rerunning resumes or skips finished steps; ``--fresh`` starts over.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional

import torch

ROOT = Path(__file__).resolve().parent.parent
RUNS = ROOT / "runs"
DATA = RUNS / "demo-data"
ARMS = {"demo-baseline": ["aug.enabled=false", "log.wandb.job_type=baseline"],
        "demo-mraugment": ["aug.enabled=true", "log.wandb.job_type=mraugment"]}
# Demo data: small enough for CPU minutes, same format as fastMRI multicoil.
DEMO_SETS = {
    "knee_train": dict(anatomy="knee", volumes=10, slices=6, coils=6, shape=(128, 96), seed=1),
    "knee_val": dict(anatomy="knee", volumes=3, slices=6, coils=6, shape=(128, 96), seed=1001),
    "brain": dict(anatomy="brain", volumes=4, slices=6, coils=6, shape=(128, 80), seed=2001),
}
NOTE = ("Demo data: the knees are procedural phantoms (not patient data) and the brains are real Colin27 anatomy "
        "with simulated coils, phase and noise, at 128x96 / 128x80 instead of fastMRI's 640x368 / 640x320. "
        "The tiny VarNet trains for minutes on a CPU. The report shows the pipeline working end to end and the "
        "direction of the effects at this scale; it is not evidence about MRAugment on real fastMRI data.")


def say(msg: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def make_data(fresh: bool) -> None:
    from varnet_ds.data.synth import write_dataset

    stamp = DATA / ".complete"
    if stamp.exists() and not fresh:
        say(f"demo data present in {DATA} (use --fresh to regenerate)")
        return
    shutil.rmtree(DATA, ignore_errors=True)
    for name, kw in DEMO_SETS.items():
        t0 = time.time()
        files = write_dataset(out_dir=DATA / name, **kw)
        say(f"simulated {name}: {len(files)} volumes in {time.time() - t0:.1f} s")
    stamp.write_text("ok\n")
    subprocess.run([sys.executable, "-m", "varnet_ds.data.check", str(DATA / "knee_train"), str(DATA / "knee_val"),
                    str(DATA / "brain")], check=True)


def launcher(nproc: Optional[int]) -> List[str]:
    """The DeepSpeed launcher command: every GPU, or 2 CPU ranks."""
    n = nproc or (torch.cuda.device_count() if torch.cuda.is_available() else 2)
    return [str(Path(sys.executable).parent / "deepspeed"), "--num_gpus", str(n)]


def train(run: str, overrides: List[str], nproc: Optional[int], extra: List[str]) -> None:
    cmd = [*launcher(nproc), str(ROOT / "varnet_ds" / "train.py"),
           "--ds_config", str(ROOT / "ds_configs" / "zero2.json"), "--config", "demo",
           f"run.name={run}", f"run.out_dir={RUNS / run}", *overrides, *extra]
    env = dict(os.environ)
    if not torch.cuda.is_available():
        env["OMP_NUM_THREADS"] = "1"  # one thread per CPU rank
    say(f"training {run}: {' '.join(cmd[-len(overrides) - len(extra) - 2:])}")
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"demo: training {run} failed with exit code {proc.returncode}")
    say(f"{run} done in {time.time() - t0:.0f} s")


def reconstruct(run: str) -> None:
    from varnet_ds.evaluate import main as evaluate_main

    out = RUNS / run / "recon"
    say(f"reconstructing the brain set with {run} -> {out}")
    code = evaluate_main(["--run", str(RUNS / run), "--data", str(DATA / "brain"), "--out", str(out),
                          "--acceleration", "4", "--center-fraction", "0.08", "--mask-type", "equispaced"])
    if code != 0:
        raise SystemExit(f"demo: evaluation of {run} failed ({code})")


def report() -> Path:
    sys.path.insert(0, str(ROOT / "analysis"))
    from compare import build_report  # analysis/ is a folder of scripts, not part of the package

    out = RUNS / "demo-report"
    path = build_report([RUNS / r for r in ARMS], out, labels=["baseline", "mraugment"], note=NOTE)
    return Path(path)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fresh", action="store_true", help="delete demo data and runs first")
    p.add_argument("--nproc", type=int, default=None, help="ranks (default: all GPUs, or 2 CPU ranks)")
    p.add_argument("overrides", nargs="*", help="extra config overrides for both arms, e.g. train.epochs=4")
    args = p.parse_args(argv)
    t0 = time.time()
    os.environ.setdefault("WANDB_SILENT", "true")
    if args.fresh:
        for run in [*ARMS, "demo-report"]:
            shutil.rmtree(RUNS / run, ignore_errors=True)
    make_data(args.fresh)
    for run, overrides in ARMS.items():
        train(run, overrides, args.nproc, args.overrides)
    for run in ARMS:
        reconstruct(run)
    path = report()
    say(f"finished in {(time.time() - t0) / 60:.1f} min")
    say(f"report: {path} and {path.with_suffix('.html')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

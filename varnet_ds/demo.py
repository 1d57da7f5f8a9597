"""``make demo``: the knee->brain study end to end on the embedded simulator data, 5 seeds x 2 arms.

1. simulate the demo data (procedural phantom knees for train/val, real-anatomy MNI152 brains with simulated
   coils for transfer, 4 acquisitions) into ``runs/demo-data`` and check it against the committed manifest
   ``varnet_ds/sim/demo_manifest.json`` (content sha256 per file, anatomy source, generator version): a missing,
   extra or different file stops the demo, naming it and what produced it (docs/demo_data.md);
2. run the study (``python -m varnet_ds.study``): baseline and MRAugment, identical except for ``aug.enabled``,
   seeds 1 to 5, each run with ``varnet_ds/conf/demo.yaml`` into ``runs/demo/<arm>-s<seed>``; on a CPU box 1-rank
   runs side by side (one plain ``train.py`` process per core), on a GPU node one run per GPU side by side (the
   DeepSpeed launcher); then the study statistics (``varnet-ds study-report``) write
   ``runs/demo/report/study.json``, ``per_volume.csv`` and the seed figure;
3. reconstruct the brain set with seed 1 of each arm (``varnet_ds.evaluate``) for the report's panels;
4. write the comparison report (``varnet-ds report runs/demo``) and the W&B Report spec (dry run) into
   ``runs/demo/report``.

Rerunning resumes or skips finished steps; ``--fresh`` starts over. ``make results`` then writes the README's
headline table and figure from ``study.json``. ``--write-manifest`` simulates the demo data afresh and writes the
manifest from it (after a deliberate change of the simulator; nothing is trained).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional

import torch

from varnet_ds.console import say
from varnet_ds.exits import EXIT_USAGE, entry_point
from varnet_ds.files import atomic_write_text
from varnet_ds.run_folder import run_name
from varnet_ds.sim import manifest as data_manifest
from varnet_ds.sim.anatomy import AnatomySourceError, require

RUNS = Path.cwd() / "runs"  # of the working directory (`make demo`: the checkout's runs/), never the package's
DATA = RUNS / "demo-data"
STUDY = "demo"
SEEDS = (1, 2, 3, 4, 5)
ARMS = {"baseline": ["aug.enabled=false"], "mraugment": ["aug.enabled=true"]}
# Demo data: small enough for CPU minutes, same format as fastMRI multicoil. 10 knee val volumes and 12 brain
# volumes (3 per acquisition) let a consistent per-volume effect reach p < 0.01 (Wilcoxon's floor: 2 / 2^n); they
# have 2 slices each: every run is evaluated after each of its 4 epochs, and a forward pass costs the same per slice
# whether batched or not on a CPU (measured), so the slices evaluated are the time (the volume is the unit).
DEMO_SETS = {
    "knee_train": dict(anatomy="knee", volumes=10, slices=6, coils=6, shape=(128, 96), seed=1),
    "knee_val": dict(anatomy="knee", volumes=10, slices=2, coils=6, shape=(128, 96), seed=1001),
    "brain": dict(anatomy="brain", volumes=12, slices=2, coils=6, shape=(128, 80), seed=2001),
}
NOTE = ("Demo data: the knees are procedural phantoms (not patient data) and the brains are real anatomy (the "
        "MNI152 ICBM 2009a T1 template with a synthetic skull) with simulated coils, phase and noise, at 128x96 / "
        "128x80 instead of fastMRI's 640x368 / 640x320. "
        "The tiny VarNet trains for minutes on a CPU. The report shows the pipeline working end to end and the "
        "direction of the effects at this scale; it is not evidence about MRAugment on real fastMRI data.")


FRESH_COMMAND = "python -m varnet_ds.demo --fresh"
WRITE_COMMAND = "python -m varnet_ds.demo --write-manifest"
STUDY_DATA = "demo_data.json"  # in runs/<study>: the data (manifest.data_sha256) its runs were trained on


def load_manifest(path: Path = data_manifest.DEMO_MANIFEST) -> dict:
    """The committed demo data manifest, checked against :data:`DEMO_SETS` (stops the demo when they disagree)."""
    try:
        manifest = data_manifest.load(path)
    except data_manifest.ManifestError as err:
        raise SystemExit(f"demo: {err}; `{WRITE_COMMAND}` writes it") from None
    ours = {name: data_manifest.spec_json(kw) for name, kw in DEMO_SETS.items()}
    theirs = {name: entry["spec"] for name, entry in manifest["sets"].items()}
    if ours != theirs:
        raise SystemExit(f"demo: {path} was written for other demo sets than varnet_ds/demo.py's DEMO_SETS "
                         f"(manifest: {theirs}; DEMO_SETS: {ours}); after changing DEMO_SETS on purpose, "
                         f"`{WRITE_COMMAND}` refreshes it")
    return manifest


def simulate_data(root: Path = DATA) -> None:
    """Simulate every set of :data:`DEMO_SETS` into ``root`` (deleted first); stops when the anatomy is missing."""
    from varnet_ds.sim.synth import write_dataset

    try:
        require()
    except AnatomySourceError as err:
        _stop(f"demo: {err}", EXIT_USAGE)  # a setup step is missing, not bad data
    shutil.rmtree(root, ignore_errors=True)
    for name, kw in DEMO_SETS.items():
        t0 = time.time()
        files = write_dataset(out_dir=root / name, **kw)
        say(f"simulated {name}: {len(files)} volumes in {time.time() - t0:.1f} s")


def verify_data(manifest: dict, simulated_now: bool, root: Path = DATA,
                path: Path = data_manifest.DEMO_MANIFEST) -> None:
    """Stop the demo, naming every missing, extra or different file, unless ``root`` matches the manifest."""
    problems = data_manifest.check(root, manifest)
    if not problems:
        n = sum(len(entry["files"]) for entry in manifest["sets"].values())
        say(f"demo data matches {path.name}: {n} files (content sha256), anatomy {manifest['anatomy']['name']}")
        return
    listing = "\n  ".join(problems)
    expected = data_manifest.expected_producer(manifest)
    if simulated_now:
        advice = (f"This machine's simulator produced other data than the manifest's, so its study would not be "
                  f"comparable with the committed results; please report it with the lines above. If the "
                  f"simulator was changed on purpose, `{WRITE_COMMAND}` refreshes the manifest (commit it).")
    else:
        advice = (f"`{FRESH_COMMAND}` regenerates the demo data (and deletes the demo's runs, which were trained "
                  f"on it).")
    raise SystemExit(f"demo: the demo data in {root} does not match {path}:\n  {listing}\n"
                     f"The manifest's data was produced by: {expected}.\n{advice}")


def make_data(fresh: bool) -> dict:
    """Simulate the demo data unless it is there, then check it against the manifest; returns the manifest."""
    manifest = load_manifest()
    stamp = DATA / ".complete"
    spec = repr(sorted(DEMO_SETS.items()))
    simulated = fresh or not (stamp.exists() and stamp.read_text() == spec)
    if simulated:
        stamp.unlink(missing_ok=True)
        simulate_data()
    else:
        say(f"demo data present in {DATA} (use --fresh to regenerate)")
    verify_data(manifest, simulated)
    if simulated:
        stamp.write_text(spec)  # only data that matches the manifest is taken as present next time
        code = subprocess.run([sys.executable, "-m", "varnet_ds.data.check", str(DATA / "knee_train"),
                               str(DATA / "knee_val"), str(DATA / "brain")]).returncode
        if code:
            _stop(f"demo: the data check of {DATA} failed ({code})", code)
    return manifest


def bind_study(name: str, manifest: dict) -> None:
    """Record the manifest the study folder's runs are trained on; stop when they were trained on other data."""
    folder = RUNS / name
    record = {"data_sha256": data_manifest.data_sha256(manifest), "generator": manifest["generator"],
              "anatomy": manifest["anatomy"]}
    path = folder / STUDY_DATA
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise SystemExit(f"demo: {path} is not JSON ({err}); `{FRESH_COMMAND}` starts the study over") from None
        if old.get("data_sha256") != record["data_sha256"]:
            raise SystemExit(f"demo: the runs in {folder} were trained on other demo data (data sha256 "
                             f"{old.get('data_sha256')}, anatomy {old.get('anatomy')}) than the manifest's "
                             f"({record['data_sha256']}, anatomy {record['anatomy']}); `{FRESH_COMMAND}` starts over")
        return
    if folder.is_dir() and any(folder.iterdir()):
        raise SystemExit(f"demo: {folder} holds runs that predate the data manifest, so their data is unknown; "
                         f"`{FRESH_COMMAND}` starts over")
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(record, indent=1) + "\n")


def write_manifest(path: Path = data_manifest.DEMO_MANIFEST) -> None:
    """Simulate the demo data afresh and write the manifest from it (no training)."""
    simulate_data()
    (DATA / ".complete").write_text(repr(sorted(DEMO_SETS.items())))
    data_manifest.write(data_manifest.build(DATA, DEMO_SETS), path)
    say(f"wrote {path} ({sum(len(list((DATA / n).glob('*.h5'))) for n in DEMO_SETS)} files); commit it")


def _stop(message: str, code: int) -> None:
    """End the demo with a step's own exit code (``varnet_ds/exits.py``), not ``SystemExit(message)``'s 1."""
    print(message, file=sys.stderr, flush=True)
    raise SystemExit(code)


def study(name: str, nproc: Optional[int], extra: List[str]) -> None:
    """Every arm x seed with ``python -m varnet_ds.study`` (skips finished runs, resumes killed ones)."""
    cmd = [sys.executable, "-m", "varnet_ds.study", "--name", name, "--runs-dir", str(RUNS), "--config", "demo",
           "--ds_config", "zero2", "--seeds", *map(str, SEEDS)]
    for arm, overrides in ARMS.items():
        cmd += ["--arm", arm, *overrides]
    for key, folder in (("train_path", "knee_train"), ("val_path", "knee_val"), ("transfer_path", "brain")):
        cmd += ["--set", f"data.{key}={DATA / folder}"]
    for override in extra:
        cmd += ["--set", override]
    if nproc is not None:
        cmd += ["--gpus-per-run", str(nproc)] if torch.cuda.is_available() else ["--parallel", str(nproc)]
    elif torch.cuda.is_available():
        cmd += ["--gpus-per-run", "1"]  # one run per GPU side by side
    say("study: " + " ".join(cmd[2:]))
    code = subprocess.run(cmd).returncode
    if code != 0:
        _stop(f"demo: the study failed with exit code {code}", code)


def reconstruct(name: str, run: str) -> None:
    from varnet_ds.evaluate import main as evaluate_main

    folder = RUNS / name / run
    out = folder / "recon"
    if (out / "metrics.json").is_file():
        return
    say(f"reconstructing the brain set with {run} -> {out}")
    code = evaluate_main(["--run", str(folder), "--data", str(DATA / "brain"), "--out", str(out),
                          "--acceleration", "4", "--center-fraction", "0.08", "--mask-type", "equispaced"])
    if code != 0:
        _stop(f"demo: evaluation of {run} failed ({code})", code)


def report(name: str) -> Path:
    """The comparison report of the study folder and the W&B Report spec (no network), in runs/demo/report."""
    out = RUNS / name / "report"
    py = sys.executable
    code = subprocess.run([py, "-m", "varnet_ds.analysis.compare.report", str(RUNS / name), "--out", str(out),
                           "--note", NOTE], stdout=subprocess.DEVNULL).returncode
    if code:
        _stop(f"demo: the report of {RUNS / name} failed ({code}); rerun: varnet-ds report {RUNS / name} --out {out}",
              code)
    wandb = subprocess.run([py, "-m", "varnet_ds.analysis.wandb_report.report", "--entity", "varnet-ds", "--project",
                            "varnet_ds", "--study", name, "--runs-dir", str(RUNS), "--dry-run",
                            str(out / "wandb_report.json")])
    if wandb.returncode != 0:
        _stop(f"demo: the W&B Report spec failed ({wandb.returncode})", wandb.returncode)
    return out / "report.md"


@entry_point
def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fresh", action="store_true", help="delete demo data and runs first")
    p.add_argument("--nproc", type=int, default=None,
                   help="CPU: runs side by side (default: one per core); GPU: GPUs per run (default 1)")
    p.add_argument("--name", default=STUDY, help=f"study name: folder runs/NAME (default {STUDY})")
    p.add_argument("--write-manifest", action="store_true",
                   help=f"simulate the demo data afresh, write {data_manifest.DEMO_MANIFEST.name} from it, stop")
    p.add_argument("overrides", nargs="*", help="extra config overrides for every run, e.g. train.epochs=4")
    args = p.parse_args(argv)
    t0 = time.time()
    os.environ.setdefault("WANDB_SILENT", "true")
    if args.write_manifest:
        write_manifest()
        return 0
    if args.fresh:
        shutil.rmtree(RUNS / args.name, ignore_errors=True)
    manifest = make_data(args.fresh)
    bind_study(args.name, manifest)
    study(args.name, args.nproc, args.overrides)
    for arm in ARMS:
        reconstruct(args.name, run_name(arm, SEEDS[0]))
    path = report(args.name)
    say(f"finished in {(time.time() - t0) / 60:.1f} min")
    say(f"study: {RUNS / args.name / 'report' / 'study.json'} and {RUNS / args.name / 'report' / 'study.md'}")
    say(f"report: {path} and {path.with_suffix('.html')}")
    say("README headline table and figure from study.json: make results")
    return 0


if __name__ == "__main__":
    sys.exit(main())

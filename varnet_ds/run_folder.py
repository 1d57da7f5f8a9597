"""The run folder format, defined once: file names, the name of a study run, and what "finished" means.

A run folder (``run.out_dir``) holds, among others::

    config.yaml                          the resolved config (saved once per start)
    metrics.jsonl                        every train / validation / event row (rank 0)
    checkpoints/                         DeepSpeed tags + ``latest`` (varnet_ds.trainer.checkpoint)
    model_fp32.pt                        final weights, consolidated fp32
    model_selected.pt, selected.json     weights and record of the best knee-val evaluation
    val_{knee,brain}_per_volume.csv           per-volume results of the final weights
    val_{knee,brain}_per_volume_selected.csv  ... of the selected weights
    FINISHED                             written last: the run is finished
    .lock                                held by the one training process (rank 0) working in the folder

**Finished** means exactly one thing: ``FINISHED`` exists. Rank 0 writes it atomically after everything else (final
evaluation, checkpoint, fp32 export, selection, per-volume tables, ``end`` event, W&B); it records the training
length it finished (``train.epochs`` / ``train.max_steps``) and the files it vouches for. A run killed anywhere
before it has no marker and is completed by rerunning the same command (from its last checkpoint, without
retraining what the checkpoint holds). A run that is extended (a larger ``train.epochs`` / ``train.max_steps``)
loses its marker when the training restarts. The study runner, the study statistics (``varnet_ds.analysis``) and the W&B
report all read this module; it imports only the standard library and ``varnet_ds.files``, so reports stay free
of torch.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence

from varnet_ds.files import atomic_write_json

FINISHED = "FINISHED"
LOCK = ".lock"  # held (flock) by the training process that owns the folder; released by the kernel at its exit
CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
FINAL_WEIGHTS = "model_fp32.pt"
SELECTED_WEIGHTS = "model_selected.pt"
SELECTED = "selected.json"
EVAL_SPLITS = ("val_knee", "val_brain")
CHECKPOINT_KINDS = ("selected", "final")


class VolumeRow(NamedTuple):
    """One row of a per-volume table (:func:`table_name`): metrics of one volume at one acceleration. Written by the
    trainer's evaluation (plain Python types, picklable for ``all_gather_object``), read by the analysis."""

    fname: str
    acquisition: str
    acceleration: int
    num_slices: int
    ssim: float
    psnr: float
    nmse: float


VOLUME_COLUMNS = VolumeRow._fields  # the tables' header, in this order


def run_name(arm: str, seed: int) -> str:
    """``<arm>-s<seed>``: the folder name, ``run.name`` and label of one run of a study."""
    return f"{arm}-s{seed}"


def table_name(split: str, checkpoint: str = "final") -> str:
    """File name of a per-volume table: ``val_brain_per_volume.csv`` (final) or ``..._selected.csv``."""
    if checkpoint not in CHECKPOINT_KINDS:
        raise ValueError(f"checkpoint {checkpoint!r}: one of {CHECKPOINT_KINDS}")
    return f"{split}_per_volume{'_selected' if checkpoint == 'selected' else ''}.csv"


class RunFolderError(ValueError):
    """A run folder's ``FINISHED`` marker is unreadable or vouches for a file that is gone (message names it)."""


def read_finished(run_dir: Path | str) -> Optional[Dict[str, Any]]:
    """The ``FINISHED`` record of ``run_dir``, or ``None`` when the run has not finished.

    Raises:
        RunFolderError: the marker is not a JSON object, or a file it lists is missing (the folder was altered
            after the run finished; the message names the file).
    """
    path = Path(run_dir) / FINISHED
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        record = json.loads(text)
    except json.JSONDecodeError as err:
        raise RunFolderError(f"{path}: not JSON ({err}); delete it and rerun the same command") from None
    if not isinstance(record, dict) or not isinstance(record.get("files"), list):
        raise RunFolderError(f"{path}: expected an object with 'files'; delete it and rerun the same command")
    gone = [f for f in record["files"] if not (Path(run_dir) / f).exists()]
    if gone:
        raise RunFolderError(f"{path} vouches for {', '.join(gone)}, which is missing in {run_dir}; delete "
                             f"{FINISHED} and rerun the same command to complete the run again")
    return record


def is_finished(run_dir: Path | str, epochs: Optional[int] = None, max_steps: Optional[int] = None) -> bool:
    """Whether ``run_dir`` finished; with ``epochs``/``max_steps`` given, finished at exactly that length."""
    record = read_finished(run_dir)
    if record is None:
        return False
    if epochs is not None and record.get("epochs") != epochs:
        return False
    return max_steps is None or record.get("max_steps") == max_steps


def write_finished(run_dir: Path | str, *, step: int, epoch: int, epochs: int, max_steps: Optional[int],
                   files: Sequence[str]) -> Path:
    """Write ``FINISHED`` atomically (``varnet_ds.files``; then the folder is fsynced): call it last.

    Args:
        step, epoch: the final optimizer step and the epoch it was taken in.
        epochs, max_steps: the training length this run finished (``train.epochs``, ``train.max_steps``).
        files: the run's output files (names relative to ``run_dir``) the marker vouches for; each must exist.
    """
    run_dir = Path(run_dir)
    missing = [f for f in files if not (run_dir / f).exists()]
    if missing:
        raise RunFolderError(f"{run_dir}: cannot mark finished, missing {', '.join(missing)}")
    record = {"step": int(step), "epoch": int(epoch), "epochs": int(epochs),
              "max_steps": None if max_steps is None else int(max_steps), "files": list(files),
              "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    path = run_dir / FINISHED
    atomic_write_json(path, record)
    fd = os.open(run_dir, os.O_RDONLY)  # the rename itself reaches the disk before anyone trusts it
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return path


def clear_finished(run_dir: Path | str) -> bool:
    """Remove the marker before a finished run is extended; returns whether there was one."""
    path = Path(run_dir) / FINISHED
    existed = path.exists()
    path.unlink(missing_ok=True)
    return existed


def output_files(run_dir: Path | str, splits: Sequence[str] = EVAL_SPLITS) -> List[str]:
    """The outputs a finished run vouches for, of those present: config, metrics, weights, selection, tables."""
    run_dir = Path(run_dir)
    names = [CONFIG, METRICS, FINAL_WEIGHTS, SELECTED_WEIGHTS, SELECTED,
             *(table_name(s, k) for s in splits for k in ("final", "selected"))]
    return [n for n in names if (run_dir / n).exists()]


def lock(run_dir: Path | str, wait_s: float = 600.0, say=print,
         stop: Optional[Callable[[], bool]] = None) -> Optional[int]:
    """Take the run folder's lock (rank 0 of a training): one process works in a run folder at a time.

    A process still writing the folder (e.g. the run of a killed study runner, checkpointing on its way out)
    holds it; this waits for it, saying so once, for at most ``wait_s`` seconds. The lock is released when the
    holder exits, however it exits (``flock``).

    Returns:
        The lock file's descriptor: keep it open for the life of the process. ``None`` when ``stop()`` became
        true while waiting (a stop signal: the caller exits to be requeued without touching the folder).

    Raises:
        RunFolderError: still held after ``wait_s`` (the message names the folder and the holder's pid).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    deadline, told = time.monotonic() + wait_s, False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            if stop is not None and stop():
                os.close(fd)
                return None
            if time.monotonic() > deadline:
                os.close(fd)
                raise RunFolderError(f"{run_dir} is in use by process {holder} (lock {run_dir / LOCK}) after "
                                     f"waiting {wait_s:.0f} s; stop that process or use another run.out_dir") from None
            if not told:
                say(f"[varnet_ds] {run_dir} is in use by process {holder}; waiting for it to end", flush=True)
                told = True
            time.sleep(0.2)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd

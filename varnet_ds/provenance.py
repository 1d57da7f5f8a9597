"""Provenance of a run: which code, environment and data produced it (the ``provenance`` block of the ``start``
event, copied into ``study.json`` by ``varnet_ds.analysis.study.report`` and compared by ``varnet-ds provenance``).

The block (JSON)::

    {"varnet_ds": "0.1.0",                          # package version ("unknown" without package metadata)
     "git": {"commit": "5c6488b…", "dirty": false},  # null outside a git checkout; dirty null when undecided
     "python": "3.11.9",
     "libraries": {"torch": "2.5.1", "deepspeed": …, "scikit-image": …},   # null = not installed
     "cpu": "AMD EPYC 7763 64-Core Processor", "gpu": "NVIDIA H200" | null,
     "world_size": 2, "threads_per_rank": 1,
     "data": {"train_path": {"path": "/abs/knee_train", "files": 973, "bytes": 1043…, "sha256": "…"} | null,
              "val_path": …, "transfer_path": …}}

A data folder's identity is what the loader reads (``varnet_ds.data.fastmri_file.list_h5_files``: the folder's
top-level ``*.h5`` files): sha256 over the sorted ``[name, byte size]`` list plus the file count and total size.
One ``stat`` per file, no file contents and no mtimes (copies change them): cheap on thousands of ~1 GB files on
network storage, and a copy of the folder elsewhere has the same identity. It cannot see a file rewritten in place
with the same size; the demo's data manifest (per-file sha256) covers that case.

Nothing here may fail a run: git is asked with a short timeout and any failure records ``null``.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

import torch

DATA_FOLDERS = ("train_path", "val_path", "transfer_path")  # keys of cfg.data
LIBRARIES = ("torch", "deepspeed", "fastmri", "numpy", "scipy", "scikit-image", "h5py", "wandb", "omegaconf")
GIT_TIMEOUT_S = 5.0
PACKAGE_DIR = Path(__file__).resolve().parent


def package_version() -> str:
    """``varnet_ds.__version__``: the one version (pyproject.toml reads it too)."""
    import varnet_ds

    return varnet_ds.__version__


def library_versions() -> Dict[str, Optional[str]]:
    """Versions of :data:`LIBRARIES` from the distributions' metadata (``None``: not installed).

    Read without importing them: importing wandb only for its version costs a second of start-up.
    """
    out: Dict[str, Optional[str]] = {}
    for name in LIBRARIES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def _git(directory: Path, *args: str) -> Optional[str]:
    """Stdout of ``git -C directory ARGS``; ``None`` on a non-zero exit, a timeout or no git at all."""
    try:
        proc = subprocess.run(["git", "-C", str(directory), *args], capture_output=True, text=True,
                              errors="replace", timeout=GIT_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    return proc.stdout if proc.returncode == 0 else None


def git_state(directory: Union[str, Path] = PACKAGE_DIR) -> Optional[Dict[str, Any]]:
    """Commit of the source tree holding ``directory`` and whether tracked files differ from it.

    Args:
        directory: the package folder. Its ``__init__.py`` must be tracked by the enclosing repository, so a
            package installed into a virtual environment that happens to lie inside some checkout is not
            credited with that checkout's commit.

    Returns:
        ``{"commit": sha, "dirty": bool}`` (``dirty`` is ``None`` when ``git status`` failed or timed out), or
        ``None`` outside a checkout, without git or on any git error.
    """
    directory = Path(directory)
    if _git(directory, "ls-files", "--error-unmatch", "--", "__init__.py") is None:
        return None
    commit = _git(directory, "rev-parse", "HEAD")
    if commit is None or not commit.strip():
        return None
    status = _git(directory, "status", "--porcelain", "--untracked-files=no")
    return {"commit": commit.strip(), "dirty": None if status is None else bool(status.strip())}


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows, else ``"unknown"``."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.split(":", 1)[0].strip() in ("model name", "Model", "cpu model"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def gpu_model(device: Union[str, torch.device]) -> Optional[str]:
    """The name of the CUDA device the run uses; ``None`` for a CPU run."""
    device = torch.device(device)
    return torch.cuda.get_device_name(device) if device.type == "cuda" else None


def folder_identity(path: Union[str, Path]) -> Dict[str, Any]:
    """Identity of a data folder: count, total size and sha256 of the sorted ``[name, byte size]`` of its ``*.h5``.

    Args:
        path: a data folder (as ``data.train_path``).

    Returns:
        ``{"path": absolute path, "files": n, "bytes": total, "sha256": hex}``; ``{"path", "error"}`` when the
        folder cannot be listed (recorded, not raised: the run's own data check reports bad folders).
    """
    folder = Path(path)
    entries = []
    try:
        with os.scandir(folder) as it:
            for entry in it:
                if Path(entry.name).suffix == ".h5" and entry.is_file():
                    entries.append((entry.name, entry.stat().st_size))
    except OSError as err:
        return {"path": os.path.abspath(folder), "error": f"{type(err).__name__}: {err.strerror or err}"}
    entries.sort()
    digest = hashlib.sha256()
    for name, size in entries:
        digest.update((json.dumps([name, size]) + "\n").encode("utf-8"))
    return {"path": os.path.abspath(folder), "files": len(entries), "bytes": sum(s for _, s in entries),
            "sha256": digest.hexdigest()}


def data_identities(paths: Mapping[str, Optional[Union[str, Path]]]) -> Dict[str, Optional[Dict[str, Any]]]:
    """:func:`folder_identity` of each of :data:`DATA_FOLDERS` (``None`` for a folder not configured)."""
    return {key: folder_identity(paths[key]) if paths.get(key) else None for key in DATA_FOLDERS}


def run_provenance(data_paths: Mapping[str, Optional[Union[str, Path]]], world_size: int,
                   device: Union[str, torch.device]) -> Dict[str, Any]:
    """The ``provenance`` block of a run's ``start`` (and ``resume``) event; see the module docstring.

    Args:
        data_paths: ``cfg.data``'s ``train_path``, ``val_path`` and ``transfer_path`` (missing or ``None``: unused).
        world_size: ranks of the run.
        device: this rank's device (its GPU model is recorded; ``None`` for CPU).
    """
    return {"varnet_ds": package_version(), "git": git_state(), "python": platform.python_version(),
            "libraries": library_versions(), "cpu": cpu_model(), "gpu": gpu_model(device),
            "world_size": int(world_size), "threads_per_rank": torch.get_num_threads(),
            "data": data_identities(data_paths)}

"""Atomic file writes: a reader sees the old file or the complete new one, never a torn one.

Usage:
    with atomic_path(run_dir / "model_selected.pt") as tmp:
        torch.save(payload, tmp)
    atomic_write_text(run_dir / "selected.json", json.dumps(meta))
    atomic_write_csv(out / "per_volume.csv", ["fname", "ssim"], rows)

Every file the package writes (training outputs, the reports of ``varnet_ds.analysis``) goes through here.

The temporary file lives in the destination's folder (same file system, so the final ``os.replace`` is atomic),
is fsynced before the rename and removed if the write fails.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence, Union

PathLike = Union[str, Path]


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success fsync it and move it onto ``path``.

    Args:
        path: the destination file.

    Yields:
        The temporary path to write (by any library: ``torch.save``, ``open``, ``h5py``).

    Raises:
        Whatever the body raised; the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")


def strict_json(value: Any) -> Any:
    """``value`` for strict JSON: non-finite floats become ``None``, mappings and sequences converted recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


def atomic_write_json(path: PathLike, data: Any) -> None:
    """Write ``data`` as strict, indented JSON atomically (NaN/inf are written as ``null``)."""
    atomic_write_text(path, json.dumps(strict_json(data), indent=2, allow_nan=False) + "\n")


def atomic_write_csv(path: PathLike, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Write a CSV file atomically: ``header``, then one line per row (``csv`` module quoting, ``str`` of values)."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)

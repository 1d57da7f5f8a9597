"""``run_dir/metrics.jsonl``: the run's source of truth for analysis. One JSON object per line, appended and
flushed per row; the first ``n`` rows are what a checkpoint recorded, so a resume rolls back exactly.

Each row has ``step`` (global optimizer step), ``epoch``, ``split`` (``train | val_knee | val_brain | event``),
``time`` (unix seconds, added if absent) and metric keys; evaluation breakdown rows also carry ``acquisition`` and/or
``acceleration`` (see :func:`varnet_ds.eval.metrics.summarize`). Non-finite floats are written as ``null``.
``varnet_ds/analysis/runs.py`` reads the file with its own parser (the analysis never imports the training code).
"""

from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Mapping

import numpy as np

from varnet_ds.files import atomic_path, strict_json

SPLITS = ("train", "val_knee", "val_brain", "event")
ROW_KEYS = ("step", "epoch", "split", "acquisition", "acceleration", "time")


def read_rows(path: Path) -> List[Dict[str, Any]]:
    lines = [(i, line) for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()) if line.strip()]
    rows = []
    for n, (i, line) in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            if n != len(lines) - 1:
                raise ValueError(f"{path}:{i + 1}: invalid JSON line ({err})") from None
            warnings.warn(f"{path}:{i + 1}: skipping torn last line", RuntimeWarning, stacklevel=3)
    return rows


def scalar(value: Any) -> Any:
    """numpy/torch scalars -> Python; containers recursively; other values unchanged."""
    if isinstance(value, (str, bool, int, float)) or value is None:
        return value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): scalar(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [scalar(v) for v in value]
    if hasattr(value, "item") and int(np.prod(getattr(value, "shape", ()))) == 1:
        return value.item()
    raise TypeError(f"cannot log value of type {type(value).__name__}: {value!r}")


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split = {split!r}: must be one of {list(SPLITS)}")


def check_row(row: Mapping[str, Any]) -> None:
    """A row needs ``step``, ``epoch`` and a known ``split``; the error names the row."""
    for key in ("step", "epoch", "split"):
        if key not in row:
            raise ValueError(f"metrics row lacks required key {key!r}: {dict(row)}")
    check_split(row["split"])


class MetricsFile:
    """The open ``metrics.jsonl`` of one run (rank 0 only).

    Args:
        path: the file; created (with its folder) when missing, appended to otherwise.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.num_rows = len(read_rows(self.path)) if self.path.exists() else 0
        self._file: Any = open(self.path, "a", encoding="utf-8")

    def append(self, row: Mapping[str, Any]) -> Dict[str, Any]:
        """Write one row (``time`` added when absent, non-finite floats as null); returns the written record."""
        check_row(row)
        record = {str(k): scalar(v) for k, v in row.items()}
        record.setdefault("time", time.time())
        self._file.write(json.dumps(strict_json(record)) + "\n")
        self._file.flush()
        self.num_rows += 1
        return record

    def truncate_rows(self, keep: int) -> int:
        """Keep only the first ``keep`` rows (the count a checkpoint recorded); returns how many were dropped.

        Exact rollback after a crash: everything logged after the checkpoint (train rows, evaluations at the
        same step, events) goes, everything before stays. The rewrite is atomic (a torn last line is dropped).
        """
        self._file.close()
        try:
            rows = read_rows(self.path) if self.path.exists() else []
            kept = rows[: max(int(keep), 0)]
            with atomic_path(self.path) as tmp:
                tmp.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
            self.num_rows = len(kept)
        finally:
            self._file = open(self.path, "a", encoding="utf-8")
        return len(rows) - len(kept)

    def set_aside(self) -> Path:
        """Move every row to ``metrics.stale-<time>.jsonl`` beside the file (a fresh start in a used folder)."""
        backup = self.path.with_name(f"metrics.stale-{time.strftime('%Y%m%d-%H%M%S')}.jsonl")
        backup.write_bytes(self.path.read_bytes())
        self.truncate_rows(0)
        return backup

    def flush(self) -> None:
        """Flush and fsync (at checkpoints)."""
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self.flush()
        self._file.close()

"""Training runs as every report sees them: the one loader of a run folder.

A run folder (written by ``varnet_ds.tracking.tracker.Tracker``; format: ``varnet_ds.run_folder``) holds
``config.yaml``, ``metrics.jsonl`` (train, evaluation and event rows), ``images/{split}_epoch{E:03d}.png``,
``{split}_per_volume.csv`` and optionally ``recon/*.h5`` (from ``python -m varnet_ds.evaluate``). :func:`load_run`
reads the config, the validated rows, the per-volume tables and the events; the two-run comparison, the study
statistics and the W&B report all load runs through it. Row format (also produced from W&B histories by
:mod:`varnet_ds.analysis.compare.wandb_source`): ``step``, ``epoch``, ``split`` in
``train | val_knee | val_brain | event``, metric keys, and on evaluation breakdown rows ``acquisition`` and/or
``acceleration`` (a row with neither is the overall row). Metric values that were logged as ``null``
(non-finite) become NaN. Standard library and PyYAML; of the package only ``varnet_ds.run_folder``.
"""

from __future__ import annotations

import csv
import json
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import yaml

from varnet_ds.run_folder import CONFIG, VOLUME_COLUMNS, VolumeRow, table_name
from varnet_ds.run_folder import METRICS as METRICS_FILE

SPLITS = ("train", "val_knee", "val_brain", "event")
VAL_SPLITS = ("val_knee", "val_brain")
METRICS = ("ssim", "psnr", "nmse")
_NON_METRIC = {"step", "epoch", "split", "acquisition", "acceleration", "time", "event"}

Breakdown = Tuple[Optional[str], Optional[int]]  # (acquisition, acceleration); (None, None) = overall


class CompareError(Exception):
    """A bad input to the comparison (missing folder or file, malformed row); the message names it."""


@dataclass
class Run:
    """One training run.

    Attributes:
        label: display name (``--labels``, else ``run.name``, else the folder name).
        source: the folder path or ``wandb:ENTITY/PROJECT/ID``.
        config: resolved config as nested dicts (empty when unknown).
        rows: normalised, de-duplicated metric rows in file order.
        per_volume: split -> per-volume rows (splits without a table are absent).
        folder: the run folder (``None`` for W&B runs).
        notes: problems met while loading; they go to the report's Warnings section.
    """

    label: str
    source: str
    config: Dict[str, Any]
    rows: List[Dict[str, Any]]
    per_volume: Dict[str, List[VolumeRow]] = field(default_factory=dict)
    folder: Optional[Path] = None
    notes: List[str] = field(default_factory=list)

    def train_rows(self) -> List[Dict[str, Any]]:
        """Train rows sorted by step."""
        return sorted((r for r in self.rows if r["split"] == "train"), key=lambda r: r["step"])

    def events(self) -> List[Dict[str, Any]]:
        """Event rows in file order."""
        return [r for r in self.rows if r["split"] == "event"]

    def val_rows(self, split: str, breakdown: Breakdown = (None, None)) -> List[Dict[str, Any]]:
        """Evaluation rows of one split and breakdown (exact match; ``(None, None)`` = overall), by step."""
        acq, acc = breakdown
        rows = [r for r in self.rows if r["split"] == split and r.get("acquisition") == acq
                and r.get("acceleration") == acc]
        return sorted(rows, key=lambda r: r["step"])

    def breakdowns(self, split: str) -> List[Breakdown]:
        """Breakdowns present for ``split``: overall, per acceleration, per acquisition, per both (sorted)."""
        keys = {(r.get("acquisition"), r.get("acceleration")) for r in self.rows if r["split"] == split}
        return sorted(keys, key=breakdown_sort_key)

    def last_image(self, split: str) -> Optional[Tuple[int, Path]]:
        """``(epoch, path)`` of the newest ``images/{split}_epoch*.png``, if any."""
        if self.folder is None:
            return None
        found = []
        for path in (self.folder / "images").glob(f"{split}_epoch*.png"):
            match = re.fullmatch(rf"{re.escape(split)}_epoch(\d+)\.png", path.name)
            if match:
                found.append((int(match.group(1)), path))
        return max(found) if found else None


def breakdown_sort_key(key: Breakdown) -> Tuple[int, str, int]:
    """Order: overall, per acceleration, per acquisition, per acquisition x acceleration."""
    acq, acc = key
    rank = {(True, True): 0, (True, False): 1, (False, True): 2, (False, False): 3}[(acq is None, acc is None)]
    return rank, acq or "", acc if acc is not None else -1


def format_breakdown(key: Breakdown) -> Tuple[str, str]:
    """``("all" | acquisition, "all" | "x4")`` for tables."""
    acq, acc = key
    return (acq if acq is not None else "all", f"x{acc}" if acc is not None else "all")


def cfg_get(config: Mapping[str, Any], dotted: str, default: Any = None) -> Any:
    """``config["a"]["b"]`` for ``"a.b"``; ``default`` when any level is missing."""
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


def _as_float(value: Any, where: str, key: str) -> float:
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CompareError(f"{where}: {key} = {value!r} is not a number")
    return float(value)


def _as_int(value: Any, where: str, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer():
        if isinstance(value, str) and re.fullmatch(r"\d+", value.strip()):
            return int(value)
        raise CompareError(f"{where}: {key} = {value!r} is not an integer")
    return int(value)


def normalise_rows(raw: Iterable[Tuple[str, Mapping[str, Any]]], notes: List[str], source: str) -> List[Dict]:
    """Validate and normalise raw rows; duplicates of (split, step, acquisition, acceleration) keep the last.

    Args:
        raw: ``(location, row)`` pairs; ``location`` (e.g. ``path:line``) is used in error messages.
        notes: receives warnings about skipped or duplicated rows.
        source: run name for the notes.

    Returns:
        Rows with int ``step``/``epoch``, optional ``acquisition`` (str) / ``acceleration`` (int), metric
        values as floats (NaN for null) and event rows unchanged otherwise.
    """
    out: Dict[Any, Dict[str, Any]] = {}
    unknown: Dict[str, int] = {}
    duplicates = 0
    for n, (where, row) in enumerate(raw):
        if not isinstance(row, Mapping):
            raise CompareError(f"{where}: expected a JSON object, got {type(row).__name__}")
        for key in ("step", "epoch", "split"):
            if key not in row:
                raise CompareError(f"{where}: row lacks required key {key!r}")
        split = row["split"]
        if split not in SPLITS:
            unknown[str(split)] = unknown.get(str(split), 0) + 1
            continue
        rec: Dict[str, Any] = {"step": _as_int(row["step"], where, "step"),
                               "epoch": _as_int(row["epoch"], where, "epoch"), "split": split}
        for key, value in row.items():
            if key in ("step", "epoch", "split"):
                continue
            if key == "acquisition" and value is not None:
                rec[key] = str(value)
            elif key == "acceleration" and value is not None:
                rec[key] = _as_int(value, where, key)
            elif split != "event" and key not in _NON_METRIC:
                rec[key] = _as_float(value, where, key)
            elif value is not None:
                rec[key] = value
        if split == "event":
            out[("event", n)] = rec
            continue
        key = (split, rec["step"], rec.get("acquisition"), rec.get("acceleration"))
        if key in out:
            duplicates += 1
            del out[key]  # re-insert so the kept (last) row takes the later position
        out[key] = rec
    if duplicates:
        notes.append(f"{source}: {duplicates} duplicated metric row(s) (same split/step/breakdown); kept the last")
    for split, count in unknown.items():
        notes.append(f"{source}: skipped {count} row(s) with unknown split {split!r}")
    return list(out.values())


def parse_metrics(path: Path, notes: List[str]) -> List[Dict[str, Any]]:
    """Read ``metrics.jsonl``; a torn last line (run killed mid-write) is skipped with a warning."""
    lines = [(i + 1, line) for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()) if line.strip()]
    raw = []
    for n, (lineno, line) in enumerate(lines):
        try:
            raw.append((f"{path}:{lineno}", json.loads(line)))
        except json.JSONDecodeError as err:
            if n != len(lines) - 1:
                raise CompareError(f"{path}:{lineno}: invalid JSON line ({err})") from None
            msg = f"{path}:{lineno}: skipped a torn last line (run interrupted while writing)"
            warnings.warn(msg, RuntimeWarning, stacklevel=2)
            notes.append(msg)
    return normalise_rows(raw, notes, str(path.parent.name))


def flatten(config: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
    """Nested dicts -> ``{"a.b": value}``."""
    out: Dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def last_row_per_epoch(rows: Sequence[dict]) -> Dict[int, dict]:
    """Epoch -> the last (highest-step) evaluation row of that epoch; ``rows`` sorted by step."""
    return {r["epoch"]: r for r in rows}


def read_config(path: Path) -> Dict[str, Any]:
    """The resolved ``config.yaml`` as nested dicts."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise CompareError(f"{path}: invalid YAML ({err})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise CompareError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def volume_rows(records: Iterable[Mapping[str, Any]], source: str) -> List[VolumeRow]:
    """Per-volume records (dicts with :data:`VOLUME_COLUMNS`) -> :class:`VolumeRow` list."""
    out = []
    for i, rec in enumerate(records):
        where = f"{source} row {i + 1}"
        missing = [c for c in VOLUME_COLUMNS if c not in rec]
        if missing:
            raise CompareError(f"{source}: missing column(s) {missing}; expected {list(VOLUME_COLUMNS)}")
        values = {}
        for col in ("ssim", "psnr", "nmse"):
            value = rec[col]
            try:
                values[col] = math.nan if value in (None, "") else float(value)
            except (TypeError, ValueError):
                raise CompareError(f"{where}: {col} = {value!r} is not a number") from None
        out.append(VolumeRow(str(rec["fname"]), str(rec["acquisition"]), _as_int(rec["acceleration"], where,
                                                                                 "acceleration"),
                             _as_int(rec["num_slices"], where, "num_slices"), **values))
    return out


def read_per_volume(path: Path) -> List[VolumeRow]:
    """Read ``{split}_per_volume.csv``."""
    with open(path, newline="", encoding="utf-8") as f:
        return volume_rows(list(csv.DictReader(f)), str(path))


def load_run(folder: Path | str, label: Optional[str] = None) -> Run:
    """Load one run folder.

    Raises:
        CompareError: the folder or its ``metrics.jsonl`` does not exist, or a file is malformed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CompareError(f"run folder not found: {folder}")
    metrics_path = folder / METRICS_FILE
    if not metrics_path.is_file():
        raise CompareError(f"no metrics.jsonl in run folder {folder} (expected {metrics_path})")
    notes: List[str] = []
    rows = parse_metrics(metrics_path, notes)
    config_path = folder / CONFIG
    if config_path.is_file():
        config = read_config(config_path)
    else:
        config = {}
        notes.append(f"{folder}: no config.yaml; run settings are unknown")
    per_volume = {}
    for split in VAL_SPLITS:
        csv_path = folder / table_name(split)
        if csv_path.is_file():
            per_volume[split] = read_per_volume(csv_path)
    name = label or cfg_get(config, "run.name") or folder.resolve().name
    run = Run(label=str(name), source=str(folder), config=config, rows=rows, per_volume=per_volume,
              folder=folder, notes=notes)
    if not rows:
        notes.append(f"{run.label}: metrics.jsonl has no rows")
    return run


def assign_labels(runs: Sequence[Run], labels: Optional[Sequence[str]], notes: List[str]) -> None:
    """Apply ``--labels`` (one per run) and make labels unique (``name``, ``name#2``, ...)."""
    if labels is not None:
        if len(labels) != len(runs):
            raise CompareError(f"--labels has {len(labels)} value(s) for {len(runs)} run(s): {list(labels)}")
        for run, label in zip(runs, labels):
            run.label = str(label)
    seen: Dict[str, int] = {}
    for run in runs:
        if run.label in seen:
            seen[run.label] += 1
            new = f"{run.label}#{seen[run.label]}"
            notes.append(f"two runs are labelled {run.label!r}; the one from {run.source} is shown as {new!r}")
            run.label = new
        else:
            seen[run.label] = 1

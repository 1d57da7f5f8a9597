"""Experiment tracking: ``run_dir/metrics.jsonl`` (the source of truth for analysis) plus an optional W&B run.

Rank 0 owns everything; a :class:`Tracker` built with ``rank != 0`` is a no-op that writes nothing.

``metrics.jsonl``: one JSON object per line, appended and flushed per row. Each row has ``step`` (global
optimizer step), ``epoch``, ``split`` (``train | val_knee | val_brain | event``), ``time`` (unix seconds, added
if absent) and metric keys; evaluation breakdown rows also carry ``acquisition`` and/or ``acceleration``
(see :func:`varnet_ds.metrics.summarize`). Non-finite floats are written as ``null``.

W&B keys are ``{split}[/{acquisition}][/x{acceleration}]/{metric}``, e.g. ``train/loss``, ``val_brain/ssim``,
``val_brain/AXT2/x4/ssim``; images are ``{split}/images/{panel}``. Every W&B row also carries
``trainer/step`` and ``trainer/epoch``; ``define_metric`` plots ``train/*`` and ``event/*`` against
``trainer/step`` and ``val_knee/*``, ``val_brain/*`` against ``trainer/epoch``. The W&B ``step=`` argument is
deliberately not used: W&B drops rows whose step is below the last one it saw, which would lose every row
between the checkpoint and the crash of a resumed run. (W&B history of a resumed run may therefore hold
both copies of that window; ``metrics.jsonl`` is truncated to the checkpoint, see :meth:`Tracker.truncate_after`.)

W&B mode (:func:`resolve_wandb_mode`): an explicit ``log.wandb.mode`` wins, then the environment variable
``WANDB_MODE`` (``WANDB_DISABLED=true`` means disabled), else ``online`` when wandb's own credential lookup
finds a key for its server (:func:`varnet_ds.wandb_run.wandb_credentials`) and ``offline`` otherwise. Falling
back from online to offline (no key, or a failing online ``wandb.init``) prints one line with the
``wandb sync <dir>`` command; a failing offline init means no W&B. After init, W&B exceptions are caught and
reported once, and ``metrics.jsonl`` keeps being written. Run name/group/job type/tags, best-value summaries
(``<key>_max`` / ``<key>_min``) and model artifacts: see :mod:`varnet_ds.wandb_run`.
"""

from __future__ import annotations

import csv
import json
import os
import re
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
from omegaconf import DictConfig

from varnet_ds.files import strict_json
from varnet_ds.wandb_run import (  # noqa: F401  (re-exported: the tracker's public W&B helpers)
    EPOCH_KEY,
    SPLITS,
    STEP_KEY,
    WANDB_MODES,
    WandbRun,
    check_artifact_name,
    has_wandb_credentials,
    image_key,
    requested_wandb_mode,
    resolve_wandb_mode,
    validate_group,
    wandb_credentials,
    wandb_key,
)

_ROW_KEYS = ("step", "epoch", "split", "acquisition", "acceleration", "time")


def read_metrics(path: Path | str) -> List[Dict[str, Any]]:
    """Rows of a ``metrics.jsonl``; a torn last line (killed mid-write) is skipped with a warning."""
    return _parse_lines(Path(path))


def _parse_lines(path: Path) -> List[Dict[str, Any]]:
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


def _scalar(value: Any) -> Any:
    """numpy/torch scalars -> Python; containers recursively; other values unchanged."""
    if isinstance(value, (str, bool, int, float)) or value is None:
        return value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _scalar(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_scalar(v) for v in value]
    if hasattr(value, "item") and int(np.prod(getattr(value, "shape", ()))) == 1:
        return value.item()
    raise TypeError(f"cannot log value of type {type(value).__name__}: {value!r}")


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split = {split!r}: must be one of {list(SPLITS)}")


def _normalise_panels(panels: Mapping[str, Any]) -> Dict[str, np.ndarray]:
    """Panels scaled to [0, 1]: images share the target's scale (or their joint max); ``*error*`` panels are
    shown as absolute values on their own scale."""
    arrays = {}
    for name, img in panels.items():
        arr = np.asarray(img.detach().cpu().float() if hasattr(img, "detach") else img, dtype=np.float32)
        arr = np.squeeze(arr)
        if arr.ndim != 2:
            raise ValueError(f"image panel {name!r} must be 2-D [H, W], got shape {arr.shape}")
        arrays[name] = np.nan_to_num(np.abs(arr) if "error" in name else arr)
    if not arrays:
        raise ValueError("log_images: no panels given")
    if "target" in arrays:
        scale = float(arrays["target"].max())
    else:
        scale = max((float(a.max()) for n, a in arrays.items() if "error" not in n), default=1.0)
    out = {}
    for name, arr in arrays.items():
        s = float(arr.max()) if "error" in name else scale
        out[name] = np.clip(arr / s, 0.0, 1.0) if s > 0 else np.zeros_like(arr)
    return out


def _write_panels_png(path: Path, panels: Mapping[str, np.ndarray], title: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3.0 * len(panels), 3.3))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (name, img) in zip(axes, panels.items()):
        ax.imshow(img, cmap="inferno" if "error" in name else "gray", vmin=0.0, vmax=1.0)
        ax.set_title(name.replace("_", " "), fontsize=10)
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, format="png", dpi=100)
    os.replace(tmp, path)


class Tracker:
    """Writes ``metrics.jsonl``, images, tables and the W&B run of one training run (rank 0 only).

    Args:
        cfg: the full resolved config (``varnet_ds.config.load_config``); uses ``run.name`` and ``log.wandb``.
        run_dir: run folder; holds ``metrics.jsonl``, ``images/``, ``{table}.csv`` and W&B's ``wandb/``.
        rank: global rank; every method is a no-op unless ``rank == 0``.
        resume_id: W&B run id from the checkpoint; continues that run (``resume="allow"``).
    """

    def __init__(self, cfg: DictConfig, run_dir: Path | str, rank: int, resume_id: Optional[str] = None) -> None:
        self.run_dir = Path(run_dir)
        self.rank = rank
        self.active = rank == 0
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.mode = "disabled"
        self._resume_id = resume_id
        self._wb: Optional[WandbRun] = None
        self._file: Any = None
        self._finished = False
        self.num_rows = 0  # rows in metrics.jsonl (rank 0)
        requested = requested_wandb_mode(cfg.log.wandb.mode)
        if requested != "disabled":
            validate_group(cfg.log.wandb.group)  # ValueError naming a group W&B's run filters cannot express
        if not self.active:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.num_rows = len(_parse_lines(self.metrics_path)) if self.metrics_path.exists() else 0
        self._file = open(self.metrics_path, "a", encoding="utf-8")
        mode, fallback = requested or "online", None
        if mode == "online":
            found, host = wandb_credentials()
            if not found:
                mode, fallback = "offline", f"no API key for {host} (run `wandb login` or set WANDB_API_KEY)"
        if mode != "disabled":
            wb = WandbRun(cfg, self.run_dir, mode, resume_id, fallback)
            if wb.run is not None:
                self._wb, self.mode = wb, wb.mode

    def _check_open(self) -> None:
        if self._finished:
            raise RuntimeError(f"Tracker for {self.run_dir} is already finished")

    @property
    def wandb_id(self) -> Optional[str]:
        """Id of the W&B run (store it in the checkpoint); the resume id when W&B is off or failed."""
        return self._wb.run.id if self._wb is not None else self._resume_id

    @property
    def wandb_dir(self) -> Optional[Path]:
        """The W&B run's local folder (``run_dir/wandb/{offline,run}-<time>-<id>``), if a run exists."""
        return self._wb.dir if self._wb is not None else None

    def log(self, row: Mapping[str, Any]) -> None:
        """Append one row to ``metrics.jsonl`` and log it to W&B.

        Args:
            row: ``step``, ``epoch``, ``split`` and metric values; optional ``acquisition``/``acceleration``.
        """
        for key in ("step", "epoch", "split"):
            if key not in row:
                raise ValueError(f"metrics row lacks required key {key!r}: {dict(row)}")
        _check_split(row["split"])
        if not self.active:
            return
        self._check_open()
        record = {str(k): _scalar(v) for k, v in row.items()}
        record.setdefault("time", time.time())
        self._file.write(json.dumps(strict_json(record)) + "\n")
        self._file.flush()
        self.num_rows += 1
        if self._wb is None:
            return
        payload = {wandb_key(record["split"], k, record.get("acquisition"), record.get("acceleration")): v
                   for k, v in record.items() if k not in _ROW_KEYS and v is not None}
        payload.update({STEP_KEY: record["step"], EPOCH_KEY: record["epoch"]})
        self._wb.log(payload)

    def log_images(self, step: int, epoch: int, split: str, panels: Mapping[str, Any]) -> Optional[Path]:
        """Log image panels (e.g. zero_filled, reconstruction, target, error) to W&B and a PNG.

        Args:
            step: global step; epoch: epoch of the evaluation; split: e.g. ``val_brain``.
            panels: name -> ``[H, W]`` image. Non-error panels share the target's intensity scale; panels whose
                name contains ``error`` are shown as ``|error|`` scaled by their own max.

        Returns:
            The PNG path ``run_dir/images/{split}_epoch{epoch:03d}.png`` (overwritten by a later evaluation in
            the same epoch), or ``None`` on ranks other than 0.
        """
        _check_split(split)
        if not self.active:
            return None
        self._check_open()
        scaled = _normalise_panels(panels)
        path = self.run_dir / "images" / f"{split}_epoch{int(epoch):03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_panels_png(path, scaled, f"{split}  epoch {epoch}  step {step}")
        if self._wb is not None:
            wb = self._wb

            def log_wandb() -> None:
                payload: Dict[str, Any] = {
                    image_key(split, name): wb.wandb.Image(
                        (img * 255.0).round().astype(np.uint8), caption=f"{name} epoch {epoch} step {step}")
                    for name, img in scaled.items()
                }
                payload.update({STEP_KEY: int(step), EPOCH_KEY: int(epoch)})
                wb.run.log(payload)

            wb.call(log_wandb)
        return path

    def log_table(self, name: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> Optional[Path]:
        """Write ``run_dir/{name}.csv`` and log a W&B Table under key ``name``.

        Returns:
            The CSV path, or ``None`` on ranks other than 0.
        """
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise ValueError(f"table name {name!r}: use letters, digits, '_', '.', '-' only")
        data = [[_scalar(v) for v in r] for r in rows]
        for i, r in enumerate(data):
            if len(r) != len(columns):
                raise ValueError(f"table {name!r} row {i} has {len(r)} values for {len(columns)} columns")
        if not self.active:
            return None
        self._check_open()
        path = self.run_dir / f"{name}.csv"
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(list(columns))
            writer.writerows(data)
        os.replace(tmp, path)
        if self._wb is not None:
            wb = self._wb
            wb.call(lambda: wb.run.log({name: wb.wandb.Table(columns=list(columns), data=data)}))
        return path

    def log_model(self, path: Path | str, name: Optional[str] = None, aliases: Sequence[str] = (),
                  metadata: Optional[Mapping[str, Any]] = None) -> Optional[str]:
        """Log a weights file as a W&B Artifact of type ``model`` (offline runs stage it for ``wandb sync``).

        Args:
            path: the file, e.g. ``run_dir/model_selected.pt``.
            name: artifact name (letters, digits, ``_.-``); default ``model-<W&B run id>``, so the selected and
                final weights of one run are versions of one artifact told apart by their aliases.
            aliases: e.g. ``["selected"]`` or ``["final"]`` (W&B adds ``latest``).
            metadata: JSON-able facts stored with the artifact (config, metrics); NaN/inf become null.

        Returns:
            The artifact name, or ``None`` when nothing was logged (rank != 0, W&B off or failed).

        Raises:
            ValueError: invalid ``name`` or alias; FileNotFoundError: ``path`` missing on rank 0.
        """
        if name is not None:
            check_artifact_name(name)
        for alias in aliases:
            check_artifact_name(alias)
        meta = strict_json(_scalar(dict(metadata or {})))
        if not self.active:
            return None
        self._check_open()
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"log_model: {path} is not a file")
        if self._wb is None:
            return None
        name = name or f"model-{self._wb.run.id}"
        self._wb.log_model(path, name, list(aliases), meta)
        return name

    def log_summary(self, values: Mapping[str, Any]) -> None:
        """Set W&B run summary values without a history row, e.g. ``{"selected/val_brain/ssim": 0.91}``.

        ``metrics.jsonl`` is not touched (it holds history rows only). No-op on other ranks or without W&B.
        """
        data = strict_json(_scalar(dict(values)))
        if self.active and self._wb is not None:
            self._check_open()
            self._wb.log_summary(data)

    def truncate_after(self, step: int) -> int:
        """Drop ``metrics.jsonl`` rows with ``step`` greater than ``step``; returns how many were dropped.

        Rows logged at that step itself are kept (the engine uses :meth:`truncate_rows`, which is exact).
        """
        return self._rewrite(
            lambda rows: [r for r in rows if not (isinstance(r.get("step"), (int, float)) and r["step"] > step)])

    def truncate_rows(self, keep: int) -> int:
        """Keep only the first ``keep`` rows of ``metrics.jsonl`` (the count a checkpoint recorded).

        Exact rollback after a crash: everything logged after the checkpoint (train rows, evaluations at the
        same step, events) goes, everything before stays. Returns the number of rows dropped.
        """
        return self._rewrite(lambda rows: rows[: max(int(keep), 0)])

    def _rewrite(self, select) -> int:
        """Atomically rewrite ``metrics.jsonl`` with ``select(rows)`` (a torn last line is dropped, warned)."""
        if not self.active:
            return 0
        self._check_open()
        self._file.close()
        try:
            rows = _parse_lines(self.metrics_path) if self.metrics_path.exists() else []
            kept = select(rows)
            tmp = self.metrics_path.with_name(self.metrics_path.name + ".tmp")
            with open(tmp, "w", encoding="utf-8") as f:
                f.writelines(json.dumps(r) + "\n" for r in kept)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.metrics_path)
            self.num_rows = len(kept)
        finally:
            self._file = open(self.metrics_path, "a", encoding="utf-8")
        return len(rows) - len(kept)

    def flush(self) -> None:
        """Flush and fsync ``metrics.jsonl`` (call at checkpoints)."""
        if self.active and not self._finished:
            self._file.flush()
            os.fsync(self._file.fileno())

    def finish(self, exit_code: int = 0) -> Optional[str]:
        """Close ``metrics.jsonl`` and the W&B run (idempotent).

        Returns:
            For an offline W&B run, the ``wandb sync <dir>`` command that uploads it later (also printed).
        """
        if not self.active or self._finished:
            return None
        self.flush()
        self._file.close()
        self._finished = True
        return self._wb.finish(exit_code) if self._wb is not None else None

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.finish(exit_code=0 if exc_type is None else 1)

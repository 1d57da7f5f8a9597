"""Experiment tracking: ``run_dir/metrics.jsonl`` (the source of truth for analysis) plus an optional W&B run.

Rank 0 owns everything; a :class:`Tracker` built with ``rank != 0`` is a no-op that writes nothing.

``metrics.jsonl`` (:mod:`varnet_ds.tracking.metrics_file`) gets every row; W&B (:mod:`varnet_ds.tracking.wandb_run`)
gets the same rows under its own keys, plus images, tables, summaries and model artifacts.

W&B keys are ``{split}[/{acquisition}][/x{acceleration}]/{metric}``, e.g. ``train/loss``, ``val_brain/ssim``,
``val_brain/AXT2/x4/ssim``; images are ``{split}/images/{panel}``. Every W&B row also carries
``trainer/step`` and ``trainer/epoch``; ``define_metric`` plots ``train/*`` and ``event/*`` against
``trainer/step`` and ``val_knee/*``, ``val_brain/*`` against ``trainer/epoch``. The W&B ``step=`` argument is
deliberately not used: W&B drops rows whose step is below the last one it saw, which would lose every row
between the checkpoint and the crash of a resumed run. (W&B history of a resumed run may therefore hold
both copies of that window; ``metrics.jsonl`` is truncated to the checkpoint, see :meth:`Tracker.truncate_rows`.)

W&B mode (:func:`resolve_wandb_mode`): an explicit ``log.wandb.mode`` wins, then the environment variable
``WANDB_MODE`` (``WANDB_DISABLED=true`` means disabled), else ``online`` when wandb's own credential lookup
finds a key for its server (:func:`varnet_ds.tracking.wandb_run.wandb_credentials`) and ``offline`` otherwise. Falling
back from online to offline (no key, or a failing online ``wandb.init``) prints one line with the
``wandb sync <dir>`` command; a failing offline init means no W&B. After init, W&B exceptions are caught and
reported once, and ``metrics.jsonl`` keeps being written. Run name/group/job type/tags, best-value summaries
(``<key>_max`` / ``<key>_min``) and model artifacts: see :mod:`varnet_ds.tracking.wandb_run`.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence

import numpy as np
from omegaconf import DictConfig

from varnet_ds.files import atomic_path, strict_json
from varnet_ds.tracking.metrics_file import ROW_KEYS, MetricsFile, check_row, check_split, scalar
from varnet_ds.tracking.wandb_run import (
    EPOCH_KEY,
    STEP_KEY,
    WandbRun,
    check_artifact_name,
    image_key,
    requested_wandb_mode,
    resolve_wandb_mode,
    validate_group,
    wandb_key,
)


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
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


class Tracker:
    """Writes ``metrics.jsonl``, images, tables and the W&B run of one training run (rank 0 only).

    Args:
        cfg: the full resolved config (``varnet_ds.config.load_config``); uses ``run.name`` and ``log.wandb``.
        run_dir: run folder; holds ``metrics.jsonl``, ``images/``, ``{table}.csv`` and W&B's ``wandb/``.
        rank: global rank; every method is a no-op unless ``rank == 0``.
        resume_id: W&B run id from the checkpoint; continues that run (``resume="allow"``).
        wandb: False opens no W&B run whatever the config says (a finished run that logs nothing).
    """

    def __init__(self, cfg: DictConfig, run_dir: Path | str, rank: int, resume_id: Optional[str] = None,
                 wandb: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.rank = rank
        self.active = rank == 0
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.mode = "disabled"
        self._resume_id = resume_id
        self._wb: Optional[WandbRun] = None
        self._metrics: Optional[MetricsFile] = None
        self._finished = False
        requested = requested_wandb_mode(cfg.log.wandb.mode) if wandb else "disabled"
        if requested != "disabled":
            validate_group(cfg.log.wandb.group)  # ValueError naming a group W&B's run filters cannot express
        if not self.active:
            return
        self._metrics = MetricsFile(self.metrics_path)
        mode, fallback = resolve_wandb_mode(requested)
        if mode != "disabled":
            wb = WandbRun(cfg, self.run_dir, mode, resume_id, fallback)
            if wb.run is not None:
                self._wb, self.mode = wb, wb.mode

    def _check_open(self) -> None:
        if self._finished:
            raise RuntimeError(f"Tracker for {self.run_dir} is already finished")

    @property
    def num_rows(self) -> int:
        """Rows in ``metrics.jsonl`` (rank 0; 0 elsewhere): a checkpoint records it for an exact rollback."""
        return self._metrics.num_rows if self._metrics is not None else 0

    @property
    def wandb_id(self) -> Optional[str]:
        """Id of the W&B run (store it in the checkpoint); the resume id when W&B is off or failed."""
        return self._wb.run.id if self._wb is not None else self._resume_id

    def log(self, row: Mapping[str, Any]) -> None:
        """Append one row to ``metrics.jsonl`` and log it to W&B.

        Args:
            row: ``step``, ``epoch``, ``split`` and metric values; optional ``acquisition``/``acceleration``.
        """
        check_row(row)
        if not self.active:
            return
        self._check_open()
        record = self._metrics.append(row)
        if self._wb is None:
            return
        payload = {wandb_key(record["split"], k, record.get("acquisition"), record.get("acceleration")): v
                   for k, v in strict_json(record).items() if k not in ROW_KEYS and v is not None}
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
        check_split(split)
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
        data = [[scalar(v) for v in r] for r in rows]
        for i, r in enumerate(data):
            if len(r) != len(columns):
                raise ValueError(f"table {name!r} row {i} has {len(r)} values for {len(columns)} columns")
        if not self.active:
            return None
        self._check_open()
        path = self.run_dir / f"{name}.csv"
        with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(list(columns))
            writer.writerows(data)
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
        meta = strict_json(scalar(dict(metadata or {})))
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
        data = strict_json(scalar(dict(values)))
        if self.active and self._wb is not None:
            self._check_open()
            self._wb.log_summary(data)

    def truncate_rows(self, keep: int) -> int:
        """Roll ``metrics.jsonl`` back to the first ``keep`` rows (a checkpoint's count); returns rows dropped."""
        if not self.active:
            return 0
        self._check_open()
        return self._metrics.truncate_rows(keep)

    def set_aside_rows(self) -> Optional[Path]:
        """A fresh start in a folder whose earlier run died before its first checkpoint: move its rows aside."""
        if not self.active or self.num_rows == 0:
            return None
        self._check_open()
        return self._metrics.set_aside()

    def flush(self) -> None:
        """Flush and fsync ``metrics.jsonl`` (call at checkpoints)."""
        if self.active and not self._finished:
            self._metrics.flush()

    def finish(self, exit_code: int = 0) -> Optional[str]:
        """Close ``metrics.jsonl`` and the W&B run (idempotent).

        Returns:
            For an offline W&B run, the ``wandb sync <dir>`` command that uploads it later (also printed).
        """
        if not self.active or self._finished:
            return None
        self._metrics.close()
        self._finished = True
        return self._wb.finish(exit_code) if self._wb is not None else None

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.finish(exit_code=0 if exc_type is None else 1)

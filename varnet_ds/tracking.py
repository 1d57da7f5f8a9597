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
``WANDB_MODE`` (``WANDB_DISABLED=true`` means disabled), else ``online`` when credentials are configured and
``offline`` otherwise. A failing online ``wandb.init`` falls back to offline, a failing offline init to no W&B;
after init, W&B exceptions are caught and reported once, and ``metrics.jsonl`` keeps being written.
"""

from __future__ import annotations

import configparser
import csv
import json
import math
import netrc
import os
import re
import shlex
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence
from urllib.parse import urlsplit

import numpy as np
from omegaconf import DictConfig

from varnet_ds.config import to_dict

SPLITS = ("train", "val_knee", "val_brain", "event")
STEP_KEY = "trainer/step"
EPOCH_KEY = "trainer/epoch"
WANDB_MODES = ("online", "offline", "disabled")
_ROW_KEYS = ("step", "epoch", "split", "acquisition", "acceleration", "time")


def has_wandb_credentials() -> bool:
    """Whether a W&B API key is configured: env ``WANDB_API_KEY``/``WANDB_IDENTITY_TOKEN_FILE``, a netrc entry
    for the W&B host (``WANDB_BASE_URL``, default ``api.wandb.ai``), or ``api_key`` in the wandb settings file."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlsplit(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).netloc or "api.wandb.ai"
    netrc_path = Path(os.environ.get("NETRC", "~/.netrc")).expanduser()
    try:
        if netrc_path.is_file() and netrc.netrc(str(netrc_path)).authenticators(host):
            return True
    except (OSError, netrc.NetrcParseError):
        pass
    config_dir = Path(os.environ.get("WANDB_CONFIG_DIR", "~/.config/wandb")).expanduser()
    parser = configparser.ConfigParser()
    try:
        parser.read(config_dir / "settings")
        return bool(parser.get("default", "api_key", fallback=""))
    except (OSError, configparser.Error):
        return False


def resolve_wandb_mode(mode: Optional[str] = None) -> str:
    """The W&B mode to use: ``mode`` if given, else env ``WANDB_MODE``, else online iff credentials exist.

    Args:
        mode: ``online | offline | disabled`` or ``None`` (auto).

    Returns:
        One of ``online``, ``offline``, ``disabled`` (``dryrun`` in the environment means offline).
    """
    if mode is not None:
        if mode not in WANDB_MODES:
            raise ValueError(f"log.wandb.mode = {mode!r}: must be one of {list(WANDB_MODES)} or null")
        return mode
    env = os.environ.get("WANDB_MODE", "").strip().lower()
    if env:
        env = {"dryrun": "offline", "run": "online"}.get(env, env)
        if env not in WANDB_MODES:
            raise ValueError(f"environment WANDB_MODE = {env!r}: must be one of {list(WANDB_MODES)}")
        return env
    if os.environ.get("WANDB_DISABLED", "").strip().lower() in ("1", "true", "yes"):
        return "disabled"
    return "online" if has_wandb_credentials() else "offline"


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


def json_safe(value: Any) -> Any:
    """Strict-JSON view of ``value``: NaN/inf -> None, mappings and sequences converted recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


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
        self._run: Any = None
        self._wandb: Any = None
        self._file: Any = None
        self._errors = 0
        self._finished = False
        self.num_rows = 0  # rows in metrics.jsonl (rank 0)
        if not self.active:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.num_rows = len(_parse_lines(self.metrics_path)) if self.metrics_path.exists() else 0
        self._file = open(self.metrics_path, "a", encoding="utf-8")
        mode = resolve_wandb_mode(cfg.log.wandb.mode)
        if mode == "online" and not has_wandb_credentials():
            warnings.warn("W&B mode online but no API key is configured: logging offline", stacklevel=2)
            mode = "offline"
        if mode != "disabled":
            self._init_wandb(cfg, mode)

    def _init_wandb(self, cfg: DictConfig, mode: str) -> None:
        try:
            import wandb

            settings = wandb.Settings(silent=True, console="off")  # no W&B chatter, no stdout capture
        except Exception as err:  # broken or missing install must not stop training
            warnings.warn(f"cannot set up wandb ({err}); logging to metrics.jsonl only", stacklevel=3)
            return
        os.environ.setdefault("WANDB_SILENT", "true")
        version = tuple(int(x) for x in re.findall(r"\d+", wandb.__version__)[:3])
        wb = cfg.log.wandb
        kwargs = dict(
            project=wb.project, entity=wb.entity, group=wb.group, job_type=wb.job_type,
            tags=list(wb.tags) or None, name=cfg.run.name, config=to_dict(cfg), dir=str(self.run_dir),
            id=self._resume_id, resume="allow" if self._resume_id else None,
            reinit="create_new" if version >= (0, 19, 10) else True,
            settings=settings,
        )
        for try_mode in (mode, "offline") if mode == "online" else (mode,):
            try:
                self._run = wandb.init(mode=try_mode, **kwargs)
                self.mode, self._wandb = try_mode, wandb
                break
            except Exception as err:
                warnings.warn(f"wandb.init(mode={try_mode!r}) failed: {err}", stacklevel=3)
        if self._run is None:
            warnings.warn("W&B unavailable; logging to metrics.jsonl only", stacklevel=3)
            return
        self._wandb_call(self._run.define_metric, STEP_KEY)
        self._wandb_call(self._run.define_metric, EPOCH_KEY)
        for split in SPLITS:
            axis = EPOCH_KEY if split.startswith("val_") else STEP_KEY
            self._wandb_call(self._run.define_metric, f"{split}/*", step_metric=axis)

    def _wandb_call(self, fn: Any, *args: Any, **kwargs: Any) -> None:
        try:
            fn(*args, **kwargs)
        except Exception as err:  # W&B must never kill training after init
            self._errors += 1
            if self._errors == 1:
                warnings.warn(f"W&B call {getattr(fn, '__name__', fn)} failed ({err}); further W&B errors are "
                              "counted silently, metrics.jsonl is unaffected", RuntimeWarning, stacklevel=3)

    def _check_open(self) -> None:
        if self._finished:
            raise RuntimeError(f"Tracker for {self.run_dir} is already finished")

    @property
    def wandb_id(self) -> Optional[str]:
        """Id of the W&B run (store it in the checkpoint); the resume id when W&B is off or failed."""
        return self._run.id if self._run is not None else self._resume_id

    @property
    def wandb_dir(self) -> Optional[Path]:
        """The W&B run's local folder (``run_dir/wandb/{offline,run}-<time>-<id>``), if a run exists."""
        return Path(self._run.dir).parent if self._run is not None else None

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
        self._file.write(json.dumps(json_safe(record)) + "\n")
        self._file.flush()
        self.num_rows += 1
        if self._run is None:
            return
        prefix = [record["split"]]
        if record.get("acquisition") is not None:
            prefix.append(str(record["acquisition"]))
        if record.get("acceleration") is not None:
            prefix.append(f"x{record['acceleration']}")
        payload = {f"{'/'.join(prefix)}/{k}": v for k, v in record.items() if k not in _ROW_KEYS and v is not None}
        payload.update({STEP_KEY: record["step"], EPOCH_KEY: record["epoch"]})
        self._wandb_call(self._run.log, payload)

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
        if self._run is not None:
            def log_wandb() -> None:
                payload: Dict[str, Any] = {
                    f"{split}/images/{name}": self._wandb.Image(
                        (img * 255.0).round().astype(np.uint8), caption=f"{name} epoch {epoch} step {step}")
                    for name, img in scaled.items()
                }
                payload.update({STEP_KEY: int(step), EPOCH_KEY: int(epoch)})
                self._run.log(payload)

            self._wandb_call(log_wandb)
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
        if self._run is not None:
            self._wandb_call(lambda: self._run.log({name: self._wandb.Table(columns=list(columns), data=data)}))
        return path

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
        if self._run is None:
            return None
        sync_dir = self.wandb_dir
        self._wandb_call(self._run.finish, exit_code=exit_code)
        if self._errors > 1:
            warnings.warn(f"{self._errors} W&B calls failed during this run", RuntimeWarning, stacklevel=2)
        if self.mode != "offline":
            return None
        command = f"wandb sync {shlex.quote(str(sync_dir))}"
        print(f"W&B run saved offline; upload it with:\n  {command}", flush=True)
        return command

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.finish(exit_code=0 if exc_type is None else 1)

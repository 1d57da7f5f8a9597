"""The W&B side of :class:`varnet_ds.tracking.tracker.Tracker`: login check, mode, run identity, keys, artifacts.

Login is decided by wandb itself: :func:`wandb_credentials` asks wandb's own credential lookup
(``wandb.sdk.lib.wbauth.authenticate_session`` without prompting: ``WANDB_API_KEY`` /
``WANDB_IDENTITY_TOKEN_FILE``, the netrc entry ``wandb login`` wrote, the settings file) for the server wandb
would use (``WANDB_BASE_URL``, the wandb settings file, else wandb's default host).

Run identity (:func:`run_identity`): name ``run.name`` (the study runner sets ``<arm>-s<seed>``), group
``log.wandb.group`` (the study name; checked by :func:`validate_group`), the arm ``run.arm`` (set by the study
runner), else ``log.wandb.job_type`` (a plain run: the YAML's own choice) as job type and tag, and tags
``log.wandb.tags`` + ``seed-<seed>`` + ``<arm>``. ``log.wandb.tags`` holds what every run of a config shares
(project, dataset); the arm and seed tags are derived from the run, never copied from a YAML, so a study run
built on ``baseline.yaml`` with the arm ``mraugment`` is not tagged ``baseline``.

Summaries: every key keeps W&B's default summary (the last value) under its own name; the tracker adds the best
value under ``<key>_max`` for SSIM/PSNR and ``<key>_min`` for NMSE/loss (:func:`extreme_key`). W&B's
``define_metric(summary="max,last")`` would instead turn ``summary[key]`` into a ``{"max", "last"}`` dict.
"""

from __future__ import annotations

import os
import re
import shlex
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from omegaconf import DictConfig, OmegaConf

from varnet_ds.config import WANDB_MODES, to_dict
from varnet_ds.tracking.metrics_file import SPLITS

STEP_KEY = "trainer/step"
EPOCH_KEY = "trainer/epoch"
MAX_METRICS = ("ssim", "psnr")  # higher is better: summary <key>_max
MIN_METRICS = ("nmse", "loss")  # lower is better: summary <key>_min
IMAGE_PANELS = ("zero_filled", "reconstruction", "target", "error")  # varnet_ds.eval.validate panels
# Safe in W&B run filters ('...' quoted values of wandb_workspaces' expression parser) and in URLs.
_GROUP_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+=:@-]{0,127}")
_ARTIFACT_RE = re.compile(r"[A-Za-z0-9_.-]{1,128}")


def validate_group(group: Optional[str]) -> Optional[str]:
    """``group`` unchanged when it is a usable W&B group name (or ``None``).

    Raises:
        ValueError: quotes, spaces, backslashes or other characters that break W&B's run-filter parser, or
            more than 128 characters; the message names the value.
    """
    if group is None:
        return None
    if not isinstance(group, str) or not _GROUP_RE.fullmatch(group):
        raise ValueError(f"W&B group name {group!r}: use letters, digits and _ . + = : @ - only (at most 128, "
                         "starting with a letter or digit)")
    return group


def wandb_key(split: str, metric: str, acquisition: Optional[str] = None, acceleration: Optional[int] = None) -> str:
    """The W&B key of one metric, ``{split}[/{acquisition}][/x{acceleration}]/{metric}``."""
    parts = [split] + ([str(acquisition)] if acquisition is not None else [])
    parts += [f"x{acceleration}"] if acceleration is not None else []
    return "/".join(parts + [metric])


def image_key(split: str, panel: str) -> str:
    """The W&B key of an image panel, e.g. ``val_brain/images/reconstruction``."""
    return f"{split}/images/{panel}"


def extreme_key(key: str) -> Optional[Tuple[str, Callable[[float, float], float]]]:
    """``(summary key, max|min)`` for keys whose best value is kept (``val_knee/ssim`` -> ``val_knee/ssim_max``)."""
    metric = key.rsplit("/", 1)[-1]
    if key.split("/", 1)[0] not in SPLITS or "/images/" in key:
        return None
    if metric in MAX_METRICS:
        return f"{key}_max", max
    if metric in MIN_METRICS:
        return f"{key}_min", min
    return None


def wandb_base_url() -> str:
    """The server wandb would use: ``WANDB_BASE_URL``, else the wandb settings file, else wandb's default."""
    import wandb

    settings = wandb.Settings(silent=True)
    settings.update_from_system_settings()
    settings.update_from_env_vars(dict(os.environ))
    return str(settings.base_url)


def wandb_credentials() -> Tuple[bool, str]:
    """Whether wandb finds credentials for its server, asked without prompting or network.

    Returns:
        ``(found, detail)``: detail is the server URL, plus the reason when the lookup itself failed.
    """
    try:
        host = wandb_base_url()
    except Exception as err:  # invalid WANDB_BASE_URL, broken install
        return False, f"W&B server unknown ({err})"
    try:
        from wandb.sdk.lib import wbauth

        auth = wbauth.authenticate_session(host=host, source="varnet_ds", prompt=False, update_session=False)
    except Exception as err:  # malformed key, unreadable netrc
        return False, f"{host} ({err})"
    return auth is not None and auth.host.is_same_url(wbauth.HostUrl(host)), host


def requested_wandb_mode(mode: Optional[str] = None) -> Optional[str]:
    """The mode asked for explicitly (config, then ``WANDB_MODE`` / ``WANDB_DISABLED``); ``None`` = automatic."""
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
    return None


def resolve_wandb_mode(mode: Optional[str] = None) -> Tuple[str, Optional[str]]:
    """The W&B mode to start in: ``mode`` if given, else the environment (:func:`requested_wandb_mode`), else
    ``online``; ``online`` falls back to ``offline`` when wandb finds no credentials for its server.

    Args:
        mode: ``online | offline | disabled`` or ``None`` (auto).

    Returns:
        ``(mode, fallback)``: one of ``online``, ``offline``, ``disabled`` (``dryrun`` in the environment means
        offline), and why online fell back to offline (``None`` when it did not).
    """
    mode = requested_wandb_mode(mode) or "online"
    if mode == "online":
        found, host = wandb_credentials()
        if not found:
            return "offline", f"no API key for {host} (run `wandb login` or set WANDB_API_KEY)"
    return mode, None


def run_identity(cfg: DictConfig) -> Dict[str, Any]:
    """``name``, ``group``, ``job_type`` and ``tags`` of the W&B run of ``cfg`` (see the module docstring).

    ``load_config`` refuses ``seed-<n>`` and empty entries in ``log.wandb.tags``: the seed tag is derived here.
    """
    wb = cfg.log.wandb
    arm = OmegaConf.select(cfg, "run.arm", default=None) or wb.job_type
    tags: List[str] = list(wb.tags) + [f"seed-{OmegaConf.select(cfg, 'run.seed')}"] + ([str(arm)] if arm else [])
    return dict(name=cfg.run.name, group=validate_group(wb.group), job_type=arm, tags=list(dict.fromkeys(tags)))


class WandbRun:
    """One W&B run (rank 0): init with offline fallback, guarded calls, best-value summaries, artifacts.

    Args:
        cfg: the full config; run_dir: the run folder (W&B writes ``run_dir/wandb``).
        mode: ``online`` or ``offline``; resume_id: W&B id to continue.
        fallback: why ``offline`` replaced the requested online mode (printed as one line), or ``None``.
    """

    def __init__(self, cfg: DictConfig, run_dir: Path, mode: str, resume_id: Optional[str],
                 fallback: Optional[str] = None) -> None:
        self.run: Any = None
        self.wandb: Any = None
        self.mode = "disabled"
        self.errors = 0
        self._best: Dict[str, float] = {}
        try:
            import wandb

            settings = wandb.Settings(silent=True, console="off")  # no W&B chatter, no stdout capture
        except Exception as err:  # broken or missing install must not stop training
            warnings.warn(f"cannot set up wandb ({err}); logging to metrics.jsonl only", stacklevel=3)
            return
        os.environ.setdefault("WANDB_SILENT", "true")
        version = tuple(int(x) for x in re.findall(r"\d+", wandb.__version__)[:3])
        kwargs = dict(project=cfg.log.wandb.project, entity=cfg.log.wandb.entity, config=to_dict(cfg),
                      dir=str(run_dir), id=resume_id, resume="allow" if resume_id else None,
                      reinit="create_new" if version >= (0, 19, 10) else True, settings=settings,
                      **run_identity(cfg))
        for try_mode in (mode, "offline") if mode == "online" else (mode,):
            try:
                self.run = wandb.init(mode=try_mode, **kwargs)
                self.mode, self.wandb = try_mode, wandb
                break
            except Exception as err:
                warnings.warn(f"wandb.init(mode={try_mode!r}) failed: {err}", stacklevel=3)
                fallback = fallback or f"wandb.init online failed ({str(err).splitlines()[0] if str(err) else err!r})"
        if self.run is None:
            warnings.warn("W&B unavailable; logging to metrics.jsonl only", stacklevel=3)
            return
        if self.mode == "offline" and fallback:
            print(f"W&B: {fallback}; logging offline, upload later with: {self.sync_command}", flush=True)
        self.call(self.run.define_metric, STEP_KEY)
        self.call(self.run.define_metric, EPOCH_KEY)
        for split in SPLITS:
            axis = EPOCH_KEY if split.startswith("val_") else STEP_KEY
            self.call(self.run.define_metric, f"{split}/*", step_metric=axis)

    @property
    def dir(self) -> Optional[Path]:
        """The run's local folder (``run_dir/wandb/{offline-,}run-<time>-<id>``)."""
        return Path(self.run.dir).parent if self.run is not None else None

    @property
    def sync_command(self) -> str:
        """``wandb sync <dir>``: uploads this (offline) run."""
        return f"wandb sync {shlex.quote(str(self.dir))}"

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)``; an exception is counted and warned once (W&B must never kill training)."""
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            self.errors += 1
            if self.errors == 1:
                warnings.warn(f"W&B call {getattr(fn, '__name__', fn)} failed ({err}); further W&B errors are "
                              "counted silently, metrics.jsonl is unaffected", RuntimeWarning, stacklevel=4)
            return None

    def log(self, payload: Mapping[str, Any]) -> None:
        """Log one row; SSIM/PSNR/NMSE/loss keys also update their ``_max`` / ``_min`` summary."""
        self.call(self.run.log, dict(payload))
        best = {}
        for key, value in payload.items():
            extreme = extreme_key(key)
            if extreme is None or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            name, pick = extreme
            if name not in self._best:
                previous = self.call(lambda n=name: self.run.summary.get(n))  # a resumed online run keeps its best
                if isinstance(previous, (int, float)):
                    self._best[name] = float(previous)
            self._best[name] = pick(self._best.get(name, value), value)
            best[name] = self._best[name]
        if best:
            self.call(self.run.summary.update, best)

    def log_summary(self, values: Mapping[str, Any]) -> None:
        """Set run summary values (not history), e.g. ``{"selected/val_brain/ssim": 0.91}``."""
        self.call(self.run.summary.update, dict(values))

    def log_model(self, path: Path, name: str, aliases: Sequence[str], metadata: Mapping[str, Any]) -> None:
        """Log ``path`` as a W&B Artifact of type ``model`` (offline: staged for ``wandb sync``)."""

        def log() -> None:
            artifact = self.wandb.Artifact(name, type="model", metadata=dict(metadata))
            artifact.add_file(str(path))
            self.run.log_artifact(artifact, aliases=list(aliases))

        self.call(log)

    def finish(self, exit_code: int) -> Optional[str]:
        """Finish the run. Returns (and prints) ``wandb sync <dir>`` for an offline run."""
        command = self.sync_command
        self.call(self.run.finish, exit_code=exit_code)
        if self.errors > 1:
            warnings.warn(f"{self.errors} W&B calls failed during this run", RuntimeWarning, stacklevel=3)
        if self.mode != "offline":
            return None
        print(f"W&B run saved offline; upload it with: {command}", flush=True)
        return command


def check_artifact_name(name: str) -> str:
    """``name`` unchanged when it is a valid W&B artifact name, else ValueError naming it."""
    if not isinstance(name, str) or not _ARTIFACT_RE.fullmatch(name):
        raise ValueError(f"artifact name {name!r}: use 1-128 letters, digits, '_', '.', '-'")
    return name

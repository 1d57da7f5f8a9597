"""Typed configuration schema (one dataclass per concern), merged with YAML and CLI dotlists by OmegaConf.

Usage:
    cfg = load_config("varnet_ds/conf/demo.yaml", ["train.epochs=3", "run.name=x"])
    save_config(cfg, run_dir / "config.yaml")

Unknown keys and wrong types raise :class:`ConfigError` naming the offending key before any work starts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from varnet_ds.files import atomic_write_text

CONF_DIR = Path(__file__).parent / "conf"
# The DeepSpeed JSONs the package ships (a bare name like ``zero2`` means DS_CONF_DIR/zero2.json). The checkout's
# ds_configs/*.json are the same files, byte for byte (tests/test_wheel.py): the ones the docs' commands name.
DS_CONF_DIR = CONF_DIR / "ds"
DEFAULT_DS_CONFIG = "zero2"


class ConfigError(ValueError):
    """A configuration problem; the message names the key and the value."""


# The one definition of every choice: the schema checks these, the modules and CLIs import them from here.
CHECKPOINTING = ("none", "cascades", "all", "selective", "selective_all")  # model.checkpointing (model/varnet.py)
PRECISIONS = ("fp32", "bf16")  # train.precision: bf16 autocast U-Nets, FFTs in fp32
MASK_TYPES = ("random", "equispaced", "equispaced_fraction", "magic", "magic_fraction")  # fastMRI mask functions
AUG_SCHEDULES = ("constant", "ramp", "exp")  # aug.schedule (data/augment.py AugmentSchedule)
AUG_DEVICES = ("cpu", "cuda")  # aug.device: in the loader workers | batched on the GPU in the train step
WANDB_MODES = ("online", "offline", "disabled")  # log.wandb.mode (null: automatic)
SIZE_KEYS = ("num_cascades", "chans", "pools", "sens_chans", "sens_pools")  # VarNet sizes (ModelConfig fields)


@dataclass
class RunConfig:
    name: str = "baseline"
    out_dir: str = "runs/${run.name}"
    seed: int = 42  # initial weights, data order, training masks, augmentation draws (eval masks: per file)
    arm: Optional[str] = None  # study arm (set by python -m varnet_ds.study); W&B job_type and tag
    resume: str = "auto"  # auto: a rerun must match the saved config.yaml; force: accept changed keys


@dataclass
class DataConfig:
    train_path: Optional[str] = None  # knee multicoil train folder
    val_path: Optional[str] = None  # knee multicoil val folder
    transfer_path: Optional[str] = None  # brain multicoil folder (never trained on)
    challenge: str = "multicoil"
    mask_type: str = "random"  # fastMRI knee practice
    center_fractions: List[float] = field(default_factory=lambda: [0.08, 0.04])
    accelerations: List[int] = field(default_factory=lambda: [4, 8])
    batch_size: int = 1  # per GPU; VarNet slices differ in size, so 1 is the fastMRI default
    num_workers: int = 4
    sample_rate: Optional[float] = None  # fraction of training slices
    volume_sample_rate: Optional[float] = None  # fraction of training volumes
    max_val_volumes: Optional[int] = None  # cap on val/transfer volumes (demo / quick checks)
    use_dataset_cache: bool = False
    check_on_start: bool = True  # validate every file before training (varnet_ds.data.check)
    skip_bad_files: bool = False  # skip bad files instead of failing fast


@dataclass
class ModelConfig:
    num_cascades: int = 12
    chans: int = 18
    pools: int = 4
    sens_chans: int = 8
    sens_pools: int = 4
    checkpointing: str = "cascades"  # none | cascades | all | selective | selective_all (see varnet_ds.model.varnet)
    sens_chunk: int = 0  # coils per sensitivity U-Net call (0 = all); under all/selective_all one checkpoint each
    compile: bool = False  # torch.compile the U-Nets (one shared graph, varnet_ds.model.compiled); GPU speed lever


FASTMRI_SIZES = {k: getattr(ModelConfig(), k) for k in SIZE_KEYS}  # 12, 18, 4, 8, 4 as fastMRI's VarNet


@dataclass
class AugWeights:
    # Field order = MRAugment's draw order (varnet_ds.data.augment draws one uniform per field in this order):
    # reordering the fields changes which draw fires which transform.
    fliph: float = 0.5
    flipv: float = 0.5
    rot90: float = 0.5
    translation: float = 1.0
    rotation: float = 0.5
    shearing: float = 1.0
    scaling: float = 1.0


AUG_WEIGHT_NAMES = tuple(f.name for f in fields(AugWeights))  # in draw order


@dataclass
class AugConfig:
    enabled: bool = False
    schedule: str = "exp"  # constant | ramp | exp
    p_max: float = 0.55
    delay: int = 0  # epochs with p = 0
    exp_decay: float = 5.0
    weights: AugWeights = field(default_factory=AugWeights)
    max_translation_x: float = 0.125
    max_translation_y: float = 0.08
    max_rotation: float = 180.0
    max_shearing_x: float = 15.0
    max_shearing_y: float = 15.0
    max_scaling: float = 0.25
    anisotropic_scaling: bool = False  # independent x/y scale factors (MRAugment's code: isotropic)
    upsample: bool = False
    upsample_factor: int = 2
    device: str = "cpu"  # cpu (in loader workers) | cuda (batched on the GPU in the train step)


@dataclass
class TrainConfig:
    epochs: int = 50
    max_steps: Optional[int] = None  # optional cap on optimizer steps
    lr: float = 3e-4
    lr_step_size: int = 40
    lr_gamma: float = 0.1
    weight_decay: float = 0.0
    grad_accum: int = 1
    precision: str = "fp32"  # fp32 | bf16 (autocast, FFTs in fp32)
    checkpoint_every_steps: int = 1000
    keep_checkpoints: int = 3
    max_bad_steps: int = 5  # non-finite losses in a row before stopping
    memory_budget_gib: Optional[float] = None
    deterministic: bool = False  # deterministic cuDNN/cuBLAS kernels (bit-exact resume on GPU; slower)
    init_weights: Optional[str] = None  # start from weights only (model_fp32.pt or a state_dict file)
    resume: bool = True  # continue from run.out_dir/checkpoints/latest when present
    elastic: bool = True  # resume on another rank count via a DeepSpeed universal checkpoint (false: refuse)


@dataclass
class EvalConfig:
    every_epochs: int = 1
    every_steps: Optional[int] = None
    knee_mask_type: str = "random"
    brain_mask_type: str = "equispaced"
    center_fractions: List[float] = field(default_factory=lambda: [0.08, 0.04])
    accelerations: List[int] = field(default_factory=lambda: [4, 8])
    image_panels: bool = True


@dataclass
class WandbConfig:
    mode: Optional[str] = None  # online | offline | disabled; None = online if an API key is set, else offline
    project: str = "varnet_ds"
    entity: Optional[str] = None
    group: Optional[str] = "knee2brain"
    job_type: Optional[str] = None
    tags: List[str] = field(default_factory=list)


@dataclass
class LogConfig:
    every_steps: int = 50
    progress: bool = True
    wandb: WandbConfig = field(default_factory=WandbConfig)


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    aug: AugConfig = field(default_factory=AugConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    log: LogConfig = field(default_factory=LogConfig)


_CHOICES = {
    "model.checkpointing": CHECKPOINTING,
    "train.precision": PRECISIONS,
    "aug.schedule": AUG_SCHEDULES,
    "aug.device": AUG_DEVICES,
    "data.challenge": ("multicoil",),
    "data.mask_type": MASK_TYPES,
    "eval.knee_mask_type": MASK_TYPES,
    "eval.brain_mask_type": MASK_TYPES,
    "log.wandb.mode": (None, *WANDB_MODES),
    "run.resume": ("auto", "force"),
}
# Keys a rerun of an existing run folder may change without run.resume=force: they do not change what is trained.
RESUMABLE_KEYS = ("log.", "run.resume", "train.resume", "train.elastic", "data.num_workers", "data.check_on_start",
                  "data.use_dataset_cache")
EXTENDABLE_KEYS = ("train.epochs", "train.max_steps")  # may grow (null max_steps = no cap)
PLANNED_KEYS = ("model.checkpointing", "train.precision", "model.sens_chunk")  # set by train.memory_budget_gib


def _validate(cfg: DictConfig) -> None:
    for key, choices in _CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if value not in choices:
            raise ConfigError(f"config key '{key}' = {value!r}: must be one of {list(choices)}")
    for key in ("data.center_fractions", "data.accelerations", "eval.center_fractions", "eval.accelerations"):
        if len(OmegaConf.select(cfg, key)) == 0:
            raise ConfigError(f"config key '{key}' is empty")
    for a, b in (("data.center_fractions", "data.accelerations"), ("eval.center_fractions", "eval.accelerations")):
        if len(OmegaConf.select(cfg, a)) != len(OmegaConf.select(cfg, b)):
            raise ConfigError(f"config keys '{a}' and '{b}' must have the same length")
    positive = ("train.epochs", "train.lr", "data.batch_size", "train.grad_accum", "log.every_steps",
                "train.checkpoint_every_steps", "train.keep_checkpoints", "model.num_cascades")
    for key in positive:
        value = OmegaConf.select(cfg, key)
        if value is None or value <= 0:
            raise ConfigError(f"config key '{key}' = {value!r}: must be > 0")
    if cfg.train.max_steps is not None and cfg.train.max_steps <= 0:
        raise ConfigError(f"config key 'train.max_steps' = {cfg.train.max_steps}: must be > 0 or null")
    if not 0.0 <= cfg.aug.p_max <= 1.0:
        raise ConfigError(f"config key 'aug.p_max' = {cfg.aug.p_max}: must be in [0, 1]")
    if cfg.model.sens_chunk < 0:
        raise ConfigError(f"config key 'model.sens_chunk' = {cfg.model.sens_chunk}: must be >= 0 (0 = all coils)")
    if cfg.data.num_workers < 0:
        raise ConfigError(f"config key 'data.num_workers' = {cfg.data.num_workers}: must be >= 0")
    for tag in cfg.log.wandb.tags:  # the seed and arm tags are derived per run (tracking.wandb_run.run_identity)
        if not str(tag).strip() or re.fullmatch(r"seed--?[0-9]+", str(tag)):
            raise ConfigError(f"config key 'log.wandb.tags' holds {tag!r}: give non-empty tags shared by every run; "
                              "seed-<run.seed> and the arm (run.arm, else log.wandb.job_type) are added per run")


def ds_config_path(value: Union[str, Path]) -> Path:
    """The DeepSpeed JSON ``--ds_config VALUE`` names: a file, or a packaged name (``zero2`` = ``conf/ds/zero2.json``).

    Args:
        value: a path to a JSON file, or the stem of one of :data:`DS_CONF_DIR`'s files.

    Returns:
        the path (a missing file is returned as given: :func:`varnet_ds.distributed.load_ds_config` names it).
    """
    path = Path(value)
    packaged = DS_CONF_DIR / f"{value}.json"
    if not path.exists() and path.name == str(value) and packaged.is_file():
        return packaged
    return path


def ds_config_names() -> List[str]:
    """The stems of the packaged DeepSpeed JSONs (``zero0``, ``zero1``, ``zero2``, ``zero2_offload``)."""
    return sorted(p.stem for p in DS_CONF_DIR.glob("*.json"))


def load_config(
    path: Optional[Union[str, Path]] = None, overrides: Sequence[str] = (), resolve: bool = True
) -> DictConfig:
    """Merge the schema defaults, an optional YAML file and CLI dotlist overrides.

    Args:
        path: YAML file; a bare name like ``demo`` means ``varnet_ds/conf/demo.yaml``.
        overrides: dotlist entries such as ``train.epochs=3``.
        resolve: resolve interpolations (``${run.name}``) before returning.

    Returns:
        A structured, read-only-typed ``DictConfig`` whose keys are checked against :class:`Config`.

    Raises:
        ConfigError: unknown key, wrong type or invalid value; the message names the key.
    """
    schema = OmegaConf.structured(Config)
    try:
        cfg = schema
        if path is not None:
            p = Path(path)
            if not p.exists() and (CONF_DIR / f"{path}.yaml").exists():
                p = CONF_DIR / f"{path}.yaml"
            if not p.exists():
                raise ConfigError(f"config file not found: {path}")
            cfg = OmegaConf.merge(cfg, OmegaConf.load(p))
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
        if resolve:
            OmegaConf.resolve(cfg)
    except ConfigError:
        raise
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "?"
        msg = str(getattr(err, "msg", err)).splitlines()[0]
        raise ConfigError(f"config key '{key}': {msg}") from None
    _validate(cfg)
    return cfg


def save_config(cfg: DictConfig, path: Union[str, Path]) -> None:
    """Write the resolved config as YAML (atomically: :func:`varnet_ds.files.atomic_write_text`)."""
    atomic_write_text(path, OmegaConf.to_yaml(cfg, resolve=True))


def _flatten(node: Any, prefix: str = "") -> Dict[str, Any]:
    if isinstance(node, dict):
        out: Dict[str, Any] = {}
        for key, value in node.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: node}


def config_changes(saved: dict, new: dict) -> Dict[str, Tuple[Any, Any]]:
    """Keys whose value differs between a run folder's saved config and a rerun's, that a resume may not change.

    Allowed without ``run.resume=force``: :data:`RESUMABLE_KEYS`, growing ``train.epochs`` / ``train.max_steps``,
    and the memory plan's keys when both configs ask the planner (``train.memory_budget_gib``).

    Args:
        saved: the resolved config of ``RUN/config.yaml`` as nested dicts.
        new: the rerun's resolved config as nested dicts.

    Returns:
        ``{dotted key: (saved value, new value)}`` of the refused changes (empty: the rerun may go on).
    """
    a, b = _flatten(saved), _flatten(new)
    planned = a.get("train.memory_budget_gib") is not None and a.get("train.memory_budget_gib") == b.get(
        "train.memory_budget_gib")
    changes = {}
    for key in sorted(set(a) | set(b)):
        old, value = a.get(key, "<absent>"), b.get(key, "<absent>")
        if old == value or key.startswith(RESUMABLE_KEYS) or (planned and key in PLANNED_KEYS):
            continue
        if key in EXTENDABLE_KEYS and isinstance(old, (int, type(None))) and (
                value is None or (old is not None and isinstance(value, int) and value >= old)):
            continue
        changes[key] = (old, value)
    return changes


def check_rerun_config(cfg: DictConfig, saved_path: Union[str, Path]) -> Dict[str, Tuple[Any, Any]]:
    """Compare a run's config with the ``config.yaml`` its folder already holds (a rerun or resume).

    Returns:
        The changed keys that ``run.resume=force`` accepted (``{}`` for a new folder or an unchanged config).

    Raises:
        ConfigError: the saved file is unreadable, or keys differ (named, old -> new) without ``run.resume=force``.
    """
    saved_path = Path(saved_path)
    if not saved_path.is_file():
        return {}
    try:
        saved = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.load(saved_path))
    except (OmegaConfBaseException, yaml.YAMLError) as err:
        raise ConfigError(f"{saved_path}: cannot read the saved config ({str(err).splitlines()[0]})") from None
    changes = config_changes(to_dict(saved), to_dict(cfg))
    if changes and cfg.run.resume != "force":
        listed = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changes.items())
        raise ConfigError(
            f"run folder {saved_path.parent} holds a run with another config ({saved_path}); differing keys: "
            f"{listed}. Use another run.out_dir, or run.resume=force to continue this folder with the new values")
    return changes


def to_dict(cfg: DictConfig) -> dict:
    """The resolved config as a plain dict (for W&B and JSON)."""
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]

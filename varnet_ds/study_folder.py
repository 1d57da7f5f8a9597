"""The study folder format, defined once: ``study.yaml``, the run folder of (arm, seed), the keys a study owns.

A study folder (written by ``python -m varnet_ds.study``, read by ``varnet_ds.analysis``)::

    RUNS/<study>/study.yaml          study, config, ds_config, seeds, arms {ARM: [overrides]}, reference,
                                     overrides (common to every run), device (free text)
    RUNS/<study>/<arm>-s<seed>/      one run folder per arm x seed (format: varnet_ds.run_folder)

Both sides use this module: the runner (``varnet_ds.studies.runner``) checks and writes ``study.yaml``, the analysis
(``varnet_ds.analysis.study.load``) reads it with the same checks. What a *finished* run is, its name
``<arm>-s<seed>`` and its files are :mod:`varnet_ds.run_folder`'s. Standard library, PyYAML and
``varnet_ds.files`` only: importing it loads no torch.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import yaml

from varnet_ds.files import atomic_write_text
from varnet_ds.run_folder import run_name

STUDY_FILE = "study.yaml"
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # study and arm names: they name folders and the W&B group
# Set by the runner for every run (from the study, arm and seed); an arm or ``--set`` may not override them.
OWNED_KEYS = ("run.seed", "run.name", "run.arm", "run.out_dir", "log.wandb.group", "log.wandb.job_type")
# May differ between the runs of one study besides each arm's override keys: the owned keys, how a run was
# (re)started, and everything under these prefixes (logging never changes what is trained).
RUN_KEYS = OWNED_KEYS + ("run.resume",)
RUN_PREFIXES = ("log",)
# How the checks name the fields: the runner's command-line flags, or the keys of study.yaml.
CLI_NAMES = {"study": "--name", "seeds": "--seeds", "arms": "--arm", "overrides": "--set", "reference": "--reference"}
FILE_NAMES = {key: f"'{key}'" for key in CLI_NAMES}


class StudyFolderError(ValueError):
    """A malformed study (bad name, arms, seeds or overrides) or an unreadable ``study.yaml``; the message names it."""


@dataclass
class StudySpec:
    """What ``study.yaml`` records.

    Attributes:
        study: the study's name: its folder ``RUNS/<study>/`` and the W&B group.
        config: base YAML config of every run (``None``: the schema's defaults).
        ds_config: DeepSpeed JSON of every run.
        seeds: ``run.seed`` values; arm *a* with seed *s* is paired with the reference arm's seed *s*.
        arms: arm name -> its config overrides (``key=value``), in the order given.
        reference: the arm the others are compared with.
        overrides: overrides common to every run.
        device: the machine the runs were laid out on (free text; empty when unknown).
    """

    study: str
    config: Optional[str]
    ds_config: str
    seeds: List[int]
    arms: Dict[str, List[str]]
    reference: str
    overrides: List[str] = field(default_factory=list)
    device: str = ""


def override_key(override: str) -> str:
    """Config key of a dotlist override (``"+aug.p=0.5"`` -> ``"aug.p"``)."""
    return override.split("=", 1)[0].strip().lstrip("+~")


def may_differ(key: str, arm_keys: Sequence[str] = ()) -> bool:
    """Whether config key ``key`` may differ between runs of a study whose arms override ``arm_keys``."""
    return key in RUN_KEYS or any(key == p or key.startswith(p + ".") for p in (*RUN_PREFIXES, *arm_keys))


def run_dir(study_dir: Path | str, arm: str, seed: int) -> Path:
    """The run folder of ``arm`` and ``seed``: ``<study_dir>/<arm>-s<seed>``."""
    return Path(study_dir) / run_name(arm, seed)


def is_study(folder: Path | str) -> bool:
    """True when ``folder`` holds a ``study.yaml``."""
    return (Path(folder) / STUDY_FILE).is_file()


def check_spec(spec: StudySpec, where: str = "", names: Mapping[str, str] = CLI_NAMES) -> None:
    """Refuse a malformed study; every message names the field (as ``names`` spells it) and its value.

    Args:
        spec: the study.
        where: prefix of every message (the file), empty for command-line input.
        names: how to call each field: :data:`CLI_NAMES` (the runner's flags) or :data:`FILE_NAMES`.

    Raises:
        StudyFolderError: a bad study or arm name, no arms or seeds, duplicate seeds, an override that is not
            ``key=value`` or sets a key the runner owns (:data:`OWNED_KEYS`), a reference that is not an arm.
    """
    def fail(message: str) -> None:
        raise StudyFolderError(f"{where}: {message}" if where else message)

    if not NAME_RE.fullmatch(spec.study):
        fail(f"{names['study']} {spec.study!r}: use letters, digits, '_', '.', '-' (it names folders and the W&B "
             "group)")
    if not spec.arms:
        fail(f"no arms: give at least one {names['arms']} NAME [key=value ...]")
    if not spec.seeds:
        fail(f"no seeds: give {names['seeds']} S [S ...]")
    dupes = sorted({s for s in spec.seeds if spec.seeds.count(s) > 1})
    if dupes:
        fail(f"{names['seeds']}: duplicate seed(s) {dupes}")
    for arm, overrides in spec.arms.items():
        if not NAME_RE.fullmatch(arm):
            fail(f"{names['arms']} {arm!r}: use letters, digits, '_', '.', '-'")
        for o in overrides:
            if "=" not in o:
                fail(f"{names['arms']} {arm}: override {o!r} is not key=value")
            if override_key(o) in OWNED_KEYS:
                fail(f"{names['arms']} {arm}: {override_key(o)} is set by the study runner (per run)")
    for o in spec.overrides:
        if "=" not in o:
            fail(f"{names['overrides']} {o!r} is not key=value")
        if override_key(o) in OWNED_KEYS:
            fail(f"{names['overrides']} {override_key(o)}: set by the study runner (per run)")
    if spec.reference not in spec.arms:
        fail(f"{names['reference']} {spec.reference!r} is not an arm; arms: {list(spec.arms)}")


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def spec_from_mapping(data: Any, path: Path, default_name: str) -> StudySpec:
    """A :class:`StudySpec` of a parsed ``study.yaml``, its types and then :func:`check_spec` checked.

    ``seeds`` and ``arms`` are required; ``study`` defaults to ``default_name``, ``reference`` to the first arm.

    Raises:
        StudyFolderError: naming ``path``, the key and the value.
    """
    if not isinstance(data, dict):
        raise StudyFolderError(f"{path}: expected a mapping at the top level")
    known = [f.name for f in fields(StudySpec)]
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise StudyFolderError(f"{path}: unknown key(s) {unknown}; a study file holds {known}")
    seeds = data.get("seeds")
    if not isinstance(seeds, list) or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise StudyFolderError(f"{path}: 'seeds' must be a non-empty list of integers, got {seeds!r}")
    arms = data.get("arms")
    if not isinstance(arms, dict):
        raise StudyFolderError(f"{path}: 'arms' must be a non-empty mapping ARM: [overrides], got {arms!r}")
    for arm, overrides in arms.items():
        if overrides is not None and not _strings(overrides):
            raise StudyFolderError(f"{path}: arm {arm!r}: overrides must be a list of strings, got {overrides!r}")
    for key in ("study", "ds_config", "reference", "device"):
        if data.get(key) is not None and not isinstance(data[key], str):
            raise StudyFolderError(f"{path}: {key!r} must be a string, got {data[key]!r}")
    if data.get("config") is not None and not isinstance(data["config"], str):
        raise StudyFolderError(f"{path}: 'config' must be a string or null, got {data['config']!r}")
    if not _strings(data.get("overrides") or []):
        raise StudyFolderError(f"{path}: 'overrides' must be a list of strings, got {data['overrides']!r}")
    spec = StudySpec(study=data.get("study") or default_name, config=data.get("config"),
                     ds_config=data.get("ds_config") or "", seeds=list(seeds),
                     arms={str(a): list(o or []) for a, o in arms.items()},
                     reference=data.get("reference") or (str(next(iter(arms))) if arms else ""),
                     overrides=list(data.get("overrides") or []), device=data.get("device") or "")
    check_spec(spec, str(path), FILE_NAMES)
    return spec


def read_spec(folder: Path | str) -> StudySpec:
    """Read and check ``<folder>/study.yaml``.

    Raises:
        StudyFolderError: no such folder, no ``study.yaml`` in it, invalid YAML or a malformed study (the message
            names the folder or file, the key and the value).
    """
    folder = Path(folder)
    path = folder / STUDY_FILE
    if not folder.is_dir():
        raise StudyFolderError(f"study folder not found: {folder}")
    if not path.is_file():
        raise StudyFolderError(f"{folder} is not a study folder: no {STUDY_FILE} in it")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise StudyFolderError(f"{path}: invalid YAML ({err})") from None
    return spec_from_mapping(data, path, folder.resolve().name)


def write_spec(folder: Path | str, spec: StudySpec) -> Path:
    """Write ``<folder>/study.yaml`` atomically (the folder is created); returns its path."""
    path = Path(folder) / STUDY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, yaml.safe_dump(asdict(spec), sort_keys=False))
    return path

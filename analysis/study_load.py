"""A multi-seed study folder (written by ``python -m varnet_ds.study``) as the study report sees it.

Layout::

    runs/<study>/study.yaml            # study, config, ds_config, seeds, reference, arms {ARM: [overrides]},
                                       # overrides (common), device (free text)
    runs/<study>/<arm>-s<seed>/        # one finished run per arm x seed: config.yaml, metrics.jsonl,
        val_{knee,brain}_per_volume.csv            (final weights)
        val_{knee,brain}_per_volume_selected.csv   (selected weights: best knee val SSIM)
        selected.json                              ({"step", "epoch", "criterion", "value"})

A run is finished when its ``FINISHED`` marker says so (``varnet_ds.run_folder``, the one definition the study
runner and the W&B report read too); a study also needs its four CSVs. Reads files only; from the package it
imports only the torch-free ``varnet_ds.run_folder``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import yaml

from analysis.checks import flatten
from analysis.provenance import check_data_identity
from analysis.runs import CompareError, Run, VolumeRow, load_run, read_per_volume
from varnet_ds import run_folder
from varnet_ds.run_folder import CHECKPOINT_KINDS as CHECKPOINTS
from varnet_ds.run_folder import run_name as run_folder_name
from varnet_ds.run_folder import table_name

STUDY_SPLITS = ("val_brain", "val_knee")
# Config keys allowed to differ between the runs of a study (besides each arm's override keys).
RUN_KEYS = ("run.seed", "run.name", "run.arm", "run.out_dir", "run.resume")
RUN_PREFIXES = ("log",)


@dataclass
class StudyRun:
    """One finished run of a study.

    Attributes:
        arm: arm name (a key of ``study.yaml``'s ``arms``).
        seed: training seed; runs of different arms with the same seed start from the same weights.
        run: the loaded run (label ``<arm>-s<seed>``).
        tables: ``(checkpoint, split)`` -> per-volume rows.
        selected: contents of ``selected.json`` (empty when the file is absent).
    """

    arm: str
    seed: int
    run: Run
    tables: Dict[Tuple[str, str], List[VolumeRow]]
    selected: Dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """Folder name ``<arm>-s<seed>``."""
        return run_folder_name(self.arm, self.seed)


@dataclass
class Study:
    """A loaded study: its spec and one :class:`StudyRun` per arm x seed.

    Attributes:
        name: study name (``study.yaml``'s ``study``, else the folder name).
        folder: the study folder.
        reference: the reference arm (contrasts are other arm minus reference).
        arms: arm -> its override list, in ``study.yaml`` order.
        seeds: seeds in ascending order.
        runs: ``(arm, seed)`` -> run.
        device: the machine (``study.yaml``'s ``device``, else the first run's start event, else ``unknown``).
        spec: the raw ``study.yaml`` mapping.
    """

    name: str
    folder: Path
    reference: str
    arms: Dict[str, List[str]]
    seeds: List[int]
    runs: Dict[Tuple[str, int], StudyRun]
    device: str
    spec: Dict[str, Any]

    def arm_order(self) -> List[str]:
        """Reference arm first, then the others in ``study.yaml`` order."""
        return [self.reference] + [a for a in self.arms if a != self.reference]

    def ordered_runs(self) -> List[StudyRun]:
        """Runs by :meth:`arm_order`, then by seed (the reference arm's first seed first)."""
        return [self.runs[(arm, seed)] for arm in self.arm_order() for seed in self.seeds]

    def tables(self, arm: str, checkpoint: str, split: str) -> Dict[int, List[VolumeRow]]:
        """Seed -> per-volume rows of one arm, checkpoint and split."""
        return {seed: self.runs[(arm, seed)].tables[(checkpoint, split)] for seed in self.seeds}


def is_study(folder: Path | str) -> bool:
    """True when ``folder`` holds a ``study.yaml``."""
    return (Path(folder) / "study.yaml").is_file()


def override_key(override: str) -> str:
    """Config key of a dotlist override (``"+aug.p=0.5"`` -> ``"aug.p"``)."""
    return override.split("=", 1)[0].strip().lstrip("+~")


def read_spec(folder: Path) -> Dict[str, Any]:
    """Read and validate ``study.yaml``.

    Raises:
        CompareError: the file is missing or malformed; the message names the folder or file.
    """
    path = folder / "study.yaml"
    if not folder.is_dir():
        raise CompareError(f"study folder not found: {folder}")
    if not path.is_file():
        raise CompareError(f"{folder} is not a study folder: no study.yaml in it")
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise CompareError(f"{path}: invalid YAML ({err})") from None
    if not isinstance(spec, dict):
        raise CompareError(f"{path}: expected a mapping at the top level")
    seeds = spec.get("seeds")
    if (not isinstance(seeds, list) or not seeds
            or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)):
        raise CompareError(f"{path}: 'seeds' must be a non-empty list of integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise CompareError(f"{path}: 'seeds' has duplicates: {seeds}")
    arms = spec.get("arms")
    if not isinstance(arms, dict) or not arms:
        raise CompareError(f"{path}: 'arms' must be a non-empty mapping ARM: [overrides], got {arms!r}")
    for arm, overrides in arms.items():
        if overrides is not None and (not isinstance(overrides, list)
                                      or not all(isinstance(o, str) for o in overrides)):
            raise CompareError(f"{path}: arm {arm!r}: overrides must be a list of strings, got {overrides!r}")
    reference = spec.get("reference", next(iter(arms)))
    if reference not in arms:
        raise CompareError(f"{path}: reference arm {reference!r} is not one of the arms {list(arms)}")
    return spec


def _load_study_run(folder: Path, arm: str, seed: int) -> StudyRun:
    run = load_run(folder, label=run_folder_name(arm, seed))
    tables = {(ckpt, split): read_per_volume(folder / table_name(split, ckpt))
              for ckpt in CHECKPOINTS for split in STUDY_SPLITS}
    selected: Dict[str, Any] = {}
    sel_path = folder / "selected.json"
    if sel_path.is_file():
        try:
            selected = json.loads(sel_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise CompareError(f"{sel_path}: invalid JSON ({err})") from None
        if not isinstance(selected, dict):
            raise CompareError(f"{sel_path}: expected a JSON object")
    else:
        run.notes.append(f"{folder}: no selected.json; the selected epoch is unknown")
    return StudyRun(arm, seed, run, tables, selected)


def _finished(folder: Path) -> bool:
    try:
        return run_folder.is_finished(folder)
    except run_folder.RunFolderError as err:
        raise CompareError(str(err)) from None


def _missing_files(folder: Path) -> List[str]:
    return [table_name(s, c) for c in CHECKPOINTS for s in STUDY_SPLITS if not (folder / table_name(s, c)).is_file()]


def check_configs(runs: Sequence[StudyRun], arms: Mapping[str, Sequence[str]], where: Path) -> None:
    """Refuse runs whose configs differ outside the per-run keys, ``log.*`` and the arms' override keys.

    Raises:
        CompareError: naming each differing key with its value per run.
    """
    allowed = {override_key(o) for overrides in arms.values() for o in overrides or []}

    def ignored(key: str) -> bool:
        if key in RUN_KEYS or any(key == p or key.startswith(p + ".") for p in RUN_PREFIXES):
            return True
        return any(key == a or key.startswith(a + ".") for a in allowed)

    flat = [flatten(r.run.config) for r in runs]
    keys = sorted(set().union(*flat))
    differing = [k for k in keys if not ignored(k) and len({repr(f.get(k, "<unset>")) for f in flat}) > 1]
    if not differing:
        return
    parts = []
    for key in differing[:12]:
        groups: Dict[str, List[str]] = {}
        for r, f in zip(runs, flat):
            groups.setdefault(repr(f.get(key, "<unset>")), []).append(r.name)
        parts.append(f"{key} (" + "; ".join(f"{v} in {', '.join(names)}" for v, names in groups.items()) + ")")
    more = f" and {len(differing) - 12} more" if len(differing) > 12 else ""
    raise CompareError(f"{where}: run configs differ outside run.seed/name/arm/out_dir/resume, log.* and the arm "
                       f"overrides ({', '.join(sorted(allowed)) or 'none'}): " + "; ".join(parts) + more)


def _device(spec: Mapping[str, Any], runs: Sequence[StudyRun]) -> str:
    if spec.get("device"):
        return str(spec["device"])
    for r in runs:
        for event in r.run.events():
            if event.get("event") == "start" and event.get("device"):
                return str(event["device"])
    return "unknown"


def load_study(folder: Path | str) -> Study:
    """Load a study folder: ``study.yaml`` and every arm x seed run.

    Raises:
        CompareError: no ``study.yaml``, no finished run at all, missing (unfinished) runs, malformed files or
            configs that differ outside the allowed keys, runs whose recorded data folders differ
            (:func:`analysis.provenance.check_data_identity`); the message names the folder, runs or keys.
    """
    folder = Path(folder)
    spec = read_spec(folder)
    arms = {str(a): list(o or []) for a, o in spec["arms"].items()}
    seeds = sorted(spec["seeds"])
    missing, finished = [], []
    for arm in arms:
        for seed in seeds:
            run_dir = folder / run_folder_name(arm, seed)
            if not run_dir.is_dir():
                missing.append(f"{run_dir.name} (no folder)")
            elif not _finished(run_dir):
                missing.append(f"{run_dir.name} (unfinished: no {run_folder.FINISHED} marker)")
            elif _missing_files(run_dir):
                missing.append(f"{run_dir.name} (missing {', '.join(_missing_files(run_dir))})")
            else:
                finished.append((arm, seed, run_dir))
    if not finished:
        raise CompareError(f"{folder}: the study has no finished runs (expected folders "
                           f"{', '.join(run_folder_name(a, s) for a in arms for s in seeds)})")
    if missing:
        raise CompareError(f"{folder}: {len(missing)} run(s) of study.yaml are missing or unfinished: "
                           + ", ".join(missing) + "; rerun the study command to complete them")
    runs = {(arm, seed): _load_study_run(run_dir, arm, seed) for arm, seed, run_dir in finished}
    ordered = [runs[(a, s)] for a in arms for s in seeds]
    check_configs(ordered, arms, folder)
    check_data_identity({r.name: r.run for r in ordered}, folder)
    return Study(name=str(spec.get("study") or folder.resolve().name), folder=folder,
                 reference=str(spec.get("reference", next(iter(arms)))), arms=arms, seeds=seeds, runs=runs,
                 device=_device(spec, ordered), spec=spec)


def selected_epoch(run: StudyRun) -> Optional[int]:
    """Epoch of the selected weights (``selected.json``), ``None`` when unknown."""
    epoch = run.selected.get("epoch")
    return int(epoch) if isinstance(epoch, (int, float)) and not isinstance(epoch, bool) else None

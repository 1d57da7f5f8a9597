"""A multi-seed study folder (written by ``python -m varnet_ds.study``) as the study report sees it.

Layout::

    runs/<study>/study.yaml            # study, config, ds_config, seeds, reference, arms {ARM: [overrides]},
                                       # overrides (common), device (free text)
    runs/<study>/<arm>-s<seed>/        # one finished run per arm x seed: config.yaml, metrics.jsonl,
        val_{knee,brain}_per_volume.csv            (final weights)
        val_{knee,brain}_per_volume_selected.csv   (selected weights: best knee val SSIM)
        selected.json                              ({"step", "epoch", "criterion", "value"})

The format is defined once, outside the analysis: ``study.yaml`` and the run folder of (arm, seed) by
``varnet_ds.study_folder`` (read and checked there, the same checks the runner applies), a finished run and its file
names by ``varnet_ds.run_folder``; run folders are loaded by :func:`varnet_ds.analysis.runs.load_run`. A study also
needs its four per-volume CSVs. :func:`load_study` is the complete study of the statistics and reports;
:func:`finished_runs` the finished run folders of a study that may be incomplete (the W&B report). Reads files
only; of the package it imports only the torch-free ``varnet_ds.run_folder`` and ``varnet_ds.study_folder``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from varnet_ds import run_folder, study_folder
from varnet_ds.analysis.provenance import check_data_identity
from varnet_ds.analysis.runs import CompareError, Run, cfg_get, flatten, load_run, read_per_volume
from varnet_ds.run_folder import CHECKPOINT_KINDS as CHECKPOINTS
from varnet_ds.run_folder import SELECTED, VolumeRow, run_name, table_name

STUDY_SPLITS = ("val_brain", "val_knee")


@dataclass
class StudyRun:
    """One finished run of a study.

    Attributes:
        arm: arm name (a key of ``study.yaml``'s ``arms``).
        seed: training seed; runs of different arms with the same seed start from the same weights (``None``
            only from :func:`finished_runs`, for a run whose config names no seed).
        run: the loaded run (label ``<arm>-s<seed>``).
        tables: ``(checkpoint, split)`` -> per-volume rows (all four in a study of :func:`load_study`; those
            present from :func:`finished_runs`).
        selected: contents of ``selected.json`` (empty when the file is absent).
    """

    arm: str
    seed: Optional[int]
    run: Run
    tables: Dict[Tuple[str, str], List[VolumeRow]]
    selected: Dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """Folder name ``<arm>-s<seed>``."""
        return run_name(self.arm, self.seed)


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
        spec: ``study.yaml`` as checked by ``varnet_ds.study_folder`` (its fields as a mapping).
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


def read_spec(folder: Path) -> study_folder.StudySpec:
    """``study.yaml`` of ``folder``, read and checked by ``varnet_ds.study_folder.read_spec``.

    Raises:
        CompareError: the folder or file is missing or malformed; the message names it, the key and the value.
    """
    try:
        return study_folder.read_spec(folder)
    except study_folder.StudyFolderError as err:
        raise CompareError(str(err)) from None


def load_study_run(folder: Path, arm: Optional[str] = None, seed: Optional[int] = None) -> StudyRun:
    """One run folder of a study with its per-volume tables (those present) and ``selected.json``.

    Args:
        folder: the run folder.
        arm: its arm; ``None``: the config's ``run.arm``, else ``log.wandb.job_type``, else the folder name.
        seed: its seed; ``None``: the config's ``run.seed``.

    Raises:
        CompareError: a malformed file (named).
    """
    run = load_run(folder, label=run_name(arm, seed) if arm is not None else None)
    if arm is None:
        arm = str(cfg_get(run.config, "run.arm") or cfg_get(run.config, "log.wandb.job_type") or folder.name)
        configured = cfg_get(run.config, "run.seed")
        seed = configured if isinstance(configured, int) and not isinstance(configured, bool) else None
    tables = {(ckpt, split): read_per_volume(folder / table_name(split, ckpt))
              for ckpt in CHECKPOINTS for split in STUDY_SPLITS if (folder / table_name(split, ckpt)).is_file()}
    selected: Dict[str, Any] = {}
    sel_path = folder / SELECTED
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
    allowed = sorted({study_folder.override_key(o) for overrides in arms.values() for o in overrides or []})
    flat = [flatten(r.run.config) for r in runs]
    keys = sorted(set().union(*flat))
    differing = [k for k in keys
                 if not study_folder.may_differ(k, allowed) and len({repr(f.get(k, "<unset>")) for f in flat}) > 1]
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
                       f"overrides ({', '.join(allowed) or 'none'}): " + "; ".join(parts) + more)


def _device(spec: study_folder.StudySpec, runs: Sequence[StudyRun]) -> str:
    if spec.device:
        return spec.device
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
            (:func:`varnet_ds.analysis.provenance.check_data_identity`); the message names the folder, runs or keys.
    """
    folder = Path(folder)
    spec = read_spec(folder)
    arms = spec.arms
    seeds = sorted(spec.seeds)
    missing, finished = [], []
    for arm in arms:
        for seed in seeds:
            run_dir = study_folder.run_dir(folder, arm, seed)
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
                           f"{', '.join(run_name(a, s) for a in arms for s in seeds)})")
    if missing:
        raise CompareError(f"{folder}: {len(missing)} run(s) of study.yaml are missing or unfinished: "
                           + ", ".join(missing) + "; rerun the study command to complete them")
    runs = {(arm, seed): load_study_run(run_dir, arm, seed) for arm, seed, run_dir in finished}
    ordered = [runs[(a, s)] for a in arms for s in seeds]
    check_configs(ordered, arms, folder)
    check_data_identity({r.name: r.run for r in ordered}, folder)
    return Study(name=spec.study, folder=folder, reference=spec.reference, arms=arms, seeds=seeds, runs=runs,
                 device=_device(spec, ordered), spec=asdict(spec))


def finished_runs(folder: Path) -> List[StudyRun]:
    """Every finished run folder of the study folder ``folder`` (a ``FINISHED`` marker), by folder name; arm and
    seed from each run's config. The study may be incomplete and need no ``study.yaml`` (the W&B report).

    Raises:
        CompareError: a malformed marker or file (named).
    """
    return [load_study_run(p.parent) for p in sorted(Path(folder).glob(f"*/{run_folder.METRICS}"))
            if _finished(p.parent)]


def selected_epoch(run: StudyRun) -> Optional[int]:
    """Epoch of the selected weights (``selected.json``), ``None`` when unknown."""
    epoch = run.selected.get("epoch")
    return int(epoch) if isinstance(epoch, (int, float)) and not isinstance(epoch, bool) else None


SUMMARY_KEYS = ("study", "reference", "arms", "contrasts", "device")


def read_summary(path: Path | str) -> Dict[str, Any]:
    """A ``study.json`` mapping (``varnet-ds study-report`` writes it; the one reader of that file).

    Raises:
        CompareError: missing, unreadable or not a study summary (the message names the file).
    """
    path = Path(path)
    if not path.is_file():
        raise CompareError(f"{path}: no such study.json (run `varnet-ds study-report STUDY_DIR` on the rerun first)")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CompareError(f"{path}: not a readable study.json ({err})") from None
    for key in SUMMARY_KEYS:
        if not isinstance(doc, Mapping) or key not in doc:
            raise CompareError(f"{path}: not a study.json (no '{key}')")
    return dict(doc)

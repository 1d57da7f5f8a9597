"""Runs from the W&B public API, converted to the ``metrics.jsonl`` row format of :mod:`varnet_ds.analysis.runs`.

W&B keys (written by ``varnet_ds.tracking``) are ``{split}[/{acquisition}][/x{acceleration}]/{metric}``, e.g.
``train/loss``, ``val_brain/ssim``, ``val_brain/AXT2/x4/ssim``, and every row carries ``trainer/step`` and
``trainer/epoch``. Image keys (``{split}/images/...``), tables and W&B's own ``_step``-style keys are skipped.
A resumed run's history may repeat the window between checkpoint and crash: the later copy wins, as in
``metrics.jsonl``. Per-volume tables are read from the run summary (``{split}_per_volume`` W&B Tables).
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from varnet_ds.analysis.runs import SPLITS, VAL_SPLITS, CompareError, Run, cfg_get, normalise_rows, volume_rows
from varnet_ds.run_folder import VolumeRow

STEP_KEY = "trainer/step"
EPOCH_KEY = "trainer/epoch"


def history_to_rows(history: Iterable[Mapping[str, Any]], source: str) -> List[Tuple[str, Dict[str, Any]]]:
    """W&B history rows -> raw ``(location, row)`` pairs for :func:`varnet_ds.analysis.runs.normalise_rows`.

    One W&B row may hold several ``{split}[/acq][/xN]`` groups; each group becomes one row. Rows without
    ``trainer/step`` are skipped (they were not written by our tracker).
    """
    out = []
    for n, hist in enumerate(history):
        step, epoch = hist.get(STEP_KEY), hist.get(EPOCH_KEY)
        if _missing(step) or _missing(epoch):
            continue
        groups: Dict[Tuple[str, Optional[str], Optional[int]], Dict[str, Any]] = {}
        for key, value in hist.items():
            parts = str(key).split("/")
            if key in (STEP_KEY, EPOCH_KEY) or len(parts) < 2 or parts[0] not in SPLITS or "images" in parts[1:]:
                continue
            if _missing(value) or isinstance(value, (Mapping, list)):
                continue
            acq: Optional[str] = None
            acc: Optional[int] = None
            for part in parts[1:-1]:
                match = re.fullmatch(r"x(\d+)", part)
                if match:
                    acc = int(match.group(1))
                else:
                    acq = part
            groups.setdefault((parts[0], acq, acc), {})[parts[-1]] = value
        for (split, acq, acc), metrics in groups.items():
            row: Dict[str, Any] = {"step": int(step), "epoch": int(epoch), "split": split, **metrics}
            if acq is not None:
                row["acquisition"] = acq
            if acc is not None:
                row["acceleration"] = acc
            out.append((f"{source} history row {n}", row))
    return out


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _unwrap_config(config: Dict[str, Any]) -> Dict[str, Any]:
    """W&B configs may come as ``{key: {"value": v, "desc": ...}}``; return ``{key: v}`` (W&B's ``_wandb`` dropped)."""
    config = {k: v for k, v in config.items() if not str(k).startswith("_")}
    if config and all(isinstance(v, Mapping) and "value" in v for v in config.values()):
        return {k: v["value"] for k, v in config.items()}
    return config


def _summary_table(wb_run: Any, name: str, tmp: Path, source: str) -> Optional[List[VolumeRow]]:
    """A W&B Table logged under ``name`` (from the run summary), as per-volume rows; ``None`` if absent."""
    entry = wb_run.summary.get(name)
    path = entry.get("path") if hasattr(entry, "get") else None
    if not path:
        return None
    wb_run.file(path).download(root=str(tmp), replace=True)
    data = json.loads((tmp / path).read_text(encoding="utf-8"))
    records = [dict(zip(data["columns"], values)) for values in data["data"]]
    return volume_rows(records, f"{source} table {name}")


def load_wandb_runs(project: str, run_ids: Sequence[str], api: Any = None) -> List[Run]:
    """Fetch runs ``project/id`` (``project`` = ``ENTITY/PROJECT``) through ``wandb.Api``.

    Args:
        project: ``ENTITY/PROJECT``.
        run_ids: W&B run ids.
        api: a ``wandb.Api``-like object (tests); created when ``None``.

    Returns:
        The runs, labelled by ``run.name`` of their config (else the W&B name, else the id).

    Raises:
        CompareError: wandb is not installed, no API key is configured, the service is unreachable or a run
            does not exist.
    """
    if not re.fullmatch(r"[^/\s]+/[^/\s]+", project):
        raise CompareError(f"--wandb {project!r}: expected ENTITY/PROJECT")
    if not run_ids:
        raise CompareError("--wandb needs --runs ID [ID ...]")
    if api is None:
        mode = os.environ.get("WANDB_MODE", "").strip().lower()
        if mode in ("offline", "dryrun", "disabled"):
            raise CompareError(f"--wandb: WANDB_MODE={mode} but reading runs needs the online W&B API; unset "
                               "WANDB_MODE when online, or compare local run folders instead")
        try:
            import wandb
        except ImportError as err:
            raise CompareError(f"--wandb: the wandb package is not installed ({err})") from None
        try:
            api = wandb.Api(timeout=30)
        except Exception as err:
            raise CompareError(f"--wandb: cannot use the W&B API ({type(err).__name__}: {err}). Set WANDB_API_KEY "
                               "or run `wandb login` when online, or compare local run folders instead") from None
    runs = []
    for run_id in run_ids:
        path = f"{project}/{run_id}"
        source = f"wandb:{path}"
        try:
            wb_run = api.run(path)
            history = list(wb_run.scan_history())
            config = _unwrap_config(dict(wb_run.config or {}))
            name = wb_run.name
        except Exception as err:
            raise CompareError(f"--wandb: cannot fetch run {path} ({type(err).__name__}: {err}); check the id, "
                               "your network connection and API key") from None
        run_notes: List[str] = [f"{source}: logged images are not fetched from W&B; reconstruction panels need "
                                "run folders"]
        rows = normalise_rows(history_to_rows(history, source), run_notes, source)
        if not rows:
            run_notes.append(f"{source}: the W&B history holds no rows with {STEP_KEY}")
        per_volume = {}
        with tempfile.TemporaryDirectory() as tmp:
            for split in VAL_SPLITS:
                try:
                    table = _summary_table(wb_run, f"{split}_per_volume", Path(tmp), source)
                except Exception as err:
                    run_notes.append(f"{source}: cannot read the {split}_per_volume table ({err})")
                    continue
                if table is not None:
                    per_volume[split] = table
        label = cfg_get(config, "run.name") or name or run_id
        runs.append(Run(label=str(label), source=source, config=config, rows=rows, per_volume=per_volume,
                        notes=run_notes))
    return runs

"""The start-up data check of a training run: every file validated once, split across ranks, verdicts cached.

The cache (``RUN/data_check_cache.json``) keys each verdict by (resolved path, size, mtime in ns), so a changed or
added file is checked again and a resumed or requeued run does not read terabytes again.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from omegaconf import DictConfig

from varnet_ds.console import say
from varnet_ds.data.fastmri_file import DataError, check_file, list_h5_files
from varnet_ds.distributed import DistInfo, all_gather_object
from varnet_ds.files import atomic_write_json


def check_data(cfg: DictConfig, dist: DistInfo, cache_path: Optional[Path] = None) -> List[Tuple[Path, str]]:
    """Validate every data file before training (``data.check_on_start``), split across ranks.

    Each rank checks every world_size-th file (headers, shapes, dtypes and a NaN/inf scan of the k-space, see
    ``varnet_ds.data.check``); results are gathered so every rank reaches the same verdict (no rank waits alone in
    a collective). Verdicts are cached in ``cache_path`` by (file, size, mtime), so a resumed or requeued run does
    not read terabytes again.

    Returns:
        Bad files to skip (only with ``data.skip_bad_files=true``; otherwise the first bad file raises).

    Raises:
        DataError: on every rank, naming the file and the problem.
    """
    if not cfg.data.train_path:
        raise DataError(Path("data.train_path"), "not set: give the knee multicoil train folder")
    folders = [(key, path) for key, path in (("data.train_path", cfg.data.train_path),
                                             ("data.val_path", cfg.data.val_path),
                                             ("data.transfer_path", cfg.data.transfer_path)) if path]
    files: List[Tuple[str, Path]] = []
    for key, path in folders:
        if not Path(path).exists():
            raise DataError(Path(path), f"{key}: folder does not exist")
        files.extend((key, f) for f in list_h5_files(path))  # deterministic: same list on every rank
    if not cfg.data.check_on_start:
        return []
    cache = _load_check_cache(cache_path)

    def ident_of(f: Path) -> str:
        stat = f.stat()
        return f"{f.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"

    t0 = time.perf_counter()
    if dist.is_main:
        cached = sum(ident_of(f) in cache for _, f in files)
        say(f"checking {len(files)} files in {len(folders)} folders (cached: {cached})")
    mine = []
    for i, (key, f) in enumerate(files):
        if i % dist.world_size != dist.rank:
            continue
        ident = ident_of(f)
        if ident not in cache:
            try:
                check_file(f, require_target=True)
                cache[ident] = ""
            except DataError as err:
                cache[ident] = err.problem
            except Exception as err:  # anything unexpected is still a verdict about this file
                cache[ident] = f"{type(err).__name__}: {err}"
        mine.append((key, str(f), ident, cache[ident]))
    verdicts = all_gather_object(mine)
    if dist.is_main and cache_path is not None:
        _save_check_cache(cache_path, {ident: problem for _, _, ident, problem in verdicts})
    bad = [(Path(f), problem) for _, f, _, problem in sorted(verdicts, key=lambda v: v[1]) if problem]
    if dist.is_main:
        say(f"data check: {len(verdicts) - len(bad)} files ok, {len(bad)} bad, {time.perf_counter() - t0:.1f} s")
    if bad and not cfg.data.skip_bad_files:
        path, problem = bad[0]
        more = f" (and {len(bad) - 1} more bad files; data.skip_bad_files=true skips them)" if len(bad) > 1 else ""
        raise DataError(path, problem + more)
    for key, _ in folders:
        good = [v for v in verdicts if v[0] == key and not v[3]]
        if not good:
            raise DataError(Path(dict(folders)[key]), f"{key}: no usable volumes")
    if dist.is_main:
        for p, why in bad:
            print(f"[varnet_ds] skipping bad file {p}: {why}", flush=True)
    return bad


def _load_check_cache(path: Optional[Path]) -> Dict[str, str]:
    if path is None or not Path(path).is_file():
        return {}
    try:
        return dict(json.loads(Path(path).read_text()))
    except (ValueError, OSError):
        return {}  # a damaged cache only costs a re-check


def _save_check_cache(path: Path, verdicts: Dict[str, str]) -> None:
    atomic_write_json(path, {**_load_check_cache(path), **verdicts})

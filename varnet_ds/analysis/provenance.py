"""Provenance of runs and studies: same data? same environment? The blocks and their comparison.

A study (its runs loaded as the study report loads them), a run or a ``study.json`` has a provenance block: the
identity of the train/val/transfer folders, the environment (package version, git commit and dirty flag, Python,
library versions, CPU, GPU) and the ranks and threads per rank. :func:`compare_blocks` lists every difference of
two blocks; the command ``varnet-ds provenance A B`` is :mod:`varnet_ds.analysis.provenance_cli`.

Each run records a ``provenance`` block in its ``start`` event, and again in every ``resume`` event (written by
``varnet_ds/provenance.py``; layout in its docstring and docs/provenance.md). A *segment* is one such event: the
run's label for its start, ``<label> (resume at step N)`` for a resume. The block of several segments
(``study.json``'s ``provenance``) is::

    {"runs": [segments with a block], "unrecorded": [runs whose start event has none (older runs)],
     "environment": {"git.commit": …, "libraries.torch": …, …},   # keys equal in every segment
     "environment_differs": {key: {segment: value}},             # keys that differ between segments
     "data": {"train_path": {"path", "files", "bytes", "sha256"} | null, …},
     "data_differs": {folder: {segment: identity}},              # empty in a study: such a study is refused
     "ranks_threads": {segment: {"world_size": n, "threads_per_rank": t}}}

Data identities are compared without their ``path`` (a copy elsewhere is the same data). Reads files only; of the
package it imports only the loader ``varnet_ds.analysis.runs`` (``varnet_ds/provenance.py`` writes the blocks and
imports torch).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence, Tuple

from varnet_ds.analysis.runs import CompareError, Run, flatten

EVENTS = ("start", "resume")
EXECUTION_KEYS = ("world_size", "threads_per_rank")
BLOCK_KEYS = ("runs", "unrecorded", "environment", "environment_differs", "data", "data_differs", "ranks_threads")
ABSENT = "<absent>"

Segment = Tuple[str, Mapping[str, Any]]  # (label, provenance block of one start/resume event)


def segments(label: str, run: Run) -> List[Segment]:
    """The ``(segment label, block)`` of every ``start``/``resume`` event of ``run`` that holds a provenance block.

    Raises:
        CompareError: a block that is not a mapping, or whose ``data`` is not one (naming the run folder).
    """
    out: List[Segment] = []
    for event in run.events():
        if event.get("event") not in EVENTS or "provenance" not in event:
            continue
        block = event["provenance"]
        where = f"{run.source}: metrics.jsonl, {event['event']} event at step {event['step']}"
        if not isinstance(block, Mapping) or not isinstance(block.get("data", {}), Mapping):
            raise CompareError(f"{where}: 'provenance' must be a mapping with a 'data' mapping, got {block!r}")
        if block:  # ranks other than 0 write no events; an empty block would be a writer's bug, not data
            out.append((label if event["event"] == "start" else f"{label} (resume at step {event['step']})", block))
    return out


def identity_key(identity: Any) -> str:
    """What makes two folder identities equal: ``files``, ``bytes`` and ``sha256`` (the path is left out)."""
    if isinstance(identity, Mapping):
        if "error" in identity:
            return json.dumps(["error", identity["error"]])
        return json.dumps([identity.get("files"), identity.get("bytes"), identity.get("sha256")])
    return json.dumps(identity)


def describe_identity(identity: Any) -> str:
    """``3 files, 1,234,567 bytes, sha256 1a2b3c4d5e6f`` (or ``not set`` / ``unreadable (...)``), for messages."""
    if identity is None:
        return "not set"
    if not isinstance(identity, Mapping):
        return repr(identity)
    if "error" in identity:
        return f"unreadable ({identity['error']})"
    size = identity.get("bytes")
    size_text = f"{size:,} bytes" if isinstance(size, int) else f"{size} bytes"
    return f"{identity.get('files')} files, {size_text}, sha256 {str(identity.get('sha256'))[:12]}"


def _data_groups(segs: Sequence[Segment]) -> Dict[str, Dict[Any, List[Tuple[str, Any]]]]:
    """folder key -> identity key -> ``[(segment, identity)]``, folders in order of first appearance."""
    folders: Dict[str, Dict[Any, List[Tuple[str, Any]]]] = {}
    for _, block in segs:
        for key in block.get("data", {}):
            folders.setdefault(key, {})
    for key, groups in folders.items():
        for name, block in segs:
            identity = block.get("data", {}).get(key, ABSENT)
            groups.setdefault(identity_key(identity), []).append((name, identity))
    return folders


def check_data_identity(runs: Mapping[str, Run], where: Path | str) -> None:
    """Refuse runs (or a run's resumes) whose recorded data folders differ.

    Args:
        runs: run label (``<arm>-s<seed>``) -> loaded run; runs without a provenance block are not checked.
        where: the study folder, for the message.

    Raises:
        CompareError: naming, per differing folder, each identity with its runs and data folder paths.
    """
    segs = [seg for label, run in runs.items() for seg in segments(label, run)]
    problems = []
    for key, groups in _data_groups(segs).items():
        if len(groups) < 2:
            continue
        parts = []
        for members in groups.values():
            paths = sorted({str(i.get("path")) for _, i in members if isinstance(i, Mapping) and i.get("path")})
            folder = f" (folder {', '.join(paths)})" if paths else ""
            parts.append(f"{describe_identity(members[0][1])} in {', '.join(n for n, _ in members)}{folder}")
        problems.append(f"data.{key}: " + " vs ".join(parts))
    if problems:
        raise CompareError(f"{where}: the runs' data differ (folder identities recorded in their start/resume "
                           "events; a study compares arms on the same data): " + "; ".join(problems))


def provenance_block(runs: Mapping[str, Run]) -> Dict[str, Any]:
    """The provenance block of a set of runs (``study.json``'s ``provenance``; layout in the module docstring)."""
    per_run = {label: segments(label, run) for label, run in runs.items()}
    segs = [seg for run_segs in per_run.values() for seg in run_segs]
    env_flat = [(name, flatten({k: v for k, v in block.items() if k != "data" and k not in EXECUTION_KEYS}))
                for name, block in segs]
    keys = list(dict.fromkeys(k for _, flat in env_flat for k in flat))
    environment: Dict[str, Any] = {}
    environment_differs: Dict[str, Dict[str, Any]] = {}
    for key in keys:
        values = {name: flat.get(key, ABSENT) for name, flat in env_flat}
        if len({json.dumps(v, sort_keys=True) for v in values.values()}) == 1:
            environment[key] = next(iter(values.values()))
        else:
            environment_differs[key] = values
    data: Dict[str, Any] = {}
    data_differs: Dict[str, Dict[str, Any]] = {}
    for key, groups in _data_groups(segs).items():
        if len(groups) == 1:
            data[key] = next(iter(groups.values()))[0][1]
        else:
            data_differs[key] = {name: identity for members in groups.values() for name, identity in members}
    return {"runs": [name for name, _ in segs], "unrecorded": [label for label, ss in per_run.items() if not ss],
            "environment": environment, "environment_differs": environment_differs, "data": data,
            "data_differs": data_differs,
            "ranks_threads": {name: {k: block.get(k) for k in EXECUTION_KEYS} for name, block in segs}}


def check_block(block: Any, where: str) -> Dict[str, Any]:
    """``block`` after checking it has :data:`BLOCK_KEYS` of the right types.

    Raises:
        CompareError: naming ``where`` and the missing or malformed key.
    """
    if not isinstance(block, Mapping):
        raise CompareError(f"{where}: no 'provenance' mapping (a study.json written before provenance was recorded?)")
    for key in BLOCK_KEYS:
        kind = list if key in ("runs", "unrecorded") else Mapping
        if not isinstance(block.get(key), kind):
            raise CompareError(f"{where}: provenance.{key} must be a {kind.__name__.lower()}, got "
                               f"{block.get(key)!r}")
    return dict(block)


def _text(value: Any) -> str:
    if isinstance(value, Mapping) and value and all(isinstance(k, str) for k in value):
        return "varies: " + "; ".join(f"{k} {_text(v)}" for k, v in value.items())
    return json.dumps(value) if not isinstance(value, str) else value


def _env_value(block: Mapping[str, Any], key: str) -> Tuple[bool, Any]:
    """``(uniform, value)``: the common value, or the per-segment values when they differ within the block."""
    if key in block["environment"]:
        return True, block["environment"][key]
    return False, block["environment_differs"].get(key, ABSENT)


def _data_value(block: Mapping[str, Any], key: str) -> Tuple[bool, Any]:
    """``(uniform, identity)``, or ``(False, {segment: identity})`` when the folder differs within the block."""
    if key in block["data"]:
        return True, block["data"][key]
    return False, block["data_differs"].get(key, ABSENT)


def _data_text(uniform: bool, value: Any) -> str:
    if uniform:
        return describe_identity(value)
    if isinstance(value, Mapping):
        return "varies: " + "; ".join(f"{n} {describe_identity(i)}" for n, i in value.items())
    return str(value)


def compare_blocks(a: Mapping[str, Any], b: Mapping[str, Any]) -> Dict[str, List[str]]:
    """Differences between two provenance blocks, per aspect ``data``, ``environment``, ``ranks/threads``.

    A key that varies within A or B differs. Data folders are compared by :func:`identity_key` (not their path);
    ranks/threads by the set of ``(world_size, threads_per_rank)`` over segments.

    Returns:
        aspect -> lines ``key: A … | B …`` (empty list: same).
    """
    out: Dict[str, List[str]] = {"data": [], "environment": [], "ranks/threads": []}
    for key in dict.fromkeys([*a["data"], *a["data_differs"], *b["data"], *b["data_differs"]]):
        (ua, va), (ub, vb) = _data_value(a, key), _data_value(b, key)
        if not (ua and ub and identity_key(va) == identity_key(vb)):
            out["data"].append(f"data.{key}: A {_data_text(ua, va)} | B {_data_text(ub, vb)}")
    keys = dict.fromkeys([*a["environment"], *a["environment_differs"], *b["environment"], *b["environment_differs"]])
    for key in keys:
        (ua, va), (ub, vb) = _env_value(a, key), _env_value(b, key)
        if not (ua and ub and json.dumps(va, sort_keys=True) == json.dumps(vb, sort_keys=True)):
            out["environment"].append(f"{key}: A {_text(va)} | B {_text(vb)}")
    rt = [sorted({(r.get("world_size"), r.get("threads_per_rank")) if isinstance(r, Mapping) else (None, None)
                  for r in block["ranks_threads"].values()}, key=str) for block in (a, b)]
    if rt[0] != rt[1]:
        texts = [", ".join(f"{w} rank(s) x {t} thread(s)" for w, t in pairs) or "none" for pairs in rt]
        out["ranks/threads"].append(f"ranks x threads per rank: A {texts[0]} | B {texts[1]}")
    return out

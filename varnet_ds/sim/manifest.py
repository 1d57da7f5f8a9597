"""Content hashes of simulated fastMRI files and the data manifest that pins the demo's data.

:func:`content_sha256` hashes what a reader gets out of an HDF5 file, not its bytes: for every dataset (sorted by
path) its path, little-endian dtype, shape and C-order values, and for every attribute of the file and of each
dataset (sorted by name) its name, type and value, except the informational ``produced_by`` attribute (package and
library versions; it would otherwise change the hash with every release). The file bytes also hold HDF5's layout
(object headers, B-trees, free space), which depends on the HDF5 library: the same volume written with h5py 3.16
(HDF5 2.0.0) and with h5py 3.9 (HDF5 1.12.2) has the same size and content hash, but other bytes (measured,
docs/demo_data.md). Within one build the bytes repeat; the content hash does not depend on the build.

The manifest (JSON) lists, per data set (a sub-folder), the arguments it was simulated with and, per file, its
content sha256 and the target's ``norm`` attribute (so a mismatch can tell a rounding-level difference from another
brain), plus the anatomy source, the generator version and what produced it. :func:`check` compares a folder with
it and returns one line per missing, extra or different file. ``varnet_ds/demo.py`` keeps the demo's manifest in
:data:`DEMO_MANIFEST`; ``python -m varnet_ds.demo --write-manifest`` refreshes it.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import h5py
import numpy as np

from varnet_ds.files import atomic_write_text
from varnet_ds.sim import anatomy
from varnet_ds.sim.simulate import GENERATOR_VERSION
from varnet_ds.sim.synth import PRODUCED_BY, SIMULATOR, produced_by

DEMO_MANIFEST = Path(__file__).resolve().with_name("demo_manifest.json")
FORMAT = 1
# the attrs that say what made a file (shown when a file differs)
PRODUCER_ATTRS = ("simulator", "generator_version", "anatomy_source", "anatomy_sha256", PRODUCED_BY)


class ManifestError(ValueError):
    """A manifest file that cannot be read or lacks a key (the message names the file and key)."""


def _feed(h: Any, *parts: bytes) -> None:
    for part in parts:  # length-prefixed: no two different serialisations concatenate to the same stream
        h.update(struct.pack("<Q", len(part)))
        h.update(part)


def _value_bytes(value: Any) -> List[bytes]:
    """``[type tag, shape, payload]`` of an HDF5 attribute or dataset value, independent of byte order."""
    if isinstance(value, str):
        return [b"str", b"", value.encode("utf-8")]
    if isinstance(value, bytes):
        return [b"bytes", b"", value]
    arr = np.asarray(value)
    shape = json.dumps(list(arr.shape)).encode()
    if arr.dtype.kind in "OUS":  # strings: element by element, as text or bytes
        items = [x.encode("utf-8") if isinstance(x, str) else bytes(x) for x in arr.reshape(-1).tolist()]
        h = hashlib.sha256()
        _feed(h, *items)
        return [f"strings:{arr.dtype.kind}".encode(), shape, h.digest()]
    arr = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))
    return [arr.dtype.str.encode(), shape, arr.tobytes()]


def _feed_attrs(h: Any, attrs: h5py.AttributeManager) -> None:
    for name in sorted(attrs):
        if name != PRODUCED_BY:
            _feed(h, b"attr", name.encode("utf-8"), *_value_bytes(attrs[name]))


def content_sha256(path: Path) -> str:
    """sha256 of an HDF5 file's datasets and attributes (not of its bytes; see the module docstring).

    Raises:
        OSError: the file cannot be opened as HDF5 (h5py's message names it).
    """
    h = hashlib.sha256()
    with h5py.File(path, "r") as hf:
        names: List[str] = []
        hf.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
        _feed_attrs(h, hf.attrs)
        for name in sorted(names):
            ds = hf[name]
            _feed(h, b"dataset", name.encode("utf-8"), *_value_bytes(ds[()]))
            _feed_attrs(h, ds.attrs)
    return h.hexdigest()


def file_entry(path: Path) -> Dict[str, Any]:
    """``{"sha256": content hash, "norm": the target's norm attribute}`` of one file."""
    with h5py.File(path, "r") as hf:
        norm = float(hf.attrs["norm"]) if "norm" in hf.attrs else None
    return {"sha256": content_sha256(path), "norm": norm}


def producer(path: Path) -> str:
    """What made a file, from its attrs: ``simulator …, generator_version …, anatomy_source …, …``."""
    try:
        with h5py.File(path, "r") as hf:
            found = {k: hf.attrs[k] for k in PRODUCER_ATTRS if k in hf.attrs}
    except OSError as err:
        return f"unreadable ({err})"
    if not found:
        return "no simulator attributes (not made by varnet_ds.sim.synth)"
    return ", ".join(f"{k} {v.decode() if isinstance(v, bytes) else v}" for k, v in found.items())


def spec_json(kwargs: Mapping[str, Any]) -> Dict[str, Any]:
    """A set's simulation arguments as they appear in the manifest (tuples as lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()}


def build(root: Path, sets: Mapping[str, Mapping[str, Any]]) -> Dict[str, Any]:
    """The manifest of ``root/<set>/*.h5`` for every set, with the arguments each set was simulated with."""
    out: Dict[str, Any] = {
        "format": FORMAT,
        "what": "content sha256 of every demo data file (varnet_ds/sim/manifest.py); refresh: "
                "python -m varnet_ds.demo --write-manifest",
        "generator": {"simulator": SIMULATOR, "generator_version": GENERATOR_VERSION},
        "anatomy": {"name": anatomy.NAME, "sha256": anatomy.SHA256},
        "produced_by": produced_by(),
        "sets": {},
    }
    for name, kwargs in sets.items():
        files = sorted((Path(root) / name).glob("*.h5"))
        if not files:
            raise ManifestError(f"{Path(root) / name}: no .h5 files to put in the manifest")
        out["sets"][name] = {"spec": spec_json(kwargs), "files": {f.name: file_entry(f) for f in files}}
    return out


def write(manifest: Mapping[str, Any], path: Path = DEMO_MANIFEST) -> None:
    """Write ``manifest`` as indented JSON (atomically)."""
    atomic_write_text(path, json.dumps(manifest, indent=1, sort_keys=False) + "\n")


def load(path: Path = DEMO_MANIFEST) -> Dict[str, Any]:
    """Read and validate a manifest.

    Raises:
        ManifestError: the file is missing, not JSON, of another format or lacks a key (named).
    """
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ManifestError(f"data manifest {path}: {err}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ManifestError(f"data manifest {path}: 'format' must be {FORMAT}, got "
                            f"{data.get('format') if isinstance(data, dict) else type(data).__name__!r}")
    for key in ("generator", "anatomy", "sets"):
        if not isinstance(data.get(key), dict):
            raise ManifestError(f"data manifest {path}: missing or invalid key {key!r}")
    for name, entry in data["sets"].items():
        if not isinstance(entry, dict) or not isinstance(entry.get("files"), dict) or "spec" not in entry:
            raise ManifestError(f"data manifest {path}: set {name!r} needs 'spec' and 'files'")
        for fname, rec in entry["files"].items():
            if not isinstance(rec, dict) or not isinstance(rec.get("sha256"), str):
                raise ManifestError(f"data manifest {path}: sets.{name}.files.{fname} needs a 'sha256'")
    return data


def data_sha256(manifest: Mapping[str, Any]) -> str:
    """One sha256 for the data a manifest describes: its sets' file names and content hashes."""
    files = {name: {f: rec["sha256"] for f, rec in entry["files"].items()} for name, entry in manifest["sets"].items()}
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def expected_producer(manifest: Mapping[str, Any]) -> str:
    """What made the manifest's data, in the words of :func:`producer`."""
    gen, anat = manifest["generator"], manifest["anatomy"]
    return (f"simulator {gen.get('simulator')}, generator_version {gen.get('generator_version')}, anatomy_source "
            f"{anat.get('name')}, anatomy_sha256 {anat.get('sha256')}, produced_by {manifest.get('produced_by')}")


def _difference(path: Path, rec: Mapping[str, Any], digest: str) -> str:
    line = f"{path}: content sha256 {digest[:16]}… here, {rec['sha256'][:16]}… in the manifest"
    try:
        with h5py.File(path, "r") as hf:
            norm = float(hf.attrs["norm"]) if "norm" in hf.attrs else None
    except OSError:
        norm = None
    if norm is not None and rec.get("norm"):
        rel = abs(norm - rec["norm"]) / abs(rec["norm"])
        kind = ("the same target, so k-space or attributes differ" if rel == 0 else
                "a rounding-level difference: other CPU or library arithmetic" if rel < 1e-5 else
                "different content")
        line += f"; target norm {norm:.6g} vs {rec['norm']:.6g} (relative {rel:.1e}: {kind})"
    return line + f"\n    this file was produced by: {producer(path)}"


def check(root: Path, manifest: Mapping[str, Any], only: Optional[Mapping[str, List[str]]] = None) -> List[str]:
    """Compare ``root/<set>/*.h5`` with the manifest.

    Args:
        root: folder holding one sub-folder per set.
        manifest: a loaded manifest (:func:`load`).
        only: ``{set: [file names]}`` to check just those files (no missing/extra check); ``None``: everything.

    Returns:
        One line per problem (missing, extra or different file, each named); empty when everything matches.
    """
    problems: List[str] = []
    for name, entry in manifest["sets"].items():
        folder = Path(root) / name
        expected: Dict[str, Any] = entry["files"]
        if only is not None:
            if name not in only:
                continue
            wanted = set(only[name])
            unknown = sorted(wanted - set(expected))
            problems += [f"{folder / f}: not in the manifest's set {name!r}" for f in unknown]
            expected = {f: rec for f, rec in expected.items() if f in wanted}
        else:
            present = {p.name for p in folder.glob("*.h5")} if folder.is_dir() else set()
            problems += [f"{folder / f}: missing (listed in the manifest)" for f in sorted(set(expected) - present)]
            problems += [f"{folder / f}: extra file (not in the manifest)" for f in sorted(present - set(expected))]
            expected = {f: rec for f, rec in expected.items() if f in present}
        for fname, rec in sorted(expected.items()):
            path = folder / fname
            if not path.is_file():
                problems.append(f"{path}: missing")
                continue
            try:
                digest = content_sha256(path)
            except OSError as err:
                problems.append(f"{path}: unreadable as HDF5 ({err})")
                continue
            if digest != rec["sha256"]:
                problems.append(_difference(path, rec, digest))
    return problems

"""Read the records of W&B's offline transaction logs (``offline-run-*/run-<id>.wandb``) in tests.

wandb 0.31 ships no Python reader for these files: ``wandb.sdk.internal.datastore.DataStore`` (what ``wandb sync``
used in older releases) is gone, and ``wandb sync`` / ``wandb leet`` read them inside the Go ``wandb-core`` binary
(``core/pkg/leveldb``), which offers no record dump. So this module reads them as wandb-core's ``LiveReader`` does
for a file that may still be written: a LevelDB log (7-byte file header ``:W&B`` + magic ``0xBEE1`` + version 0, then
32 KiB blocks of chunks, each with a 7-byte header ``crc32(4) length(2) type(1)``; wandb-core's CRC is the IEEE crc32
of the type byte and the payload). A record is decoded only when every chunk of it is complete and its checksum
matches; the first chunk that is not (a tail the service has not finished writing) ends the scan, so a read never
parses half a record. :func:`flushed_records` adds the wait: call ``wandb.teardown()`` after the run's
``finish()`` (the service flushes and closes the file on exit), then read with it; it re-reads, for a bounded time,
until the record types a test needs are there and the tail is complete.

Tests import it as ``from wandb_files import flushed_records, history_rows`` (pytest puts ``tests/`` on ``sys.path``).
"""

from __future__ import annotations

import json
import struct
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Sequence

from google.protobuf.message import DecodeError
from wandb.proto import wandb_internal_pb2

HEADER = struct.pack("<4sHB", b":W&B", 0xBEE1, 0)  # ident, magic, version as wandb-core writes them
BLOCK = 32768  # LevelDB log block size
CHUNK_HEADER = 7  # crc32 (uint32 LE), payload length (uint16 LE), chunk type (uint8)
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


@dataclass
class Scan:
    """What one pass over a ``.wandb`` file found.

    Attributes:
        path: the file read.
        records: the complete, checksum-verified records in file order.
        ends: for each record, the byte offset just past its last chunk.
        size: the file's size in bytes when it was read.
        stop: why the scan stopped before ``size`` (empty when every byte was read): an unfinished or damaged tail.
    """

    path: Path
    records: List[Any] = field(default_factory=list)
    ends: List[int] = field(default_factory=list)
    size: int = 0
    stop: str = ""

    @property
    def end(self) -> int:
        """Byte offset just past the last complete record (the file header's end when there is none)."""
        return self.ends[-1] if self.ends else min(self.size, len(HEADER))

    def kinds(self) -> Counter:
        """Number of records per record type (``Record.WhichOneof("record_type")``, e.g. ``"history"``)."""
        return Counter(r.WhichOneof("record_type") for r in self.records)


def scan(path: Path) -> Scan:
    """Decode every complete record of a ``.wandb`` file, stopping at the first incomplete or damaged chunk.

    Args:
        path: a ``run-<id>.wandb`` file, possibly still being written by W&B's service.

    Returns:
        The :class:`Scan`; never raises for a short or torn tail (it is reported in ``Scan.stop``).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file's first 7 bytes are there but are not W&B's header (not a ``.wandb`` file), or a
            record whose checksums all match is not a valid ``Record`` protobuf (corruption, named by offset).
    """
    path = Path(path)
    data = path.read_bytes()
    out = Scan(path, size=len(data))
    if len(data) < len(HEADER):
        out.stop = f"file header incomplete ({len(data)} of {len(HEADER)} bytes)"
        return out
    if data[: len(HEADER)] != HEADER:
        raise ValueError(f"{path}: not a W&B transaction log (header {data[:len(HEADER)]!r}, expected {HEADER!r})")
    pos, start, payload, inside = len(HEADER), len(HEADER), bytearray(), False  # inside: FIRST read, LAST not yet
    while pos < len(data):
        room = BLOCK - pos % BLOCK
        if room < CHUNK_HEADER:  # block trailer: a chunk header never starts in a block's last 6 bytes
            pos += room
            continue
        if pos + CHUNK_HEADER > len(data):
            out.stop = f"chunk header at byte {pos} incomplete"
            break
        crc, length, kind = struct.unpack_from("<IHB", data, pos)
        if crc == length == kind == 0:  # zero padding up to the end of the block
            pos += room
            continue
        if kind not in (FULL, FIRST, MIDDLE, LAST) or (kind in (FULL, FIRST)) == inside:
            out.stop = f"chunk type {kind} out of order at byte {pos}"
            break
        if length > room - CHUNK_HEADER or pos + CHUNK_HEADER + length > len(data):
            out.stop = f"chunk at byte {pos} incomplete ({length} payload bytes announced)"
            break
        chunk = data[pos + CHUNK_HEADER : pos + CHUNK_HEADER + length]
        if zlib.crc32(bytes([kind]) + chunk) != crc:
            out.stop = f"checksum mismatch in the chunk at byte {pos}"
            break
        if kind in (FULL, FIRST):
            start, payload = pos, bytearray()
        payload += chunk
        pos, inside = pos + CHUNK_HEADER + length, kind in (FIRST, MIDDLE)
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            try:
                record.ParseFromString(bytes(payload))
            except DecodeError as err:
                raise ValueError(f"{path}: the record at byte {start} passes its checksums but is not a W&B "
                                 f"Record ({err})") from None
            out.records.append(record)
            out.ends.append(pos)
    else:
        if inside:
            out.stop = f"record at byte {start} has no last chunk yet"
    return out


def flushed_records(path: Path, needed: Sequence[str] = ("exit",), timeout: float = 60.0) -> List[Any]:
    """The records of a ``.wandb`` file once it is flushed: every byte reads as complete records and there is at
    least one record of every type in ``needed``.

    W&B's service process writes the file; call this after the run's ``finish()`` and ``wandb.teardown()`` (which
    waits for the service to flush and exit). On a loaded machine records were seen to appear after ``finish()``
    had returned, so it re-reads every 0.25 s until the file is complete. ``exit`` (the run's exit record, written
    when it finishes) marks the end of a finished run.

    Args:
        path: the ``run-<id>.wandb`` file.
        needed: record types that must be present, e.g. ``["history", "metric", "exit"]``.
        timeout: seconds to keep re-reading before failing.

    Returns:
        The records, in file order.

    Raises:
        AssertionError: after ``timeout`` s a type in ``needed`` is still missing or the tail is still incomplete
            (the message names the file, the record counts and where the readable part ends).
        FileNotFoundError, ValueError: as :func:`scan`.
    """
    deadline = time.monotonic() + timeout
    while True:
        found = scan(path)
        kinds = found.kinds()
        if all(kinds[k] for k in needed) and not found.stop:
            return found.records
        if time.monotonic() > deadline:
            raise AssertionError(f"{path}: not flushed after {timeout} s: record types {dict(kinds)}, need "
                                 f"{list(needed)}; complete records end at byte {found.end} of {found.size}"
                                 f"{' (' + found.stop + ')' if found.stop else ''}")
        time.sleep(0.25)


def _items(items: Any) -> Dict[str, Any]:
    return {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in items}


def history_rows(records: Sequence[Any]) -> List[Dict[str, Any]]:
    """One dict per ``history`` record (a ``run.log`` call): key (nested keys joined by ``/``) -> value."""
    return [_items(r.history.item) for r in records if r.WhichOneof("record_type") == "history"]


def run_summary(records: Sequence[Any]) -> Dict[str, Any]:
    """The run summary: the ``summary`` records' updates applied in order."""
    out: Dict[str, Any] = {}
    for r in records:
        if r.WhichOneof("record_type") == "summary":
            out.update(_items(r.summary.update))
    return out

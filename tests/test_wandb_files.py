"""tests/wandb_files.py: reading W&B's .wandb transaction logs whole, torn, damaged and while they are written."""

from __future__ import annotations

import bisect
import random
import threading
import time

import pytest
import wandb
from wandb_files import BLOCK, HEADER, flushed_records, history_rows, scan

BIG = 80_000  # characters of the one history record that spans 3+ chunks and crosses 32 KiB block boundaries


@pytest.fixture(scope="module")
def run_file(tmp_path_factory):
    """A finished offline W&B run written by wandb itself: 12 small history records and one of ~80 KB."""
    root = tmp_path_factory.mktemp("wandb_files")
    mp = pytest.MonkeyPatch()
    for var in ("WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_DISABLED", "WANDB_RUN_ID", "WANDB_PROJECT", "WANDB_RESUME"):
        mp.delenv(var, raising=False)
    mp.setenv("WANDB_MODE", "offline")
    mp.setenv("WANDB_SILENT", "true")
    mp.setenv("NETRC", str(root / "netrc"))
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        mp.setenv(var, str(root / "wandb_home" / var.lower()))
    try:
        run = wandb.init(project="wandb-files", dir=str(root))
        for i in range(12):
            run.log({"i": i, "blob": "x" * BIG} if i == 6 else {"i": i})
        run.finish()
        wandb.teardown()  # the service flushes and closes the file before it exits
    finally:
        mp.undo()
    return next(root.glob("wandb/offline-run-*/*.wandb"))


def test_reads_a_finished_run(run_file):
    full = scan(run_file)
    assert full.stop == "" and full.end == full.size == run_file.stat().st_size
    rows = history_rows(full.records)
    assert [r["i"] for r in rows] == list(range(12)) and len(rows[6]["blob"]) == BIG
    assert full.kinds()["exit"] == 1 and full.records[-1].WhichOneof("record_type") == "exit"
    big = next(k for k, r in enumerate(full.records) if "blob" in r.history.SerializeToString().decode("latin-1"))
    assert full.ends[big] // BLOCK - full.ends[big - 1] // BLOCK >= 2  # spans blocks: FIRST, MIDDLE(s), LAST
    assert [r.SerializeToString() for r in flushed_records(run_file, ["history", "exit"], timeout=1)] == [
        r.SerializeToString() for r in full.records]


def test_truncated_copies_read_as_the_complete_prefix(run_file, tmp_path):
    data = run_file.read_bytes()
    full = scan(run_file)
    whole = [r.SerializeToString() for r in full.records]
    rng = random.Random(0)
    cuts = set(range(0, 40)) | {e + d for e in full.ends for d in (-1, 0, 1, 5)} | {rng.randrange(len(data))
                                                                                     for _ in range(300)}
    copy = tmp_path / "torn.wandb"
    for cut in sorted(c for c in cuts if 0 <= c <= len(data)):
        copy.write_bytes(data[:cut])
        got = scan(copy)  # must never raise for a torn tail (DecodeError was the old reader's failure)
        n = bisect.bisect_right(full.ends, cut)
        assert [r.SerializeToString() for r in got.records] == whole[:n], f"cut at byte {cut}"
        assert got.end == (full.ends[n - 1] if n else min(cut, len(HEADER))), f"cut at byte {cut}"
        if cut < len(HEADER):
            assert "file header incomplete" in got.stop
        elif cut in full.ends or cut == len(HEADER):
            assert got.stop == "", f"cut at byte {cut}: {got.stop}"
        else:  # a partly written record (not only a block's zero trailer) is reported
            assert got.stop or not data[got.end:cut].strip(b"\0"), f"cut at byte {cut}"
    big = max(range(1, len(full.ends)), key=lambda k: full.ends[k] - full.ends[k - 1])  # a multi-chunk record
    start = full.ends[big - 1]
    room = BLOCK - start % BLOCK - 7  # its first chunk's payload fills the rest of the block
    copy.write_bytes(data[: start + 7 + room // 2])  # cut halfway through that payload
    assert room > 2 and scan(copy).stop == f"chunk at byte {start} incomplete ({room} payload bytes announced)"
    copy.write_bytes(data[: full.ends[-2] + 3])  # the exit record cut after 3 of its bytes
    for needed in (["exit"], ["history"]):  # a missing type, or all types there but a torn tail: not flushed
        with pytest.raises(AssertionError, match=r"torn\.wandb: not flushed after 0\.5 s.*chunk header at byte"):
            flushed_records(copy, needed, timeout=0.5)


def test_a_damaged_chunk_ends_the_scan_with_its_offset(run_file, tmp_path):
    data = bytearray(run_file.read_bytes())
    full = scan(run_file)
    k = len(full.ends) // 2
    data[full.ends[k - 1] + 9] ^= 0xFF  # a payload byte of record k
    bad = tmp_path / "bad.wandb"
    bad.write_bytes(bytes(data))
    got = scan(bad)
    assert len(got.records) == k and got.stop == f"checksum mismatch in the chunk at byte {full.ends[k - 1]}"
    (tmp_path / "other.wandb").write_bytes(b"SQLite format 3\0")
    with pytest.raises(ValueError, match=r"other\.wandb: not a W&B transaction log"):
        scan(tmp_path / "other.wandb")


def test_flushed_records_waits_for_a_file_being_written(run_file, tmp_path):
    data = run_file.read_bytes()
    live = tmp_path / "live.wandb"
    live.write_bytes(b"")
    rng = random.Random(1)

    def writer():  # appends in random pieces, cutting records and chunk headers anywhere, as a busy service can
        with live.open("ab", buffering=0) as f:
            pos = 0
            while pos < len(data):
                step = rng.randrange(1, 4000)
                f.write(data[pos : pos + step])
                pos += step
                time.sleep(0.002)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        records = flushed_records(live, ["history", "exit"], timeout=30)
    finally:
        thread.join()
    assert [r.SerializeToString() for r in records] == [r.SerializeToString() for r in scan(run_file).records]

"""varnet_ds.run_folder: the one definition of a finished run (FINISHED, written last) and the run-folder lock."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest

from varnet_ds import run_folder
from varnet_ds.run_folder import (
    FINISHED,
    RunFolderError,
    clear_finished,
    is_finished,
    lock,
    output_files,
    read_finished,
    write_finished,
)


def test_finished_marker_round_trip(tmp_path):
    (tmp_path / "model_fp32.pt").write_bytes(b"w")
    (tmp_path / "val_brain_per_volume.csv").write_text("fname\n")
    assert read_finished(tmp_path) is None and not is_finished(tmp_path)
    assert output_files(tmp_path) == ["model_fp32.pt", "val_brain_per_volume.csv"]
    write_finished(tmp_path, step=12, epoch=3, epochs=4, max_steps=None, files=output_files(tmp_path))
    record = read_finished(tmp_path)
    assert (record["step"], record["epoch"], record["epochs"], record["max_steps"]) == (12, 3, 4, None)
    assert is_finished(tmp_path) and is_finished(tmp_path, epochs=4) and is_finished(tmp_path, 4, None)
    assert not is_finished(tmp_path, epochs=5) and not is_finished(tmp_path, 4, 20)  # another length asked for
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left
    assert clear_finished(tmp_path) and not is_finished(tmp_path) and not clear_finished(tmp_path)


def test_marker_refuses_missing_files_and_garbage(tmp_path):
    with pytest.raises(RunFolderError, match="cannot mark finished, missing model_fp32.pt"):
        write_finished(tmp_path, step=1, epoch=0, epochs=1, max_steps=None, files=["model_fp32.pt"])
    assert not (tmp_path / FINISHED).exists()
    (tmp_path / "model_fp32.pt").write_bytes(b"w")
    write_finished(tmp_path, step=1, epoch=0, epochs=1, max_steps=None, files=["model_fp32.pt"])
    (tmp_path / "model_fp32.pt").unlink()
    with pytest.raises(RunFolderError, match=r"FINISHED vouches for model_fp32.pt, which is missing.*delete"):
        is_finished(tmp_path)
    (tmp_path / FINISHED).write_text("{not json")
    with pytest.raises(RunFolderError, match=f"{tmp_path / FINISHED}: not JSON"):
        read_finished(tmp_path)
    (tmp_path / FINISHED).write_text(json.dumps([1]))
    with pytest.raises(RunFolderError, match="expected an object with 'files'"):
        read_finished(tmp_path)


def test_names():
    assert run_folder.run_name("mraugment", 3) == "mraugment-s3"
    assert run_folder.table_name("val_brain", "selected") == "val_brain_per_volume_selected.csv"
    assert run_folder.table_name("val_knee") == "val_knee_per_volume.csv"
    with pytest.raises(ValueError, match="'best'"):
        run_folder.table_name("val_knee", "best")


HOLDER = """
import sys
from varnet_ds.run_folder import lock
fd = lock(sys.argv[1])
print("locked", flush=True)
sys.stdin.readline()  # holds the lock until told to exit
"""


def test_one_process_per_run_folder(tmp_path, capsys):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path / "run")], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    fd = None
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunFolderError, match=rf"in use by process {holder.pid} .*another run.out_dir"):
            lock(tmp_path / "run", wait_s=0.3)
        capsys.readouterr()
        t0, signalled = time.monotonic(), []
        assert lock(tmp_path / "run", wait_s=30, stop=lambda: bool(signalled.append(1)) or len(signalled) > 3) is None
        assert time.monotonic() - t0 < 5  # a stop signal ends the wait: the caller exits to be requeued
        capsys.readouterr()
        threading.Timer(0.5, lambda: (holder.stdin.write("bye\n"), holder.stdin.flush())).start()
        fd = lock(tmp_path / "run", wait_s=60)  # waits for the holder to end, says so once
        assert time.monotonic() - t0 > 0.4
        assert capsys.readouterr().out.count(f"in use by process {holder.pid}; waiting") == 1
        assert (tmp_path / "run" / run_folder.LOCK).read_text().strip() == str(os.getpid())
    finally:
        holder.kill()
        holder.wait()
        if fd is not None:
            os.close(fd)

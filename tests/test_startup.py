"""Start-up of real training processes: a rendezvous port in use (every rank stops before any work, exit 2, the flag
to pass) and SIGTERM before the trainer's handler exists (exit 75, and the same command then completes)."""

import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from trainrun import NO_EVAL, ROOT, common, env, ok, train_rows

from varnet_ds.exits import EXIT_REQUEUE, EXIT_USAGE
from varnet_ds.rendezvous import RENDEZVOUS_ENV
from varnet_ds.run_folder import read_finished
from varnet_ds.trainer import checkpoint as ckpt

pytestmark = pytest.mark.slow
TRAIN = str(ROOT / "varnet_ds" / "train.py")


def _listening_socket() -> socket.socket:
    """Another job's rendezvous: a socket that listens and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    return sock


def test_taken_port_stops_every_rank_before_any_work(synth_dirs, tmp_path):
    """srun-style ranks (tests/srun_ranks.sh) on a MASTER_PORT another program holds: rank 0 cannot bind it and
    names the flag; rank 1, connected to that program, stops after the rendezvous wait instead of hanging."""
    run_dir = tmp_path / "run"
    with _listening_socket() as busy:
        port = busy.getsockname()[1]
        cmd = ["bash", str(ROOT / "tests" / "srun_ranks.sh"), "2", str(port), sys.executable, TRAIN,
               *common(synth_dirs, run_dir, *NO_EVAL)]
        t0 = time.time()
        proc = subprocess.run(cmd, cwd=ROOT, env={**env(), RENDEZVOUS_ENV: "6"}, capture_output=True, text=True,
                              timeout=240)
    err = proc.stderr
    assert proc.returncode == EXIT_USAGE, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{err[-3000:]}"
    assert f"varnet_ds [rank 0]: MASTER_PORT {port} (MASTER_ADDR 127.0.0.1) is in use" in err, err[-3000:]
    suggested = int(re.search(r"`--master_port (\d+)` to the deepspeed launcher", err)[1])
    assert suggested != port and f"MASTER_PORT={suggested} for srun" in err
    assert f"varnet_ds [rank 1]: no rendezvous with rank 0 at 127.0.0.1:{port} within 6 s" in err, err[-3000:]
    assert "Traceback" not in err
    assert not run_dir.exists()  # no data check, no lock, no config.yaml: untouched
    assert time.time() - t0 < 120


def _sigterm_once_recording(proc: subprocess.Popen) -> None:
    """SIGTERM to ``proc`` as soon as it catches SIGTERM (``SigCgt`` in /proc): the first line of ``train.py``'s
    ``main``, before torch is imported -- long before the trainer's handler exists."""
    status = Path(f"/proc/{proc.pid}/status")
    t0 = time.time()
    while True:
        assert proc.poll() is None, f"exited with {proc.returncode} before installing its handler"
        assert time.time() - t0 < 60, "no SIGTERM handler after 60 s"
        fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
        if int(fields["SigCgt"], 16) >> (signal.SIGTERM - 1) & 1:
            proc.send_signal(signal.SIGTERM)
            return
        time.sleep(0.005)


SIGNAL_IN_BUILD = """
import os, signal, sys
import varnet_ds.trainer.build as build
from varnet_ds import train
real = build.build_trainer
def signal_then_build(*args, **kwargs):  # as if SLURM preempted while the data check / engine build runs
    os.kill(os.getpid(), signal.SIGTERM)
    return real(*args, **kwargs)
build.build_trainer = signal_then_build
sys.exit(train.main(sys.argv[1:]))
"""


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs /proc (Linux)")
def test_sigterm_before_the_trainer_exists_is_a_requeue(synth_dirs, tmp_path):
    run_dir = tmp_path / "run"
    args = common(synth_dirs, run_dir, "train.max_steps=3", "log.every_steps=1", *NO_EVAL)
    # 1. while torch imports: the ranks agree right after the rendezvous, nothing trained, nothing written
    proc = subprocess.Popen([sys.executable, TRAIN, *args], cwd=ROOT, env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        _sigterm_once_recording(proc)
        out, err = proc.communicate(timeout=240)
    finally:
        proc.kill()
    assert proc.returncode == EXIT_REQUEUE, f"exit {proc.returncode}\n{out[-3000:]}\n{err[-3000:]}"
    assert "signal 15 before training started: nothing was trained or written" in out
    assert not run_dir.exists()
    # 2. while the trainer is built: its Preemption adopts the signal, stops at the first agreement (step 1)
    proc = subprocess.run([sys.executable, "-c", SIGNAL_IN_BUILD, *args], cwd=ROOT, env=env(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == EXIT_REQUEUE, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert ckpt.find_latest(run_dir / "checkpoints") == ckpt.tag_for(1)
    assert read_finished(run_dir) is None
    # 3. the same command completes from that checkpoint; a MASTER_PORT held by another program does not matter
    # to a plain process (it binds a port of its own)
    with _listening_socket() as busy:
        proc = subprocess.run([sys.executable, TRAIN, *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
                              env={**env(), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(busy.getsockname()[1])})
    ok(proc)
    assert f"resumed from {run_dir / 'checkpoints' / ckpt.tag_for(1)}" in proc.stdout
    assert [r["step"] for r in train_rows(run_dir)] == [1, 2, 3]
    assert read_finished(run_dir)["step"] == 3

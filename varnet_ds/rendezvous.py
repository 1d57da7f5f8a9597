"""Rendezvous ports: which port a job may use, what happens when it is taken, and the watchdog that keeps a rank from
waiting for ever on one (``docs/startup.md``).

Only rank 0 binds ``MASTER_PORT``; the other ranks connect to it. On a port another program listens on they wait
inside torch's C++ rendezvous for ever (its timeout is not applied there, and Python runs no signal handler while it
waits), so :func:`rendezvous_watchdog` ends them after ``VARNET_DS_RENDEZVOUS_S`` seconds (default 300) with exit
code 2 and the advice of :func:`port_in_use_message`, or at once with the requeue code 75 on SIGTERM/SIGUSR1.
Ports that varnet_ds suggests or hands out (``varnet_ds.studies.ports``) come from :func:`rendezvous_ports`.
"""

from __future__ import annotations

import math
import os
import select
import signal
import socket
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from varnet_ds.exits import EXIT_REQUEUE, EXIT_USAGE, PREEMPT_SIGNALS

RENDEZVOUS_ENV = "VARNET_DS_RENDEZVOUS_S"  # seconds every rank waits for the others at start-up
FIRST_PORT = 29600  # rendezvous ports we suggest or hand out: above the launchers' default 29500, below the
                    # kernel's ephemeral range (no outgoing connection or bind(0) takes them meanwhile)


class RendezvousError(RuntimeError):
    """The process group could not form (e.g. rank 0's port is in use); the message says what to pass."""


def free_port() -> int:
    """An unused TCP port on loopback, from the kernel's ephemeral range. Free when this returns, not reserved:
    for a rendezvous use :func:`suggest_port` (a message) or ``varnet_ds.studies.ports.PortPool`` (a runner)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_is_free(port: int) -> bool:
    """Whether a TCP store could listen on ``port`` now (on every address, with ``SO_REUSEADDR`` as it does)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("", port))
        except OSError:
            return False
        return True


def rendezvous_ports() -> range:
    """Ports for rendezvous that varnet_ds hands out: :data:`FIRST_PORT` up to the kernel's ephemeral range."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768  # the Linux default
    return range(FIRST_PORT, low if low > FIRST_PORT + 100 else FIRST_PORT + 1000)


def suggest_port(exclude: tuple = ()) -> int:
    """The first port of :func:`rendezvous_ports` that is free on this machine now (for a message)."""
    for port in rendezvous_ports():
        if port not in exclude and port_is_free(port):
            return port
    return free_port()


def _pass_port_advice(taken: str) -> str:
    """How to pass another port than ``taken``, with one free on this machine now."""
    port = suggest_port((int(taken),) if taken.isdigit() else ())
    return (f"Pass a free port: `--master_port {port}` to the deepspeed launcher (or torchrun), or "
            f"MASTER_PORT={port} for srun (`MASTER_PORT={port} sbatch launch/slurm.sbatch ...`); {port} is free on "
            f"{socket.gethostname()} now.")


def port_in_use_message(addr: str, port: str) -> str:
    """Rank 0 could not bind ``MASTER_PORT``: the port, what to do, and a port free now."""
    return (f"MASTER_PORT {port} (MASTER_ADDR {addr}) is in use: another job is listening there (both using the "
            f"launcher's default port?). Nothing was started or written. {_pass_port_advice(port)}")


def no_rendezvous_message(rank: int, world_size: int, addr: str, port: str, seconds: float) -> str:
    if rank == 0:
        why = (f"not every one of the WORLD_SIZE={world_size} ranks joined rank 0 at {addr}:{port} within "
               f"{seconds:g} s ({RENDEZVOUS_ENV}): a rank did not start or failed (its log says why), or the ranks "
               "were given different MASTER_ADDR/MASTER_PORT/WORLD_SIZE")
    else:
        why = (f"no rendezvous with rank 0 at {addr}:{port} within {seconds:g} s ({RENDEZVOUS_ENV}): rank 0 did "
               "not start, failed (its log says why; a port in use is named there), or another job holds that port")
    return f"varnet_ds [rank {rank}]: {why}. Nothing was started or written. {_pass_port_advice(port)}"


@contextmanager
def rendezvous_watchdog(seconds: float, message: Callable[[], str]) -> Iterator[None]:
    """End this process if the block does not finish in ``seconds`` (exit 2, printing ``message()``), or when a
    SIGTERM/SIGUSR1 (75) or SIGINT (130) arrives meanwhile.

    The block waits inside torch's C++ rendezvous, where Python runs no signal handler and honours no timeout (a
    client connected to a socket that never answers waits for ever), so a thread watches the clock and the
    signals (through :func:`signal.set_wakeup_fd`). Nothing was started or written yet, so ending at once is safe.
    """
    done = threading.Event()
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    try:
        previous = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    except ValueError:  # not the main thread: the clock only
        previous = None

    def watch() -> None:
        deadline = time.monotonic() + seconds
        while not done.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                print(message(), file=sys.stderr, flush=True)
                os._exit(EXIT_USAGE)
            ready, _, _ = select.select([read_fd], [], [], min(left, 0.5))
            got = set(os.read(read_fd, 64)) if ready else set()
            if done.is_set():
                return
            if got & {int(s) for s in PREEMPT_SIGNALS}:
                print(f"varnet_ds [rank {os.environ.get('RANK', '?')}]: signal during the rendezvous: nothing was "
                      f"started or written; rerun the same command (exit code {EXIT_REQUEUE} = requeue)",
                      file=sys.stderr, flush=True)
                os._exit(EXIT_REQUEUE)
            if int(signal.SIGINT) in got:
                os._exit(128 + int(signal.SIGINT))

    thread = threading.Thread(target=watch, name="varnet_ds-rendezvous", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        if previous is not None:
            signal.set_wakeup_fd(previous)
        thread.join()
        os.close(read_fd)
        os.close(write_fd)


def env_positive(name: str, default: float) -> float:
    """A positive number from environment variable ``name`` (``default`` when unset).

    Raises:
        RendezvousError: not a positive number (naming the variable and its value).
    """
    text = os.environ.get(name)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value > 0:
        raise RendezvousError(f"{name}={text!r}: must be a positive number (unset: {default:g})")
    return value

"""Rendezvous ports for the study runs started under the DeepSpeed launcher, handed out so that none can race.

A one-rank CPU run needs none: ``train.py`` binds its own store on a port the kernel picks
(``varnet_ds.distributed.init_distributed``). A launcher run needs ``--master_port N`` before it starts, and rank 0
binds N seconds later, after its imports. :class:`PortPool` hands out N only when

1. no live run of this runner holds it (released when the run ends),
2. this process holds N's lock file (``fcntl.flock``, released by the kernel even on kill -9), so two runners on one
   machine (two studies, or a study beside ``study_bench``) never hand out the same port at the same time, and
3. N can be bound now, and it lies below the kernel's ephemeral port range
   (``varnet_ds.rendezvous.rendezvous_ports``), where no outgoing connection or ``bind(0)`` of another program
   takes it in the seconds before rank 0 binds it.

A program that binds N explicitly in that window still wins; rank 0 then stops with exit code 2 naming the port.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from pathlib import Path
from typing import Dict, Iterable, Optional

from varnet_ds.rendezvous import port_is_free, rendezvous_ports


def default_lock_dir() -> Path:
    """Where the runners of this user on this machine keep one lock file per port they hand out."""
    return Path(tempfile.gettempdir()) / f"varnet_ds-ports-{os.getuid()}"


class PortPool:
    """Ports for ``--master_port``, never the same one twice among live runs (of this or another runner).

    Args:
        ports: candidates in order (default :func:`varnet_ds.rendezvous.rendezvous_ports`).
        lock_dir: the lock files' folder (default :func:`default_lock_dir`; created).
    """

    def __init__(self, ports: Optional[Iterable[int]] = None, lock_dir: Optional[Path] = None) -> None:
        self.ports = list(rendezvous_ports() if ports is None else ports)
        self.lock_dir = default_lock_dir() if lock_dir is None else Path(lock_dir)
        self.held: Dict[int, int] = {}  # port -> descriptor of its locked file

    def acquire(self) -> int:
        """A port no live run holds, locked for this pool until :meth:`release`.

        Raises:
            RuntimeError: every candidate is held or in use (naming the range).
        """
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        for port in self.ports:
            if port in self.held:
                continue
            fd = os.open(self.lock_dir / f"{port}.lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # another runner's live run has it
                os.close(fd)
                continue
            if port_is_free(port):
                self.held[port] = fd
                return port
            os.close(fd)  # bound by some other program: skip it
        raise RuntimeError(f"no free rendezvous port in {self.ports[0]}-{self.ports[-1]} (all in use or handed out; "
                           f"lock files in {self.lock_dir})" if self.ports else "no candidate ports")

    def release(self, port: int) -> None:
        """The run that held ``port`` has ended: the port may be handed out again."""
        fd = self.held.pop(port, None)
        if fd is not None:
            os.close(fd)  # drops the flock

    def close(self) -> None:
        for port in list(self.held):
            self.release(port)

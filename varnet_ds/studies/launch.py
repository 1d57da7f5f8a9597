"""Packing study runs onto one machine: slots (GPU groups or CPU core shares) and a small launch queue.

A slot runs one training job at a time: on a GPU node under the DeepSpeed launcher with ``--include localhost:IDS``
(K GPUs, K ranks, its own ``--master_port`` from a :class:`~varnet_ds.studies.ports.PortPool`: never a port another
live run holds); on a CPU box as one plain ``train.py`` process (world size 1; it binds its own store on a port the
kernel picks, so no port is handed to it at all) with ``OMP_NUM_THREADS = cores // slots``: for one rank the
launcher would only add two Python processes importing DeepSpeed, ~7 s of CPU on the 2-core box. Every job writes
its output to ``OUT_DIR/train.log`` and keeps running when another fails. SIGTERM or SIGINT to the runner is
forwarded to the training processes of the running jobs (they checkpoint and exit with the requeue code); a job
it forwarded the signal to counts as preempted (rerun to resume) unless it exits 0 or with a failure code (1, 2,
70), also when the signal came before its handler existed.
"""

from __future__ import annotations

import os
import platform
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from varnet_ds.config import ConfigError
from varnet_ds.exits import EXIT_BAD_DATA, EXIT_INTERNAL, EXIT_REQUEUE, EXIT_USAGE
from varnet_ds.studies.ports import PortPool

Job = Tuple[str, List[str], Path]  # (name, train.py arguments, run folder)


@dataclass
class Slot:
    """Where one run executes: GPU ids (``None`` on CPU), ranks and threads per rank."""

    gpus: Optional[List[int]]
    ranks: int
    threads: int

    @property
    def direct(self) -> bool:
        """One CPU rank: ``train.py`` runs as a plain process, without the DeepSpeed launcher."""
        return self.gpus is None and self.ranks == 1

    def launcher(self, port: Optional[int] = None) -> List[str]:
        """The command that ``train.py`` and its arguments follow: this Python for a :attr:`direct` slot, else the
        DeepSpeed launcher with ``--master_port port`` (from :meth:`PortPool.acquire`)."""
        if self.direct:
            return [sys.executable]
        if port is None:
            raise ValueError("a DeepSpeed launcher slot needs a port (PortPool.acquire())")
        ds = str(Path(sys.executable).parent / "deepspeed")
        where = (["--include", "localhost:" + ",".join(map(str, self.gpus))] if self.gpus is not None
                 else ["--num_gpus", str(self.ranks)])
        return [ds, *where, "--master_port", str(port)]

    def env(self) -> Dict[str, str]:
        """The job's environment; a :attr:`direct` job gets a world of its own (no inherited rank variables, which
        would make it wait for ranks that never come, and no MASTER_PORT: ``train.py`` binds its own)."""
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        if self.gpus is None:
            env["OMP_NUM_THREADS"] = str(self.threads)
        if self.direct:
            for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_SIZE", "MASTER_ADDR", "MASTER_PORT"):
                env.pop(key, None)
        return env

    def describe(self, count: int) -> str:
        if self.gpus is not None:
            import torch

            name = torch.cuda.get_device_name(self.gpus[0])
            return f"{count} x {len(self.gpus)} GPU(s) ({name}, {torch.cuda.device_count()} in all)"
        return (f"{cpu_name()} ({os.cpu_count()} cores): {count} run(s) side by side, {self.ranks} rank(s) x "
                f"{self.threads} thread(s) each")


def machine_slots(gpus_per_run: Optional[int], parallel: Optional[int]) -> List[Slot]:
    """The slots of this machine.

    Args:
        gpus_per_run: ranks (GPUs) per run on a GPU node; ``None`` = all GPUs (one run at a time).
        parallel: CPU only: runs side by side, each one rank; ``None`` = one per core (the fastest layout
            measured on the 2-core box, see ``python -m varnet_ds.study_bench``).

    Raises:
        ConfigError: a value that does not fit the machine (named).
    """
    import torch

    if torch.cuda.is_available():
        total = torch.cuda.device_count()
        k = gpus_per_run or total
        if not 1 <= k <= total or total % k:
            raise ConfigError(f"--gpus-per-run {k}: must divide the {total} visible GPU(s)")
        return [Slot(list(range(i, i + k)), k, 0) for i in range(0, total, k)]
    if gpus_per_run is not None:
        raise ConfigError(f"--gpus-per-run {gpus_per_run}: no GPU is visible (use --parallel on a CPU box)")
    cores = os.cpu_count() or 1
    n = parallel or cores
    if n < 1:
        raise ConfigError(f"--parallel {n}: must be >= 1")
    return [Slot(None, 1, max(cores // n, 1)) for _ in range(n)]


def _stop_with_parent(parent: int) -> Optional[Callable[[], None]]:
    """For ``Popen(preexec_fn=...)`` on Linux: the job gets SIGTERM when the runner dies, even by kill -9, so it
    checkpoints and exits (75) instead of training on unattended beside the rerun's job (``PR_SET_PDEATHSIG``)."""
    if not sys.platform.startswith("linux"):
        return None

    def arm() -> None:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # 1 = PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the runner died before the line above
            os.kill(os.getpid(), signal.SIGTERM)

    return arm


def launch_all(jobs: Sequence[Job], slots: Sequence[Slot], say: Callable[[str], None]) -> Dict[str, int]:
    """Run ``jobs`` on ``slots``, at most one job per slot at a time, in order.

    Returns:
        ``{name: exit code}`` of the jobs that did not succeed: :data:`EXIT_REQUEUE` for a preempted one (also one
        killed by the stop signal this runner forwarded), else its own code; :data:`EXIT_REQUEUE` too for jobs never
        started because the runner was stopped. Empty: all succeeded.
    """
    queue = list(jobs)
    running: Dict[int, Tuple[str, subprocess.Popen, float, Path, Optional[int]]] = {}
    failed: Dict[str, int] = {}
    stop = {"signal": 0}
    forwarded: set = set()  # names of the jobs this runner sent SIGTERM to
    ports = PortPool()

    def forward(signum, _frame):
        stop["signal"] = signum
        for i, (name, proc, _, _, _) in running.items():
            forwarded.add(name)
            if slots[i].direct:
                proc.send_signal(signal.SIGTERM)  # the training process itself
            else:
                _signal_ranks(proc.pid)

    old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        while queue or running:
            for i, slot in enumerate(slots):
                if i in running or not queue or stop["signal"]:
                    continue
                name, args, out_dir = queue.pop(0)
                out_dir.mkdir(parents=True, exist_ok=True)
                port = None if slot.direct else ports.acquire()
                log = open(out_dir / "train.log", "a", encoding="utf-8")
                proc = subprocess.Popen([*slot.launcher(port), *args], stdout=log, stderr=subprocess.STDOUT,
                                        env=slot.env(), start_new_session=True,
                                        preexec_fn=_stop_with_parent(os.getpid()))
                log.close()
                running[i] = (name, proc, time.time(), out_dir, port)
                say(f"start {name} on slot {i} (log {out_dir / 'train.log'})")
            time.sleep(0.5)
            for i, (name, proc, t0, out_dir, port) in list(running.items()):
                code = proc.poll()
                if code is None:
                    continue
                del running[i]
                if port is not None:
                    ports.release(port)
                if code == 0:
                    say(f"done  {name} in {time.time() - t0:.0f} s")
                elif preempted(code, name in forwarded):
                    failed[name] = EXIT_REQUEUE
                    say(f"preempted {name} after {time.time() - t0:.0f} s (exit {code}): rerun the same command to "
                        "resume")
                else:
                    failed[name] = code
                    say(f"FAILED {name}: exit {code} after {time.time() - t0:.0f} s; last lines of its log:\n"
                        + _tail(out_dir / "train.log"))
            if stop["signal"] and not running:
                for name, _, _ in queue:  # never started: the rerun starts them
                    failed[name] = EXIT_REQUEUE
                queue.clear()
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        ports.close()
    return failed


def preempted(code: int, forwarded: bool) -> bool:
    """A job's exit ``code`` means "rerun to resume": the requeue code, or -- for a job this runner forwarded a
    stop signal to -- any end but success and the failure codes (bad data, bad usage, internal error); e.g. -15
    when the signal came before the job's handler existed. Checkpoints are written atomically, so a job killed
    anywhere resumes from its last complete one."""
    if code == EXIT_REQUEUE:
        return True
    return forwarded and code not in (0, EXIT_BAD_DATA, EXIT_USAGE, EXIT_INTERNAL)


def _signal_ranks(pid: int) -> None:
    """SIGTERM to the training ranks under a DeepSpeed launcher process (the children of its ``launch.py``).

    The ranks checkpoint and exit with the requeue code, which the launcher passes on. Signalling the launcher
    itself would end it at once and leave the ranks running; signalling the whole group would also hit
    ``launch.py``, which then kills the ranks before they checkpoint.
    """
    import psutil

    try:
        for child in psutil.Process(pid).children(recursive=True):
            try:
                if "deepspeed.launcher.launch" in " ".join(child.parent().cmdline()):
                    child.send_signal(signal.SIGTERM)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
    except psutil.NoSuchProcess:
        pass


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"


def cpu_name() -> str:
    """The CPU model (``/proc/cpuinfo``), else what :mod:`platform` knows: the machine in study and bench tables."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()

"""Exit codes shared by every command (train, evaluate, data check, study, bench, synth, demo), the one wrapper that
turns an uncaught exception into :data:`EXIT_INTERNAL`, and the start-up signal recorder of a training process.

| code | meaning |
|---|---|
| 0 | success |
| 1 | bad data: a file or folder failed the data check, or training met non-finite losses in a row |
| 2 | bad usage or config: unknown key, bad value, missing file, a run folder holding another config, a rendezvous
      port in use (the message names the flag to pass) |
| 70 | internal error: a bug or an unexpected failure; the traceback is printed (``EX_SOFTWARE``) |
| 75 | preempted: rerun the same command to resume; a checkpoint was written, or nothing was trained yet
       (``EX_TEMPFAIL``; not 124, which ``timeout`` uses) |

Anything else comes from the process being killed (128 + signal; a negative code in Python's ``subprocess``).

Only the standard library is imported here: ``train.py`` installs :func:`startup_signals` before torch.
"""

from __future__ import annotations

import functools
import signal
import sys
import threading
import traceback
from contextlib import contextmanager
from typing import Callable, Dict, Iterator, Optional, TypeVar

EXIT_OK = 0
EXIT_BAD_DATA = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 70
EXIT_REQUEUE = 75

PREEMPT_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)  # what SLURM, the launchers and the study runner send

F = TypeVar("F", bound=Callable[..., Optional[int]])
_depth = {"entry_points": 0}  # entry points running in this process; only the outermost one reports
_early: Dict[str, Optional[int]] = {"signal": None}


def entry_point(main: F) -> F:
    """Decorate a command's ``main(argv) -> int``: an uncaught exception prints its traceback and returns
    :data:`EXIT_INTERNAL` (70) instead of Python's 1, which means "bad data" here.

    ``SystemExit`` (argparse's 2, ``--help``'s 0) and ``KeyboardInterrupt`` pass through. An entry point called
    from another one (``varnet-ds train`` runs ``varnet_ds.train.main``) lets exceptions through to the outermost,
    so the dispatcher can still turn a missing optional package into its hint.
    """

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        _depth["entry_points"] += 1
        try:
            return main(*args, **kwargs)
        except Exception as err:
            if _depth["entry_points"] > 1:
                raise
            traceback.print_exc()
            name = main.__module__ if main.__module__ != "__main__" else sys.argv[0]  # python varnet_ds/train.py
            print(f"{name}: internal error (exit code {EXIT_INTERNAL}): {type(err).__name__}: {err}\n"
                  "This is a bug or an unexpected failure, not bad data or a bad config; the traceback is above.",
                  file=sys.stderr, flush=True)
            return EXIT_INTERNAL
        finally:
            _depth["entry_points"] -= 1

    wrapper.entry_point = True  # tests/test_cli.py checks every command's main for it
    return wrapper  # type: ignore[return-value]


@contextmanager
def startup_signals() -> Iterator[None]:
    """Record SIGTERM/SIGUSR1 from the first line of a training process until the trainer's own handler
    (``varnet_ds.trainer.state.Preemption``) takes over, which adopts the signal (:func:`early_signal`).

    Without it a signal that arrives while torch/DeepSpeed import or the engine is built kills the process (-15),
    which a study runner or SLURM cannot tell from a crash. The previous handlers are restored on exit (``main``
    may run inside a test process).
    """

    def record(signum: int, _frame) -> None:
        if _early["signal"] is None:
            _early["signal"] = signum

    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    previous = {sig: signal.signal(sig, record) for sig in PREEMPT_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _early["signal"] = None


def early_signal() -> Optional[int]:
    """The first preemption signal :func:`startup_signals` recorded in this process, or None."""
    return _early["signal"]

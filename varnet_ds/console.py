"""What a run prints while it works: the training progress, evaluation lines and the start-up data check.

On a terminal (``sys.stdout.isatty()``) training shows a tqdm bar with its total, epoch, loss and ETA. Elsewhere
(CI, SLURM logs) carriage-return bars make a mess, so :class:`TrainProgress` prints a plain line every
``interval`` seconds (and at the first and last step) instead::

    [varnet_ds] step 120/360 (33%) epoch 2/6 loss 0.3123 2.5 steps/s ETA 1m36s

Only rank 0 prints; the engine passes ``enabled=dist.is_main``.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, Optional, Sequence, TextIO, Tuple

from tqdm import tqdm

PREFIX = "[varnet_ds]"


def say(message: str, stream: Optional[TextIO] = None) -> None:
    """Print one ``[varnet_ds]`` line (through ``tqdm.write``, so an open bar on the same stream is not torn)."""
    tqdm.write(f"{PREFIX} {message}", file=stream or sys.stdout)
    (stream or sys.stdout).flush()


def is_tty(stream: Optional[TextIO] = None) -> bool:
    stream = stream or sys.stdout
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def batches_per_epoch(dataset_len: int, world_size: int, batch_size: int) -> int:
    """Micro-batches one rank runs per epoch: DistributedSampler(drop_last=False) pads to ceil(len / world_size)."""
    return math.ceil(math.ceil(dataset_len / world_size) / batch_size)


def total_steps(dataset_len: int, world_size: int, batch_size: int, grad_accum: int, epochs: int,
                max_steps: Optional[int] = None) -> int:
    """Optimizer steps of a whole run: min(max_steps, floor(epochs x batches per epoch / grad_accum)).

    The accumulation window runs across epoch boundaries, so the floor is taken over all epochs together.
    ``max_steps`` of ``None``/0 means no cap (as ``train.max_steps``).
    """
    steps = (epochs * batches_per_epoch(dataset_len, world_size, batch_size)) // max(grad_accum, 1)
    return min(steps, int(max_steps)) if max_steps else steps


def format_duration(seconds: float) -> str:
    """``45s``, ``1m36s``, ``2h05m``."""
    s = max(int(round(seconds)), 0)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class TrainProgress:
    """Training progress of rank 0: a tqdm bar on a terminal, plain periodic lines otherwise.

    Args:
        total: optimizer steps of the run (:func:`total_steps`); ``None`` when unknown.
        initial: the step training (re)starts from.
        epochs: ``train.epochs``, shown as ``epoch e/epochs``.
        enabled: ``False`` prints nothing (other ranks, ``log.progress=false``).
        stream: where to write (default ``sys.stdout``); its ``isatty()`` picks the bar or the plain lines.
        interval: seconds between plain lines.
        clock: monotonic seconds (injectable for tests).
    """

    def __init__(self, total: Optional[int], initial: int = 0, epochs: Optional[int] = None, desc: Optional[str] = None,
                 enabled: bool = True, stream: Optional[TextIO] = None, interval: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.total, self.initial, self.epochs, self.enabled = total, int(initial), epochs, enabled
        self.stream, self.interval, self.clock = stream or sys.stdout, float(interval), clock
        self.bar: Optional[tqdm] = None
        self._t0 = clock()
        self._last_print: Optional[float] = None
        self._pending: Optional[Tuple[int, int, float]] = None  # the last update not printed yet (plain mode)
        if enabled and is_tty(self.stream):
            self.bar = tqdm(total=total, initial=self.initial, desc=desc, file=self.stream, dynamic_ncols=True)

    @classmethod
    def for_run(cls, cfg, dist, dataset_len: int, initial: int, grad_accum: Optional[int] = None,
                **kwargs) -> TrainProgress:
        """The progress of a ``Trainer.fit``: total steps from the config and the training set size.

        ``grad_accum``: the engine's (after an elastic resume it differs from ``train.grad_accum``).
        """
        total = total_steps(dataset_len, dist.world_size, cfg.data.batch_size, grad_accum or cfg.train.grad_accum,
                            cfg.train.epochs, cfg.train.max_steps)
        return cls(total, initial=initial, epochs=cfg.train.epochs, desc=cfg.run.name,
                   enabled=bool(dist.is_main and cfg.log.progress), **kwargs)

    def _epoch_text(self, epoch: int) -> str:
        return f"{epoch + 1}/{self.epochs}" if self.epochs else str(epoch + 1)

    def update(self, step: int, epoch: int, loss: float) -> None:
        """After optimizer step ``step`` (global) of 0-based ``epoch``, with the step's mean ``loss``."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.set_postfix(epoch=self._epoch_text(epoch), loss=f"{loss:.4f}", refresh=False)
            self.bar.update(step - self.bar.n)
            return
        now = self.clock()
        last = self.total is not None and step >= self.total
        if self._last_print is None or last or now - self._last_print >= self.interval:
            self._print(step, epoch, loss, now)
        else:
            self._pending = (step, epoch, loss)

    def line(self, step: int, epoch: int, loss: float, now: float) -> str:
        """The plain progress line (without the prefix)."""
        parts = [f"step {step}/{self.total} ({100 * step // max(self.total, 1)}%)" if self.total else f"step {step}",
                 f"epoch {self._epoch_text(epoch)}", f"loss {loss:.4f}"]
        elapsed, done = now - self._t0, step - self.initial
        if elapsed > 0 and done > 0:
            rate = done / elapsed
            parts.append(f"{rate:.3g} steps/s")
            if self.total:
                parts.append(f"ETA {format_duration(max(self.total - step, 0) / rate)}")
        return " ".join(parts)

    def _print(self, step: int, epoch: int, loss: float, now: float) -> None:
        say(self.line(step, epoch, loss, now), self.stream)
        self._last_print, self._pending = now, None

    def close(self) -> None:
        """Close the bar, or print the last step if its line is still owed (a run stopped early)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.enabled and self._pending is not None:
            self._print(*self._pending, self.clock())


def count_volumes(split) -> int:
    """Volumes an ``EvalSplit`` will score (its ``*.h5`` files minus skipped ones, capped at ``max_volumes``)."""
    skip = {Path(f).name for f in split.skip_files}
    folder = Path(split.path)
    names = [p.name for p in folder.glob("*.h5") if p.name not in skip] if folder.is_dir() else []
    return min(len(names), split.max_volumes) if split.max_volumes else len(names)


class EvalConsole:
    """Evaluation lines of rank 0: one when a split starts, one with its overall metrics and best SSIM so far."""

    def __init__(self, enabled: bool = True, stream: Optional[TextIO] = None) -> None:
        self.enabled, self.stream = enabled, stream
        self.best: Dict[str, Tuple[float, int]] = {}  # split -> (best overall SSIM, epoch)

    def start(self, split) -> None:
        """Before ``split`` (an ``EvalSplit``) is scored."""
        if not self.enabled:
            return
        n, pairs = count_volumes(split), len(split.pairs)
        say(f"evaluating {split.name}: {n} volume{'s' * (n != 1)} x {pairs} acceleration{'s' * (pairs != 1)}",
            self.stream)

    def started(self, splits: Iterable) -> Iterator:
        """Yields ``splits``, announcing each (:meth:`start`) just before it is handed out."""
        for split in splits:
            self.start(split)
            yield split

    def result(self, step: int, epoch: int, split: str, rows: Sequence[dict]) -> None:
        """After ``split`` was scored: ``rows`` are its summary rows, the overall one first (``EvalOutput.rows``)."""
        if not self.enabled or not rows:
            return
        row = rows[0]
        ssim = float(row["ssim"])
        best = self.best.get(split)
        if best is None or ssim > best[0] or math.isnan(best[0]):
            best = self.best[split] = (ssim, epoch)
        say(f"epoch {epoch} step {step} {split} SSIM {ssim:.4f} PSNR {float(row['psnr']):.2f} "
            f"NMSE {float(row['nmse']):.4f} (best SSIM {best[0]:.4f} @ epoch {best[1]})", self.stream)

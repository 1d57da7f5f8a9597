"""What the training loop counts (:class:`TrainState`) and how a preemption signal becomes a collective decision
(:class:`Preemption`)."""

from __future__ import annotations

import math
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

import torch
from omegaconf import DictConfig

from varnet_ds.distributed import all_reduce_flags
from varnet_ds.exits import PREEMPT_SIGNALS, early_signal


@dataclass
class TrainState:
    """The loop's counters; saved in every checkpoint's ``client_state``.

    Attributes:
        global_step: optimizer steps taken (DeepSpeed's ``global_steps``).
        epoch: the epoch being trained (0-based); advanced when its loader is exhausted.
        batch_in_epoch: batches of this process's loader consumed in ``epoch``.
        bad_steps: consecutive non-finite losses/gradients.
        pending_eval: an evaluation was abandoned for a preemption; a resumed run does it first.
        step_epoch: the epoch in which ``global_step`` was taken. Evaluations are labelled with it, so the label
            of an evaluation depends only on the weights it scores (not on whether the run stopped there).
    """

    global_step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    bad_steps: int = 0
    pending_eval: bool = False
    step_epoch: int = 0

    def row(self, split: str, **fields: Any) -> Dict[str, Any]:
        """A ``metrics.jsonl`` row at this step and epoch."""
        return {"step": self.global_step, "epoch": self.epoch, "split": split, **fields}

    def eval_row(self, split: str, **fields: Any) -> Dict[str, Any]:
        """A validation row: labelled with the step and the epoch of the weights it scores."""
        return {**self.row(split, **fields), "epoch": self.step_epoch}

    def event(self, name: str, **fields: Any) -> Dict[str, Any]:
        """An ``event`` row at this step and epoch."""
        return self.row("event", event=name, **fields)

    def running(self, cfg: DictConfig) -> bool:
        """Training is not over: epochs and steps left (``train.epochs``, ``train.max_steps``)."""
        return self.epoch < cfg.train.epochs and not self.at_max_steps(cfg)

    def at_max_steps(self, cfg: DictConfig) -> bool:
        return self.global_step >= (cfg.train.max_steps or math.inf)

    def complete(self, cfg: DictConfig) -> bool:
        """Nothing left to do: no training and no abandoned evaluation."""
        return not self.running(cfg) and not self.pending_eval

    def client_state(self) -> Dict[str, Any]:
        return {"global_step": self.global_step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                "pending_eval": self.pending_eval, "step_epoch": self.step_epoch}

    @classmethod
    def from_client_state(cls, state: Mapping[str, Any]) -> TrainState:
        epoch, batch = int(state["epoch"]), int(state.get("batch_in_epoch", 0))
        older = max(epoch - 1, 0) if batch == 0 else epoch  # checkpoints written before step_epoch existed
        return cls(global_step=int(state["global_step"]), epoch=epoch, batch_in_epoch=batch,
                   pending_eval=bool(state.get("pending_eval", False)),
                   step_epoch=int(state.get("step_epoch", older)))


class Preemption:
    """SIGTERM/SIGUSR1 handling. The handler only records the signal on this rank; the ranks act on it when they
    agree through an all-reduce (:meth:`agree`, or the flag the train step reduces with its non-finite flag), so
    all of them stop at the same step, checkpoint and exit with the requeue code.

    A signal that came before this handler existed (while torch imported or the engine was built) was recorded by
    ``varnet_ds.exits.startup_signals``; it is adopted here and at :meth:`install`, so the trainer stops at its
    first agreement point as if the signal had come during training.

    Args:
        device: where this rank's collectives run.
    """

    SIGNALS = PREEMPT_SIGNALS

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seen: Optional[int] = early_signal()  # set asynchronously by the handler on this rank
        self.signal: Optional[int] = None  # set only from an all-reduce: every rank agrees

    def install(self) -> None:
        def handler(signum, _frame):
            self.seen = signum

        for sig in self.SIGNALS:
            signal.signal(sig, handler)
        if self.seen is None:  # one that reached the start-up recorder after __init__, before the line above
            self.seen = early_signal()

    @property
    def local_flag(self) -> float:
        """This rank's vote for an all-reduce with ``max``: the signal number or 0."""
        return float(self.seen or 0)

    def record(self, agreed: float) -> bool:
        """Take the all-reduced vote; returns whether the ranks stop."""
        if agreed:
            self.signal = int(agreed)
        return self.signal is not None

    def agree(self) -> bool:
        """All ranks: did any of them see a signal? (a collective)"""
        (agreed,) = all_reduce_flags([self.local_flag], self.device)
        return self.record(agreed)

    @property
    def stop(self) -> bool:
        return self.signal is not None

    @staticmethod
    def write_requeue_marker(path: Path) -> None:
        """``VARNET_DS_PREEMPT_MARKER`` (set by launch/slurm.sbatch): the checkpoint to requeue from."""
        marker = os.environ.get("VARNET_DS_PREEMPT_MARKER")
        if marker:
            Path(marker).write_text(f"{path}\n")

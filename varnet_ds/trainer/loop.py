"""The training loop: train steps under DeepSpeed, triggers for logging, checkpoints and evaluation, preemption.

One :class:`Trainer` per process, built by :func:`varnet_ds.trainer.build.build_trainer`. The loop keeps counters
(:class:`~varnet_ds.trainer.state.TrainState`) and calls components with values: the checkpoint protocol
(:mod:`varnet_ds.trainer.checkpoint`), the :class:`~varnet_ds.eval.validate.Validator`, the
:class:`~varnet_ds.eval.selection.ModelSelector` and the :class:`~varnet_ds.tracking.tracker.Tracker`. Rank 0 owns
``metrics.jsonl``, W&B and every file except the DeepSpeed shards, which each rank saves itself.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from omegaconf import DictConfig

from varnet_ds.config import to_dict
from varnet_ds.console import EvalConsole, TrainProgress
from varnet_ds.data.loader import TrainData
from varnet_ds.distributed import DistInfo, all_reduce_flags, barrier
from varnet_ds.eval.selection import ModelSelector, fp32_payload, volume_table_rows
from varnet_ds.eval.validate import EvalOutput, Validator
from varnet_ds.exits import EXIT_REQUEUE  # after a SIGTERM/SIGUSR1 checkpoint: "resume me"
from varnet_ds.files import atomic_path
from varnet_ds.model.step import train_loss
from varnet_ds.run_folder import FINAL_WEIGHTS, FINISHED, VOLUME_COLUMNS, output_files, write_finished
from varnet_ds.system import peak_memory_gib, reset_peak_memory
from varnet_ds.tracking.tracker import Tracker
from varnet_ds.trainer import checkpoint as ckpt
from varnet_ds.trainer.state import Preemption, TrainState


class Trainer:
    """Trains a VarNet under DeepSpeed and evaluates it on knee val and brain transfer data.

    Args:
        cfg: the resolved config. dist: this process's placement.
        engine, optimizer, scheduler, loss_fn: the DeepSpeed engine, its optimizer, the per-epoch StepLR and the
            SSIM loss. data: the training data. state: the counters (restored on resume).
        tracker, selector, validator: logging, model selection and evaluation components.
        complete: the run folder holds a finished run; :meth:`fit` returns at once.
    """

    def __init__(self, cfg: DictConfig, dist: DistInfo, *, engine: Any, optimizer: Any, scheduler: Any,
                 loss_fn: torch.nn.Module, data: TrainData, state: TrainState, tracker: Tracker,
                 selector: ModelSelector, validator: Validator, complete: bool) -> None:
        self.cfg, self.dist = cfg, dist
        self.engine, self.optimizer, self.scheduler, self.loss_fn = engine, optimizer, scheduler, loss_fn
        self.data, self.state, self.tracker = data, state, tracker
        self.selector, self.validator, self.complete = selector, validator, complete
        self.run_dir = Path(cfg.run.out_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.base_optimizer = getattr(optimizer, "optimizer", optimizer)
        self.preemption = Preemption(dist.device)
        self.eval_console = EvalConsole(dist.is_main)
        self._window: List[float] = []  # micro-batch losses of the current accumulation window (may span epochs)
        self._losses: List[float] = []  # step losses since the last train row
        self._t0, self._samples = time.perf_counter(), 0
        self._bar: Optional[TrainProgress] = None

    # ------------------------------------------------------------------ the loop
    def fit(self) -> int:
        """Run training to ``train.epochs`` / ``train.max_steps``. Returns the process exit code."""
        if self.complete:
            return self._already_complete()
        self.preemption.install()
        self.engine.train()
        reset_peak_memory(self.dist.device)
        self._bar = TrainProgress.for_run(self.cfg, self.dist, len(self.data.dataset), initial=self.state.global_step,
                                          grad_accum=self.engine.gradient_accumulation_steps())
        if self.state.complete(self.cfg):  # trained and evaluated, stopped before FINISHED: write the outputs only
            return self._finish(from_checkpoint=True)
        if self.state.pending_eval and self.evaluate() is None:  # the evaluation a preemption interrupted
            return self._preempt()
        while self.state.running(self.cfg):
            for batch in self.data.loader(self.state.epoch, skip=self.state.batch_in_epoch):
                loss, status = self._train_step(batch)
                self.state.batch_in_epoch += 1
                self._samples += len(batch.fname)
                if status != "ok":
                    self._on_bad_step(status, batch)
                    continue
                if not self._optimizer_stepped(loss):
                    continue  # inside a gradient-accumulation window
                if self._after_step():
                    return self._preempt()
                if self.state.at_max_steps(self.cfg):
                    break
            else:
                if self._end_epoch():
                    return self._preempt()
                continue
            break
        return self._finish()

    def _train_step(self, batch) -> Tuple[float, str]:
        """Forward, SSIM loss, backward, step.

        Returns:
            (loss, status): status ``ok``; ``nonfinite_loss`` (no backward on any rank: the flag is agreed by an
            all-reduce, together with the preemption vote); ``nonfinite_grad`` (the ZeRO optimizer found inf/NaN
            gradients and skipped the update).
        """
        loss = train_loss(self.engine, self.data.prepare(batch), self.loss_fn, self.dist.device)
        finite = bool(torch.isfinite(loss).item())
        any_bad, any_stop = all_reduce_flags([0.0 if finite else 1.0, self.preemption.local_flag], self.dist.device)
        self.preemption.record(any_stop)
        if any_bad:
            return math.nan, "nonfinite_loss"  # no rank ran backward: nothing to undo
        skipped_before = self.engine.skipped_steps
        self.engine.backward(loss)
        self.engine.step()
        if self.engine.skipped_steps > skipped_before:
            return float(loss.detach()), "nonfinite_grad"
        return float(loss.detach()), "ok"

    def _on_bad_step(self, status: str, batch) -> None:
        """Log the skipped batch; after ``train.max_bad_steps`` in a row, checkpoint and raise."""
        self.state.bad_steps += 1
        self.tracker.log(self.state.event(f"{status}_skipped", fname=list(batch.fname),
                                          slice=[int(s) for s in batch.slice_num]))
        if status == "nonfinite_grad":
            self.state.global_step = self.engine.global_steps  # the optimizer step was consumed, not applied
            self.state.step_epoch = self.state.epoch
            self._window = []
        if self.state.bad_steps >= self.cfg.train.max_bad_steps:
            self.save_checkpoint()
            raise FloatingPointError(
                f"{self.state.bad_steps} non-finite losses/gradients in a row at step {self.state.global_step}; "
                f"checkpoint kept in {self.ckpt_dir}. Check the data (python -m varnet_ds.data.check) or lower "
                "train.lr")

    def _optimizer_stepped(self, loss: float) -> bool:
        """Count a good micro-batch; True when it completed an optimizer step (the step's loss is recorded)."""
        self.state.bad_steps = 0
        self._window.append(loss)
        if self.engine.global_steps == self.state.global_step:
            return False
        self.state.global_step = self.engine.global_steps
        self.state.step_epoch = self.state.epoch
        step_loss = sum(self._window) / len(self._window)
        self._window = []
        self._losses.append(step_loss)
        self._bar.update(self.state.global_step, self.state.epoch, step_loss)
        return True

    def _after_step(self) -> bool:
        """Train row, step evaluation and checkpoint when due. Returns True when the ranks agreed to stop."""
        step, cfg = self.state.global_step, self.cfg
        if step % cfg.log.every_steps == 0:
            self._log_train()
        if self._due_and_unscored(self.validator.due_at_step(step)) and self.evaluate() is None:
            return True  # evaluated before the checkpoint that commits it
        if self.preemption.stop:
            return True
        if step % cfg.train.checkpoint_every_steps == 0:
            self.save_checkpoint()
        return False

    def _end_epoch(self) -> bool:
        """Scheduler step and epoch evaluation. Returns True when the ranks agreed to stop."""
        self.state.epoch += 1
        self.state.batch_in_epoch = 0
        self.scheduler.step()
        if self._due_and_unscored(self.validator.due_after_epoch(self.state.epoch)) and self.evaluate() is None:
            return True
        return self.preemption.agree()

    def _log_train(self) -> None:
        mean_loss = sum(self._losses) / len(self._losses)
        total = all_reduce_flags([mean_loss, 1.0], self.dist.device, op="sum")
        elapsed = max(time.perf_counter() - self._t0, 1e-9)
        self.tracker.log(self.state.row(
            "train", loss=total[0] / total[1], lr=self.base_optimizer.param_groups[0]["lr"], aug_p=self.data.aug_p,
            samples_per_s=self._samples * self.dist.world_size / elapsed,
            peak_mem_gib=peak_memory_gib(self.dist.device)))
        self._losses, self._t0, self._samples = [], time.perf_counter(), 0

    # ------------------------------------------------------------------ checkpoints and stopping
    def save_checkpoint(self) -> str:
        """Every rank calls this; returns the tag."""
        self.tracker.flush()
        state = self.state
        client_state = {
            **state.client_state(),  # batch_in_epoch is this process's loader's; samples_in_epoch is global
            "samples_in_epoch": self.data.samples_done(state.epoch, state.batch_in_epoch),
            "global_batch": self.engine.train_batch_size(),  # kept on another world size (trainer.elastic)
            "scheduler": self.scheduler.state_dict(),
            "wandb_id": self.tracker.wandb_id,
            "metrics_rows": self.tracker.num_rows,  # rank 0's count; exact rollback on resume
            "selected": self.selector.state_dict(),  # commits the best candidate (eval.selection)
            "last_eval": self.validator.state_dict(),  # commits the last evaluation: never scored twice
            "config": to_dict(self.cfg),
        }
        tag = ckpt.save(self.engine, self.ckpt_dir, state.global_step, client_state, self.dist,
                        keep=self.cfg.train.keep_checkpoints)
        self.selector.prune()
        return tag

    def _preempt(self) -> int:
        """The ranks agreed to stop: checkpoint (with any abandoned evaluation pending), exit to be requeued."""
        self._bar.close()
        tag = self.save_checkpoint()
        signum = int(self.preemption.signal or 0)
        self.tracker.log(self.state.event("preempted", signal=signum, tag=tag,
                                          pending_eval=self.state.pending_eval))
        self.tracker.finish()
        if self.dist.is_main:
            Preemption.write_requeue_marker(self.ckpt_dir / tag)
            print(f"[varnet_ds] signal {signum}: checkpoint {tag} saved; rerun the same command to resume (exit "
                  f"code {EXIT_REQUEUE} = requeue)", flush=True)
        return EXIT_REQUEUE

    def _already_complete(self) -> int:
        if self.dist.is_main:
            print(f"[varnet_ds] {self.run_dir} is already complete (step {self.state.global_step}, epoch "
                  f"{self.state.epoch}); raise train.epochs or train.max_steps to continue it", flush=True)
        self.tracker.finish()
        return 0

    # ------------------------------------------------------------------ evaluation
    def evaluate(self) -> Optional[Dict[str, EvalOutput]]:
        """Evaluate every split and log rows, panels and the selection (all ranks call it).

        Returns None when a preemption signal abandoned the evaluation (the ranks agree before every batch);
        ``state.pending_eval`` then tells the resumed run to do it first.
        """
        state = self.state
        epoch = state.step_epoch  # the label of the weights scored, the same whether or not the run stops here
        outputs = self.validator.run(self.engine.module, state.global_step, stop=self.preemption.agree,
                                     on_split=self.eval_console.start)
        state.pending_eval = outputs is None
        if outputs is None:
            return None
        for name, out in outputs.items():
            for row in out.rows:
                self.tracker.log(state.eval_row(name, **row))
            if out.panels is not None and self.cfg.eval.image_panels:
                self.tracker.log_images(state.global_step, epoch, name, out.panels)
            self.eval_console.result(state.global_step, epoch, name, out.rows)
        if self.selector.update(state.global_step, epoch, outputs, self.engine.module, to_dict(self.cfg)):
            best = self.selector.best
            self.tracker.log(state.eval_row("event", event="best", criterion=best["criterion"], value=best["value"]))
        barrier()
        reset_peak_memory(self.dist.device)  # train rows report the training peak, not evaluation's
        return outputs

    def _due_and_unscored(self, due: bool) -> bool:
        """An evaluation is due and these weights were not scored yet (a resume never scores them twice)."""
        return due and not self.validator.evaluated_at(self.state.global_step)

    def _finish(self, from_checkpoint: bool = False) -> int:
        """Final evaluation (unless these weights were scored), the checkpoint committing it, then the outputs.

        ``from_checkpoint``: a rerun of a run whose last checkpoint already holds the end of training (it was
        stopped while writing its outputs); that checkpoint is not written again.
        """
        self._bar.close()
        scored = self.validator.evaluated_at(self.state.global_step)
        final = self.validator.last if scored else self.evaluate()
        if final is None:
            return self._preempt()
        if not (from_checkpoint and scored):
            self.save_checkpoint()
        return self._publish(final, from_checkpoint)

    def _publish(self, final: Dict[str, EvalOutput], from_checkpoint: bool) -> int:
        """fp32 export, selection, per-volume tables, ``end`` event, W&B models, then ``FINISHED`` (written last).

        Every step rewrites its file whole from committed state (the checkpoint, the selected candidate), so a run
        killed anywhere in here is completed by rerunning the same command.
        """
        state = self.state
        if self.dist.is_main:
            if from_checkpoint:
                print(f"[varnet_ds] {self.run_dir}: training and evaluation are complete (step "
                      f"{state.global_step}); writing its outputs and {FINISHED} (a stop came before them, or the run "
                      "finished for another length)", flush=True)
            with atomic_path(self.run_dir / FINAL_WEIGHTS) as tmp:
                torch.save(fp32_payload(self.engine.module, state.global_step, state.step_epoch, to_dict(self.cfg)),
                           tmp)
            selected = self.selector.finalize()
            for name, out in final.items():
                self.tracker.log_table(f"{name}_per_volume", VOLUME_COLUMNS, volume_table_rows(out.volumes))
            self.tracker.log(state.event("end", selected_step=selected["step"] if selected else None,
                                         selected_epoch=selected["epoch"] if selected else None))
            self._log_models(final, selected)
        self.tracker.finish()
        barrier()
        if self.dist.is_main:
            write_finished(self.run_dir, step=state.global_step, epoch=state.step_epoch,
                           epochs=self.cfg.train.epochs, max_steps=self.cfg.train.max_steps,
                           files=output_files(self.run_dir))
        return 0

    def _log_models(self, final: Dict[str, EvalOutput], selected: Optional[Dict]) -> None:
        """W&B: the selected and final fp32 weights as versions of one model artifact, and their metrics."""
        summary = {f"final/{split}/{m}": out.rows[0][m] for split, out in final.items() if out.rows
                   for m in ("ssim", "psnr", "nmse")}
        if selected:
            summary.update({f"selected/{split}/{m}": v for split, ms in selected["metrics"].items()
                            for m, v in ms.items()})
        meta = {"config": to_dict(self.cfg), "metrics": summary, "selected": selected}
        if selected:
            self.tracker.log_model(self.run_dir / "model_selected.pt", aliases=["selected"], metadata=meta)
        self.tracker.log_model(self.run_dir / "model_fp32.pt", aliases=["final"], metadata=meta)
        self.tracker.log_summary(summary)

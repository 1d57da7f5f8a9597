"""The training engine: DeepSpeed ZeRO set-up, the train step, periodic evaluation, checkpoint/resume, signals.

One :class:`Trainer` per process. Rank 0 owns ``metrics.jsonl``, W&B and every file except the DeepSpeed
shards, which each rank saves itself.
"""

from __future__ import annotations

import math
import os
import signal
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
from omegaconf import DictConfig, OmegaConf

from varnet_ds import checkpoint as ckpt
from varnet_ds import elastic
from varnet_ds.config import check_rerun_config, save_config, to_dict
from varnet_ds.console import EvalConsole, TrainProgress
from varnet_ds.data.loader import build_train_loader
from varnet_ds.data.preflight import check_data
from varnet_ds.distributed import DistInfo, all_reduce_flags, barrier, load_ds_config
from varnet_ds.eval.selection import VOLUME_COLUMNS, ModelSelector, fp32_payload, volume_table_rows
from varnet_ds.eval.validate import EvalOutput, EvalSplit, evaluate_split
from varnet_ds.exits import EXIT_REQUEUE  # after a SIGTERM/SIGUSR1 checkpoint: "resume me"
from varnet_ds.files import atomic_path
from varnet_ds.model.step import ssim_loss, train_loss
from varnet_ds.model.varnet import build_model
from varnet_ds.model.weights import load_init_weights
from varnet_ds.profiling.memory_plan import apply_memory_plan
from varnet_ds.seeding import reseed_after_world_size_change, seed_process
from varnet_ds.system import peak_memory_gib, reset_peak_memory, versions
from varnet_ds.tracking.tracker import Tracker


class Trainer:
    """Trains a VarNet under DeepSpeed and evaluates it on knee val and brain transfer data.

    Args:
        cfg: the resolved config (``varnet_ds.config.load_config``).
        ds_config_path: DeepSpeed JSON (``ds_configs/zero2.json``).
        dist: process placement from ``varnet_ds.distributed.init_distributed``.
    """

    def __init__(self, cfg: DictConfig, ds_config_path: str, dist: DistInfo) -> None:
        import deepspeed

        self.cfg, self.dist = cfg, dist
        self.run_dir = Path(cfg.run.out_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        ds_cfg = load_ds_config(ds_config_path, cfg.data.batch_size, cfg.train.grad_accum)
        seed_process(cfg.run.seed, dist.rank, cfg.train.deterministic)
        self.config_changes = check_rerun_config(cfg, self.run_dir / "config.yaml")  # every rank: all refuse
        if dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self.bad_files = check_data(cfg, dist, self.run_dir / "data_check_cache.json")
        self.plan_row = apply_memory_plan(cfg, dist, ds_config_path) if cfg.train.memory_budget_gib else None
        model = build_model(cfg.model, cfg.train.precision)
        if cfg.train.init_weights:
            load_init_weights(model, cfg.train.init_weights)
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
        # Before the engine exists: another world size needs load_universal and a grad_accum keeping the global batch.
        self.resume_plan = elastic.plan_resume(cfg, self.ckpt_dir, dist, ds_cfg)
        self.engine, self.optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_cfg)
        # Per-epoch StepLR as fastMRI; stepped by us, saved in client_state.
        self.base_optimizer = getattr(self.optimizer, "optimizer", self.optimizer)  # torch Adam inside ZeRO
        self.scheduler = torch.optim.lr_scheduler.StepLR(
            self.base_optimizer, step_size=cfg.train.lr_step_size, gamma=cfg.train.lr_gamma
        )
        self.loss_fn = ssim_loss(dist.device)
        self.train = build_train_loader(cfg, dist, self.bad_files)
        self.global_step, self.epoch, self.batch_in_epoch = 0, 0, 0
        self.bad_steps = 0
        self._eval_datasets: Dict = {}  # indexed eval datasets, reused by every evaluation
        self._signal_seen: Optional[int] = None  # set asynchronously by the handler on this rank
        self._stop_signal: Optional[int] = None  # set only from an all-reduce: every rank agrees
        self.selector = ModelSelector(self.run_dir, dist.is_main)
        self.eval_console = EvalConsole(dist.is_main)
        resume_state = self._maybe_resume()
        wandb_id = resume_state.get("wandb_id") if resume_state else None
        self._resumed = bool(resume_state)
        max_steps = cfg.train.max_steps or math.inf
        self._complete = bool(resume_state) and not (self.epoch < cfg.train.epochs and self.global_step < max_steps)
        if not self._complete:  # saved once, after the memory plan; a finished run's config.yaml is never rewritten
            self.selector.restore(resume_state.get("selected") if resume_state else None)
            if dist.is_main:
                save_config(cfg, self.run_dir / "config.yaml")
        tracker_cfg = cfg
        if self._complete:  # nothing will be logged: do not open (and so duplicate) a W&B run
            tracker_cfg = OmegaConf.merge(cfg, {"log": {"wandb": {"mode": "disabled"}}})
        self.tracker = Tracker(tracker_cfg, self.run_dir, dist.rank, resume_id=wandb_id)
        if self._complete:
            pass  # a finished run is left exactly as it is (fit() returns at once)
        elif resume_state:
            self._rolled_back = self.tracker.truncate_rows(
                int(resume_state.get("metrics_rows", self.tracker.num_rows)))
            if self.resume_plan.changed:
                self.tracker.log(self.resume_plan.event_row(self.global_step, self.epoch,
                                                            self.train.samples_done(self.epoch, self.batch_in_epoch)))
        else:
            self._drop_stale_metrics()
            self.tracker.log({"step": 0, "epoch": 0, "split": "event", "event": "start", "world_size": dist.world_size,
                              "parameters": sum(p.numel() for p in model.parameters()), **versions()})
        if self.config_changes and not self._complete:
            self.tracker.log({"step": self.global_step, "epoch": self.epoch, "split": "event",
                              "event": "config_changed", "keys": {k: [str(a), str(b)] for k, (a, b) in
                                                                   self.config_changes.items()}})
        if self.plan_row and not self._complete:
            self.tracker.log({"step": self.global_step, "epoch": self.epoch, "split": "event", **self.plan_row})
        if self.bad_files and not self._complete:
            self.tracker.log({"step": self.global_step, "epoch": self.epoch, "split": "event",
                              "event": "skipped_bad_files", "count": len(self.bad_files),
                              "files": [f"{p}: {why}" for p, why in self.bad_files]})

    # ------------------------------------------------------------------ resume
    def _maybe_resume(self) -> Optional[Dict]:
        plan = self.resume_plan  # found and, for another world size, converted before the engine was built
        if plan is None:
            return None
        state = ckpt.load(self.engine, self.ckpt_dir, plan.tag, self.dist, universal=plan.universal)
        self.global_step = int(state["global_step"])
        self.epoch = int(state["epoch"])
        done = elastic.samples_in_epoch(state, plan, self.cfg.data.batch_size)  # global: any world size
        self.batch_in_epoch = elastic.restore_position(self.train, self.epoch, done)
        self.scheduler.load_state_dict(state["scheduler"])
        if plan.changed:  # per-rank RNG streams cannot carry over to other ranks
            reseed_after_world_size_change(self.cfg.run.seed, self.global_step, self.dist.rank)
        if self.dist.is_main:
            print(f"[varnet_ds] resumed from {self.ckpt_dir / plan.load_tag} (step {self.global_step}, epoch "
                  f"{self.epoch}, {done} samples of the epoch done)", flush=True)
        return state

    def _client_state(self) -> Dict:
        return {
            "global_step": self.global_step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,  # of this process's loader; samples_in_epoch is the position
            "samples_in_epoch": self.train.samples_done(self.epoch, self.batch_in_epoch),  # global: any world size
            "global_batch": self.engine.train_batch_size(),  # kept on another world size (varnet_ds.elastic)
            "scheduler": self.scheduler.state_dict(),
            "wandb_id": self.tracker.wandb_id,
            "metrics_rows": self.tracker.num_rows,  # rank 0's count; exact rollback on resume
            "selected": self.selector.state_dict(),  # commits the best candidate (varnet_ds.eval.selection)
            "config": to_dict(self.cfg),
        }

    def _drop_stale_metrics(self) -> None:
        """A fresh start in a folder whose earlier run died before its first checkpoint: set its rows aside."""
        backup = self.tracker.set_aside_rows()
        if backup is not None:
            print(f"[varnet_ds] no checkpoint to resume from; earlier rows moved to {backup}", flush=True)

    def save_checkpoint(self) -> str:
        """Every rank calls this; returns the tag."""
        self.tracker.flush()
        tag = ckpt.save(self.engine, self.ckpt_dir, self.global_step, self._client_state(), self.dist,
                        keep=self.cfg.train.keep_checkpoints)
        self.selector.prune()
        return tag

    # ------------------------------------------------------------------ signals
    def _install_signals(self) -> None:
        def handler(signum, _frame):
            self._signal_seen = signum

        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, handler)

    # ------------------------------------------------------------------ train
    def _train_step(self, batch) -> Tuple[float, str]:
        """Forward, SSIM loss, backward, step.

        Returns:
            (loss, status): status ``ok``; ``nonfinite_loss`` (no backward on any rank: the flag is agreed by an
            all-reduce); ``nonfinite_grad`` (the ZeRO optimizer found inf/NaN gradients and skipped the update).
        """
        batch = self.train.prepare(batch)
        loss = train_loss(self.engine, batch, self.loss_fn, self.dist.device)
        finite = bool(torch.isfinite(loss).item())
        seen = float(self._signal_seen or 0)
        any_bad, any_stop = all_reduce_flags([0.0 if finite else 1.0, seen], self.dist.device)
        if any_stop:
            self._stop_signal = int(any_stop)
        if any_bad:
            return math.nan, "nonfinite_loss"  # no rank ran backward: nothing to undo
        skipped_before = self.engine.skipped_steps
        self.engine.backward(loss)
        self.engine.step()
        if self.engine.skipped_steps > skipped_before:
            return float(loss.detach()), "nonfinite_grad"
        return float(loss.detach()), "ok"

    def _log_train(self, losses: List[float], t0: float, samples: int) -> None:
        mean_loss = sum(losses) / len(losses)
        total = all_reduce_flags([mean_loss, 1.0], self.dist.device, op="sum")
        elapsed = max(time.perf_counter() - t0, 1e-9)
        self.tracker.log({
            "step": self.global_step,
            "epoch": self.epoch,
            "split": "train",
            "loss": total[0] / total[1],
            "lr": self.base_optimizer.param_groups[0]["lr"],
            "aug_p": self.train.aug_p,
            "samples_per_s": samples * self.dist.world_size / elapsed,
            "peak_mem_gib": peak_memory_gib(self.dist.device),
        })

    def fit(self) -> int:
        """Run training to ``train.epochs`` / ``train.max_steps``. Returns the process exit code."""
        cfg = self.cfg
        self._install_signals()
        max_steps = cfg.train.max_steps or math.inf
        if self._resumed:
            if self._complete:
                if self.dist.is_main:
                    print(f"[varnet_ds] {self.run_dir} is already complete (step {self.global_step}, epoch "
                          f"{self.epoch}); raise train.epochs or train.max_steps to continue it", flush=True)
                self.tracker.finish()
                return 0
            self.tracker.log({"step": self.global_step, "epoch": self.epoch, "split": "event", "event": "resume",
                              "rows_rolled_back": self._rolled_back, "tag": ckpt.tag_for(self.global_step)})
        self.engine.train()
        reset_peak_memory(self.dist.device)
        window: List[float] = []  # micro-batch losses of the current accumulation window (may span epochs)
        bar = TrainProgress.for_run(cfg, self.dist, len(self.train.dataset), initial=self.global_step)
        while self.epoch < cfg.train.epochs and self.global_step < max_steps:
            loader = self.train.loader(self.epoch, skip=self.batch_in_epoch)
            losses: List[float] = []
            t0, samples = time.perf_counter(), 0
            for batch in loader:
                loss, status = self._train_step(batch)
                self.batch_in_epoch += 1
                samples += len(batch.fname)
                if status != "ok":
                    self.bad_steps += 1
                    self.tracker.log({"step": self.global_step, "epoch": self.epoch, "split": "event",
                                      "event": f"{status}_skipped", "fname": list(batch.fname),
                                      "slice": [int(s) for s in batch.slice_num]})
                    if status == "nonfinite_grad":
                        self.global_step = self.engine.global_steps  # the optimizer step was consumed, not applied
                        window = []
                    if self.bad_steps >= cfg.train.max_bad_steps:
                        self.save_checkpoint()
                        raise FloatingPointError(
                            f"{self.bad_steps} non-finite losses/gradients in a row at step {self.global_step}; "
                            f"checkpoint kept in {self.ckpt_dir}. Check the data (python -m varnet_ds.data.check) "
                            "or lower train.lr")
                    continue
                self.bad_steps = 0
                window.append(loss)
                if self.engine.global_steps == self.global_step:
                    continue  # inside a gradient-accumulation window
                self.global_step = self.engine.global_steps
                loss = sum(window) / len(window)
                losses.append(loss)
                window = []
                bar.update(self.global_step, self.epoch, loss)
                if self.global_step % cfg.log.every_steps == 0:
                    self._log_train(losses, t0, samples)
                    losses, t0, samples = [], time.perf_counter(), 0
                if cfg.eval.every_steps and self.global_step % cfg.eval.every_steps == 0:
                    self.evaluate()  # before the checkpoint of the same step, which commits its selection
                if self._stop_signal is not None:
                    return self._preempt(bar)
                if self.global_step % cfg.train.checkpoint_every_steps == 0:
                    self.save_checkpoint()
                if self.global_step >= max_steps:
                    break
            else:
                self.epoch += 1
                self.batch_in_epoch = 0
                self.scheduler.step()
                if self.epoch % cfg.eval.every_epochs == 0 or self.epoch == cfg.train.epochs:
                    self.evaluate()
                self._agree_stop()
                if self._stop_signal is not None:
                    return self._preempt(bar)
                continue
            break
        bar.close()
        final = self.evaluate(final=True) if not self._evaluated_now() else self._last_eval
        self.save_checkpoint()
        self._finish(final)
        return 0

    def _agree_stop(self) -> None:
        """Outside the train step: all ranks agree whether any of them saw a preemption signal."""
        (seen,) = all_reduce_flags([float(self._signal_seen or 0)], self.dist.device)
        if seen:
            self._stop_signal = int(seen)

    def _preempt(self, bar) -> int:
        bar.close()
        tag = self.save_checkpoint()
        self.tracker.log({"step": self.global_step, "epoch": self.epoch, "split": "event", "event": "preempted",
                          "signal": int(self._stop_signal), "tag": tag})
        self.tracker.finish()
        marker = os.environ.get("VARNET_DS_PREEMPT_MARKER")  # set by launch/slurm.sbatch: "requeue this job"
        if self.dist.is_main and marker:
            Path(marker).write_text(f"{self.ckpt_dir / tag}\n")
        if self.dist.is_main:
            print(f"[varnet_ds] signal {int(self._stop_signal)}: checkpoint {tag} saved; rerun the same command "
                  f"to resume (exit code {EXIT_REQUEUE} = requeue)", flush=True)
        return EXIT_REQUEUE

    # ------------------------------------------------------------------ eval
    _last_eval: Dict[str, EvalOutput] = {}
    _last_eval_step: int = -1

    def _evaluated_now(self) -> bool:
        return self._last_eval_step == self.global_step and bool(self._last_eval)

    def eval_splits(self) -> List[EvalSplit]:
        cfg = self.cfg
        pairs = list(zip(cfg.eval.center_fractions, cfg.eval.accelerations))
        skip = [str(p) for p, _ in self.bad_files]
        splits = []
        if cfg.data.val_path:
            splits.append(EvalSplit("val_knee", cfg.data.val_path, cfg.eval.knee_mask_type, pairs,
                                    cfg.data.max_val_volumes, skip))
        if cfg.data.transfer_path:
            splits.append(EvalSplit("val_brain", cfg.data.transfer_path, cfg.eval.brain_mask_type, pairs,
                                    cfg.data.max_val_volumes, skip))
        return splits

    def evaluate(self, final: bool = False) -> Dict[str, EvalOutput]:
        """Evaluate every split, log rows and panels (rank 0). All ranks call it."""
        outputs: Dict[str, EvalOutput] = {}
        console = self.eval_console  # rank 0 prints; keeps the best SSIM per split
        for split in console.started(self.eval_splits()):
            out = evaluate_split(self.engine.module, split, self.dist, self.cfg.data.num_workers, self.cfg.run.seed,
                                 cache=self._eval_datasets)
            outputs[split.name] = out
            for row in out.rows:
                self.tracker.log({"step": self.global_step, "epoch": self.epoch, "split": split.name, **row})
            if out.panels is not None and self.cfg.eval.image_panels:
                self.tracker.log_images(self.global_step, self.epoch, split.name, out.panels)
            console.result(self.global_step, self.epoch, split.name, out.rows)
        self._last_eval, self._last_eval_step = outputs, self.global_step
        if self.selector.update(self.global_step, self.epoch, outputs, self.engine.module, to_dict(self.cfg)):
            best = self.selector.best
            self.tracker.log({"step": self.global_step, "epoch": self.epoch, "split": "event", "event": "best",
                              "criterion": best["criterion"], "value": best["value"]})
        barrier()
        reset_peak_memory(self.dist.device)  # train rows report the training peak, not evaluation's
        return outputs

    def _finish(self, final: Dict[str, EvalOutput]) -> None:
        if self.dist.is_main:
            with atomic_path(self.run_dir / "model_fp32.pt") as tmp:
                torch.save(fp32_payload(self.engine.module, self.global_step, self.epoch, to_dict(self.cfg)), tmp)
            selected = self.selector.finalize()
            for name, out in final.items():
                self.tracker.log_table(f"{name}_per_volume", VOLUME_COLUMNS, volume_table_rows(out.volumes))
            self.tracker.log({"step": self.global_step, "epoch": self.epoch, "split": "event", "event": "end",
                              "selected_step": selected["step"] if selected else None,
                              "selected_epoch": selected["epoch"] if selected else None})
            self._log_models(final, selected)
        self.tracker.finish()
        barrier()

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

"""Ordered construction of a training run (torchtitan/litgpt style): every component built once, in one place.

Order (after ``train.py`` took the run-folder lock): DeepSpeed JSON → process seeds → rerun check → run folder →
start-up data check → memory plan (RNG forked, config mutated) → config saved once (a stale FINISHED removed) →
model + init weights → Adam → resume plan (other world size: universal checkpoint) → DeepSpeed engine → StepLR →
SSIM loss → training data → restore from the checkpoint (with its last evaluation) → tracker (W&B off for a
finished run) with the metrics rollback → start/plan/bad-file events → validator → :class:`Trainer`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch
from omegaconf import DictConfig

from varnet_ds.config import check_rerun_config, save_config
from varnet_ds.data.loader import TrainData, build_train_loader
from varnet_ds.data.preflight import check_data
from varnet_ds.distributed import DistInfo, load_ds_config
from varnet_ds.eval.selection import ModelSelector
from varnet_ds.eval.validate import Validator
from varnet_ds.model.step import ssim_loss
from varnet_ds.model.varnet import build_model, count_parameters
from varnet_ds.model.weights import load_init_weights
from varnet_ds.profiling.memory_plan import apply_memory_plan
from varnet_ds.provenance import DATA_FOLDERS, run_provenance
from varnet_ds.run_folder import clear_finished, is_finished, read_finished
from varnet_ds.seeding import reseed_after_world_size_change, seed_process
from varnet_ds.system import device_name
from varnet_ds.tracking.tracker import Tracker
from varnet_ds.trainer import checkpoint as ckpt
from varnet_ds.trainer import elastic
from varnet_ds.trainer.loop import Trainer
from varnet_ds.trainer.state import TrainState


def build_trainer(cfg: DictConfig, ds_config_path: str, dist: DistInfo) -> Trainer:
    """Build everything a run needs and return its :class:`Trainer` (call ``fit()``).

    Args:
        cfg: the resolved config (``varnet_ds.config.load_config``); the memory plan may change model/precision keys.
        ds_config_path: DeepSpeed JSON (``ds_configs/zero2.json``).
        dist: process placement from ``varnet_ds.distributed.init_distributed``.
    """
    import deepspeed

    run_dir = Path(cfg.run.out_dir)
    ckpt_dir = run_dir / "checkpoints"
    ds_cfg = load_ds_config(ds_config_path, cfg.data.batch_size, cfg.train.grad_accum)
    seed_process(cfg.run.seed, dist.rank, cfg.train.deterministic)
    config_changes = check_rerun_config(cfg, run_dir / "config.yaml")  # every rank: all refuse together
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    bad_files = check_data(cfg, dist, run_dir / "data_check_cache.json")
    plan_row = apply_memory_plan(cfg, dist, ds_config_path) if cfg.train.memory_budget_gib else None
    model = build_model(cfg.model, cfg.train.precision)
    if cfg.train.init_weights:
        load_init_weights(model, cfg.train.init_weights)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    # Before the engine exists: another world size needs load_universal and a grad_accum keeping the global batch.
    resume_plan = elastic.plan_resume(cfg, ckpt_dir, dist, ds_cfg)
    engine, ds_optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_cfg)
    base_optimizer = getattr(ds_optimizer, "optimizer", ds_optimizer)  # torch Adam inside ZeRO
    # Per-epoch StepLR as fastMRI; stepped by the loop, saved in client_state.
    scheduler = torch.optim.lr_scheduler.StepLR(base_optimizer, step_size=cfg.train.lr_step_size,
                                                gamma=cfg.train.lr_gamma)
    data = build_train_loader(cfg, dist, bad_files)
    state, saved = TrainState(), None
    if resume_plan is not None:
        state, saved = _restore(engine, scheduler, data, cfg, ckpt_dir, resume_plan, dist)
    complete = saved is not None and state.complete(cfg) and _finished_at(run_dir, state.global_step, cfg)
    selector = ModelSelector(run_dir, dist.is_main)
    validator = Validator(cfg, dist, [str(p) for p, _ in bad_files])
    if not complete:  # saved once, after the memory plan; a finished run's config.yaml is never rewritten
        selector.restore(saved.get("selected") if saved else None)
        validator.restore(saved.get("last_eval") if saved else None)
        if dist.is_main:
            clear_finished(run_dir)  # an extended (or re-completed) run is not finished until it writes it again
            save_config(cfg, run_dir / "config.yaml")
    # A finished run logs nothing: do not open (and so duplicate) its W&B run.
    tracker = Tracker(cfg, run_dir, dist.rank, resume_id=saved.get("wandb_id") if saved else None,
                      wandb=not complete)
    if not complete:
        offload = engine.zero_offload_optimizer()  # None, or its config with device none | cpu | nvme
        device = "none" if offload is None else str(getattr(offload.device, "value", offload.device))
        zero = {"ds_config": str(Path(ds_config_path).resolve()), "zero_stage": engine.zero_optimization_stage(),
                "offload_optimizer": device}
        _log_start(tracker, state, saved, resume_plan, data, dist, dict(parameters=count_parameters(model), **zero),
                   config_changes, plan_row, bad_files, {k: cfg.data.get(k) for k in DATA_FOLDERS})
    return Trainer(cfg, dist, engine=engine, optimizer=ds_optimizer, scheduler=scheduler,
                   loss_fn=ssim_loss(dist.device), data=data, state=state, tracker=tracker, selector=selector,
                   validator=validator, complete=complete)


def _finished_at(run_dir: Path, step: int, cfg: DictConfig) -> bool:
    """``FINISHED`` is there for this length (the study runner's test, ``run_folder.is_finished``) and belongs to the
    training that ended at ``step``. A complete training whose marker names another length (e.g. ``max_steps``
    raised on a run that ended by epochs) is not: its outputs and marker are written again for the new length."""
    if not is_finished(run_dir, cfg.train.epochs, cfg.train.max_steps):
        return False
    return read_finished(run_dir)["step"] == step


def _restore(engine: Any, scheduler: Any, data: TrainData, cfg: DictConfig, ckpt_dir: Path,
             plan: elastic.ResumePlan, dist: DistInfo) -> Tuple[TrainState, Dict[str, Any]]:
    """Load the planned checkpoint into the engine and scheduler; position the data in the interrupted epoch."""
    saved = ckpt.load(engine, ckpt_dir, plan.tag, dist, universal=plan.universal)
    state = TrainState.from_client_state(saved)
    done = elastic.samples_in_epoch(saved, plan, cfg.data.batch_size)  # global: any world size
    state.batch_in_epoch = elastic.restore_position(data, state.epoch, done)
    scheduler.load_state_dict(saved["scheduler"])
    if plan.changed:  # per-rank RNG streams cannot carry over to other ranks
        reseed_after_world_size_change(cfg.run.seed, state.global_step, dist.rank)
    if dist.is_main:
        print(f"[varnet_ds] resumed from {ckpt_dir / plan.load_tag} (step {state.global_step}, epoch "
              f"{state.epoch}, {done} samples of the epoch done)", flush=True)
    return state, saved


def _log_start(tracker: Tracker, state: TrainState, saved: Optional[Dict[str, Any]],
               plan: Optional[elastic.ResumePlan], data: TrainData, dist: DistInfo, setup: Dict[str, Any],
               config_changes: Dict[str, Tuple[Any, Any]], plan_row: Optional[Dict[str, Any]], bad_files,
               data_paths: Dict[str, Optional[str]]) -> None:
    """Rollback (resume) or stale rows set aside (fresh start), then the start-up events.

    ``setup`` (parameter count, DeepSpeed JSON, ZeRO stage, optimizer offload) goes into the ``start`` event; the
    ``provenance`` block (code, environment, ranks/threads, identity of each of ``data_paths``' folders:
    :mod:`varnet_ds.provenance`) into the ``start`` and ``resume`` events. Only rank 0 writes events, so only it
    lists the data folders.
    """
    prov = run_provenance(data_paths, dist.world_size, dist.device) if dist.is_main else {}
    if saved is None:
        backup = tracker.set_aside_rows()  # an earlier run here died before its first checkpoint
        if backup is not None:
            print(f"[varnet_ds] no checkpoint to resume from; earlier rows moved to {backup}", flush=True)
        tracker.log(state.event("start", world_size=dist.world_size, **setup, device=device_name(),
                                date=time.strftime("%Y-%m-%d"), provenance=prov))
    else:
        rolled_back = tracker.truncate_rows(int(saved.get("metrics_rows", tracker.num_rows)))
        if plan is not None and plan.changed:
            tracker.log(plan.event_row(state.global_step, state.epoch,
                                       data.samples_done(state.epoch, state.batch_in_epoch)))
    if config_changes:
        tracker.log(state.event("config_changed", keys={k: [str(a), str(b)] for k, (a, b) in config_changes.items()}))
    if plan_row:
        tracker.log(state.row("event", **plan_row))
    if bad_files:
        tracker.log(state.event("skipped_bad_files", count=len(bad_files),
                                files=[f"{p}: {why}" for p, why in bad_files]))
    if saved is not None:
        tracker.log(state.event("resume", rows_rolled_back=rolled_back, tag=ckpt.tag_for(state.global_step),
                                provenance=prov))

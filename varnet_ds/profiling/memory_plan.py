"""``train.memory_budget_gib`` at the start of a run: profile on rank 0, pick the fastest fitting policy, apply it.

Every rank calls :func:`apply_memory_plan` before the model is built; rank 0 profiles
(``varnet_ds.profiling.planner.plan``) with its RNG state saved and restored, so the initial weights do not depend on
the plan, and the choice (or the failure) is broadcast so all ranks apply the same policy (or raise the same error).
"""

from __future__ import annotations

from typing import Any, Dict

from omegaconf import DictConfig

from varnet_ds.distributed import DistInfo, broadcast_object
from varnet_ds.seeding import fork_rng


def apply_memory_plan(cfg: DictConfig, dist: DistInfo, ds_config_path: str) -> Dict[str, Any]:
    """Set ``model.checkpointing``, ``train.precision`` and ``model.sens_chunk`` in ``cfg`` from the planner.

    Returns:
        The ``event: memory_plan`` row (budget, chosen policy, measured peak and step time).

    Raises:
        PlannerError: on every rank, when no policy fits or the device cannot be profiled.
    """
    from varnet_ds.profiling.planner import plan

    choice: object = None
    if dist.is_main:
        folders = [p for p in (cfg.data.train_path, cfg.data.val_path, cfg.data.transfer_path) if p]
        try:
            with fork_rng():  # profiling must not change the initial weights
                choice = plan(cfg.model, folders, cfg.train.memory_budget_gib, dist.device,
                              batch_size=cfg.data.batch_size, ds_config=ds_config_path, world_size=dist.world_size)
        except Exception as err:  # every rank must learn about the failure
            choice = err
    choice = broadcast_object(choice)
    if isinstance(choice, Exception):
        raise choice
    cfg.model.checkpointing = choice.policy.checkpointing
    cfg.train.precision = choice.policy.precision
    cfg.model.sens_chunk = choice.policy.sens_chunk
    return {"event": "memory_plan", "budget_gib": cfg.train.memory_budget_gib,
            "checkpointing": choice.policy.checkpointing, "precision": choice.policy.precision,
            "sens_chunk": choice.policy.sens_chunk,
            "measured_peak_gib": choice.profile.peak_gib, "step_s": choice.profile.step_s}

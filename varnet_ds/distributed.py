"""Process-group set-up for the DeepSpeed launcher, torchrun, srun and a plain single process; collectives;
DeepSpeed JSON loading.

Two cases, by who chose the rendezvous port (what happens when it is taken: :mod:`varnet_ds.rendezvous`):

- A plain ``python varnet_ds/train.py`` (no ``RANK``/``WORLD_SIZE``): varnet_ds owns the choice. The process binds
  its own TCP store on a port the kernel picks (port 0) and exports it as ``MASTER_PORT``: nothing can take that
  port between choosing and binding, so runs started side by side never collide.
- The DeepSpeed launcher, torchrun or srun exported ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT``: the
  launcher or the user chose the port. Rank 0 binds it; if it is taken, :func:`init_distributed` raises
  :class:`~varnet_ds.rendezvous.RendezvousError` naming the port and the flag to pass, before anything else
  happened. The other ranks cannot see that, so they join under :func:`~varnet_ds.rendezvous.rendezvous_watchdog`
  until every rank has answered one all-reduce.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Union

import torch

from varnet_ds.config import ConfigError, ds_config_names, ds_config_path
from varnet_ds.rendezvous import (
    RENDEZVOUS_ENV,
    RendezvousError,
    env_positive,
    no_rendezvous_message,
    port_in_use_message,
    rendezvous_watchdog,
)

# Keys whose values come from our OmegaConf config, never from the DeepSpeed JSON.
_OWNED_KEYS = {
    "train_micro_batch_size_per_gpu": "data.batch_size",
    "gradient_accumulation_steps": "train.grad_accum",
}


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def cuda_device_index(local_rank: int, device_count: int) -> int:
    """The CUDA device of this rank among the visible ones.

    One device per rank on a node (the deepspeed/torchrun default) -> ``LOCAL_RANK``. One visible device per task
    (SLURM ``--gpus-per-task=1``, or ``CUDA_VISIBLE_DEVICES`` set per rank) -> device 0 whatever ``LOCAL_RANK`` is.

    Raises:
        RuntimeError: several devices visible but fewer than ``LOCAL_RANK + 1`` (naming both numbers).
    """
    if device_count == 1:
        return 0
    if not 0 <= local_rank < device_count:
        raise RuntimeError(
            f"LOCAL_RANK={local_rank} but only {device_count} CUDA devices are visible (CUDA_VISIBLE_DEVICES="
            f"{os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')}): start at most {device_count} ranks per node, "
            "or make one device visible per rank")
    return local_rank


def shm_buffer_path(rank: int) -> Path:
    """The /dev/shm file of DeepSpeed's CPU shared-memory all-reduce for ``rank`` of this job (one per rank, ~69 MB)."""
    addr, port = os.environ.get("MASTER_ADDR", ""), os.environ.get("MASTER_PORT", "")
    return Path("/dev/shm") / f"deepspeed_allreduce_buffer_{os.getuid()}_{addr}_{port}_{rank}"


def shm_buffer_in_use(world_size: int, local_size: Optional[str]) -> bool:
    """DeepSpeed's own condition for its shared-memory all-reduce: every rank on this machine (``LOCAL_SIZE``, set by
    the deepspeed launcher, equals the world size) -- also for one rank started by the launcher."""
    return local_size is not None and local_size == str(world_size)


SHM_OP = "deepspeed_shm_comm"  # DeepSpeed's CPU shared-memory all-reduce, JIT-compiled on first use


@contextlib.contextmanager
def _no_shm_op(skip: bool) -> Iterator[None]:
    """While ``skip``, DeepSpeed's comm layer takes its CPU shared-memory op as unavailable and does not build it.

    A one-process CPU group never reduces across processes, yet ``deepspeed.init_distributed`` would compile the op
    (30-45 s on the 2-core box, once per machine and venv): the first run of a fresh ``make demo`` waited for it.
    Multi-rank CPU groups still build and use it.
    """
    if not skip:
        yield
        return
    import deepspeed.ops

    ops = deepspeed.ops.__compatible_ops__  # DeepSpeed's own table of usable ops (build_shm_op consults it)
    before = ops.get(SHM_OP)
    ops[SHM_OP] = False
    try:
        yield
    finally:
        if before is None:
            ops.pop(SHM_OP, None)
        else:
            ops[SHM_OP] = before


def _unlink_shm_buffer() -> None:
    """DeepSpeed maps one shared-memory file per rank when all ranks of a CPU job share a machine and never unlinks
    it, so every run used to leave ~69 MB per rank in /dev/shm (RAM). Once every rank has mapped all of them (the
    barrier after init), each rank unlinks its own name: the memory stays mapped until the processes exit and
    nothing is left behind, even after ``kill -9``."""
    if not shm_buffer_in_use(torch.distributed.get_world_size(), os.environ.get("LOCAL_SIZE")):
        return
    torch.distributed.barrier()
    shm_buffer_path(torch.distributed.get_rank()).unlink(missing_ok=True)


def init_distributed() -> DistInfo:
    """Initialise ``torch.distributed`` (NCCL on CUDA, gloo on CPU) and DeepSpeed's comm layer on top of it.

    Returns:
        The rank, world size, local rank and the device this rank computes on.

    Raises:
        RendezvousError: rank 0 cannot bind ``MASTER_PORT`` (the message names the port and the flag to pass).
    """
    owned = "RANK" not in os.environ or "WORLD_SIZE" not in os.environ
    if owned:  # a plain process: its own one-process group; MASTER_PORT is the port its store binds below
        os.environ.pop("MASTER_PORT", None)
        os.environ.update(MASTER_ADDR="127.0.0.1", RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    os.environ.setdefault("LOCAL_RANK", "0")
    local_rank = int(os.environ["LOCAL_RANK"])
    if torch.cuda.is_available():
        index = cuda_device_index(local_rank, torch.cuda.device_count())
        torch.cuda.set_device(index)
        device = torch.device("cuda", index)
        backend = "nccl"
    else:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        device = torch.device("cpu")
        backend = "gloo"
    import deepspeed

    if not torch.distributed.is_initialized():
        # Generous collective timeout: evaluation of a large brain set or the start-up data check can keep
        # ranks apart for longer than DeepSpeed's 10-minute default.
        timeout = timedelta(minutes=env_positive("VARNET_DS_TIMEOUT_MIN", 60.0))
        if owned:
            store = torch.distributed.TCPStore("127.0.0.1", 0, 1, True, timeout=timeout)  # the kernel picks
            os.environ["MASTER_PORT"] = str(store.port)  # DeepSpeed names its shared-memory files after it
            torch.distributed.init_process_group(backend, store=store, rank=0, world_size=1, timeout=timeout)
        else:
            _join_group(backend, timeout, device)
        # DeepSpeed's comm layer adopts the group; outside the rendezvous watchdog, as building its shared-memory
        # op can take long on a busy machine
        with _no_shm_op(backend == "gloo" and torch.distributed.get_world_size() == 1):
            deepspeed.init_distributed(dist_backend=backend, timeout=timeout)
    if backend == "gloo":
        _unlink_shm_buffer()
    return DistInfo(
        rank=torch.distributed.get_rank(),
        world_size=torch.distributed.get_world_size(),
        local_rank=local_rank,
        device=device,
    )


def _join_group(backend: str, timeout: timedelta, device: torch.device) -> None:
    """``env://`` rendezvous on the launcher's ``MASTER_ADDR:MASTER_PORT`` under
    :func:`~varnet_ds.rendezvous.rendezvous_watchdog`, until every rank has answered one all-reduce (a rank that
    reached another job's store never does).

    Raises:
        RendezvousError: rank 0 cannot bind ``MASTER_PORT`` (or a rank count that does not add up).
    """
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    addr, port = os.environ.get("MASTER_ADDR", "<unset>"), os.environ.get("MASTER_PORT", "<unset>")
    seconds = env_positive(RENDEZVOUS_ENV, 300.0)
    # As DeepSpeed does on CUDA: NCCL communicators bound to this rank's device (not for a world of one)
    bind = {"device_id": device} if backend == "nccl" and world_size != 1 else {}
    with rendezvous_watchdog(seconds, lambda: no_rendezvous_message(rank, world_size, addr, port, seconds)):
        try:
            torch.distributed.init_process_group(backend, timeout=timeout, **bind)
        except RuntimeError as err:
            if "address already in use" in str(err).lower() or "EADDRINUSE" in str(err):
                raise RendezvousError(port_in_use_message(addr, port)) from err
            raise
        (joined,) = all_reduce_flags([1.0], device, op="sum")
        if int(joined) != world_size:
            raise RendezvousError(f"{int(joined)} ranks answered at {addr}:{port}, WORLD_SIZE is {world_size}")


def load_ds_config(path: Union[str, Path], batch_size: int, grad_accum: int) -> Dict[str, Any]:
    """Read a DeepSpeed JSON (a path or a packaged name, :func:`varnet_ds.config.ds_config_path`) and fill in what
    our config owns.

    Keys starting with ``_`` are comments and are dropped. Batch size per GPU and gradient accumulation come
    from ``data.batch_size`` and ``train.grad_accum``; DeepSpeed's ``fp16``/``bf16``/``amp`` module casting and
    its own optimizer/scheduler blocks are refused because they break VarNet's FFTs or our schedule.

    Raises:
        ConfigError: the file is missing, not JSON, or sets a key we own or cannot support (named).
    """
    path = ds_config_path(path)
    if not path.is_file():
        raise ConfigError(f"--ds_config {path}: file not found (a JSON file, or a packaged name: "
                          f"{', '.join(ds_config_names())})")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"--ds_config {path}: not valid JSON ({err})") from None
    cfg = {k: v for k, v in raw.items() if not k.startswith("_")}
    for key in ("fp16", "bf16", "amp"):
        if isinstance(cfg.get(key), dict) and cfg[key].get("enabled", key == "amp"):
            raise ConfigError(
                f"--ds_config {path}: '{key}.enabled' casts the whole module and breaks VarNet's FFTs "
                "(cuFFT has no bf16; fp16 only for power-of-two sizes). Remove it and set "
                "train.precision=bf16 (autocast U-Nets with fp32 FFTs) instead"
            )
    for key in ("optimizer", "scheduler"):
        if key in cfg:
            raise ConfigError(
                f"--ds_config {path}: '{key}' block is not supported: varnet_ds passes torch.optim.Adam and a "
                "per-epoch StepLR from train.lr / train.lr_step_size / train.lr_gamma"
            )
    ours = {"train_micro_batch_size_per_gpu": batch_size, "gradient_accumulation_steps": grad_accum}
    for key, value in ours.items():
        if key in cfg and cfg[key] != value:
            raise ConfigError(
                f"--ds_config {path}: '{key}' = {cfg[key]} conflicts with {_OWNED_KEYS[key]} = {value}; "
                f"remove it from the JSON (it comes from {_OWNED_KEYS[key]})"
            )
    if "train_batch_size" in cfg:
        raise ConfigError(
            f"--ds_config {path}: 'train_batch_size' must not be set; it follows from data.batch_size x "
            "train.grad_accum x world size"
        )
    cfg.update(ours)
    stage = cfg.get("zero_optimization", {}).get("stage", 0)
    if stage == 3:
        raise ConfigError(
            f"--ds_config {path}: zero_optimization.stage = 3 is not supported (parameters partitioned; "
            "the 30M-param VarNet gains nothing from it): use ds_configs/zero2.json"
        )
    return cfg


def all_reduce_flags(values: list, device: torch.device, op: str = "max") -> list:
    """Agree on small per-rank numbers (e.g. stop and non-finite flags) across ranks."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        reduce_op = torch.distributed.ReduceOp.MAX if op == "max" else torch.distributed.ReduceOp.SUM
        torch.distributed.all_reduce(t, op=reduce_op)
    return t.tolist()


def barrier() -> None:
    """Synchronise all ranks (no-op without a process group)."""
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def all_gather_object(items: list) -> list:
    """Every rank's list, concatenated in rank order, on every rank (a collective; the input without one)."""
    if not torch.distributed.is_initialized() or torch.distributed.get_world_size() == 1:
        return list(items)
    buckets: List[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(buckets, list(items))
    return [item for bucket in buckets for item in bucket]


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Send a picklable object from ``src`` to every rank."""
    if not torch.distributed.is_initialized() or torch.distributed.get_world_size() == 1:
        return obj
    holder = [obj]
    torch.distributed.broadcast_object_list(holder, src=src)
    return holder[0]

"""Multi-GPU on paper: per-step ZeRO-2 communication volume, its time on a link and the expected scaling efficiency.

Model (Rajbhandari et al., "ZeRO: Memory Optimizations Toward Training Trillion Parameter Models", SC 2020,
arXiv:1910.02054, sections 7.1 and 7.2.1): plain data parallelism all-reduces the gradients, which
bandwidth-optimal implementations do as a reduce-scatter followed by an all-gather, moving 2Ψ elements per GPU for
Ψ parameters. ZeRO-2 (optimizer states + gradients partitioned, P_os+g) reduce-scatters the gradients (Ψ) and,
after each rank updates its partition, all-gathers the updated parameters (Ψ): the same 2Ψ as DDP. With ring
collectives each GPU sends (and receives) ``(N - 1) / N x P x bytes`` per collective, so per optimizer step and
GPU::

    volume = 2 x (N - 1) / N x P x bytes_per_elem          time = volume / link bandwidth (per GPU, one direction)

``bytes_per_elem`` is 4: varnet_ds keeps fp32 parameters and gradients (bf16 is autocast only). Latency terms
(2(N-1) hops x a few microseconds per bucket; ds_configs/zero2.json has 2e7-element buckets, so 2 buckets for 30 M
parameters) are negligible next to the bandwidth term and left out. Every micro-batch reduces its gradients under
ZeRO-2, so with gradient accumulation the reduce-scatter repeats per micro-step; this model assumes grad_accum = 1.

Efficiency (time per step on N GPUs relative to 1 GPU, same per-GPU batch):
    without overlap (``overlap_comm: false``, as shipped): ``step / (step + comm)``;
    with ``overlap_comm: true``: the gradient reduce-scatter hides behind the backward pass (``backward_fraction``
    of the step, about 2/3), the parameter all-gather after the optimizer step stays exposed:
    ``step / (step + all_gather + max(0, reduce_scatter - backward_fraction x step))``.

Links: NVLink 4 on an H100 SXM node gives ~300 GB/s effective per GPU for NCCL collectives (450 GB/s per
direction nominal); 100 Gb/s Ethernet is 12.5 GB/s, the bound of a ring whose GPUs sit on 8 nodes with one NIC each.
"""

from __future__ import annotations

from typing import Dict, Mapping, Optional

GB = 1e9  # decimal gigabyte, the unit link bandwidths are quoted in

LINKS: Dict[str, float] = {  # name -> GB/s per GPU, one direction
    "NVLink (H100 SXM, ~300 GB/s)": 300.0,
    "100 Gb/s Ethernet (12.5 GB/s)": 100.0 / 8.0,
}


def zero2_comm_estimate(num_params: int, world_size: int, step_time_s: float, link_gbps: float,
                        bytes_per_elem: int = 4, backward_fraction: float = 2.0 / 3.0) -> dict:
    """Per-step, per-GPU ZeRO-2 traffic and the scaling efficiency it allows (formulas in the module docstring).

    Args:
        num_params: trainable parameters P (default VarNet: 29,936,966).
        world_size: data-parallel GPUs N.
        step_time_s: measured single-GPU step time (compute only).
        link_gbps: link bandwidth per GPU in gigaBYTES per second (NVLink ~300; 100 Gb/s Ethernet = 12.5).
        bytes_per_elem: bytes per gradient/parameter element (4 = fp32).
        backward_fraction: share of the step spent in backward, which can hide the reduce-scatter.

    Returns:
        dict with ``num_params``, ``world_size``, ``link_gbps``, ``bytes_per_elem``, ``step_s``,
        ``reduce_scatter_bytes``, ``all_gather_bytes``, ``bytes_per_gpu`` (their sum), ``comm_s``,
        ``efficiency_no_overlap``, ``exposed_comm_s_overlap``, ``efficiency_overlap``.

    Raises:
        ValueError: a non-positive argument (named).
    """
    for name, value in (("num_params", num_params), ("world_size", world_size), ("step_time_s", step_time_s),
                        ("link_gbps", link_gbps), ("bytes_per_elem", bytes_per_elem)):
        if not value > 0:
            raise ValueError(f"{name} = {value}: must be > 0")
    if not 0.0 <= backward_fraction <= 1.0:
        raise ValueError(f"backward_fraction = {backward_fraction}: must be in [0, 1]")
    per_collective = (world_size - 1) / world_size * num_params * bytes_per_elem
    bandwidth = link_gbps * GB
    rs_s = ag_s = per_collective / bandwidth
    comm_s = rs_s + ag_s
    exposed = ag_s + max(0.0, rs_s - backward_fraction * step_time_s)
    return dict(
        num_params=int(num_params), world_size=int(world_size), link_gbps=float(link_gbps),
        bytes_per_elem=int(bytes_per_elem), step_s=float(step_time_s),
        reduce_scatter_bytes=per_collective, all_gather_bytes=per_collective, bytes_per_gpu=2 * per_collective,
        comm_s=comm_s, efficiency_no_overlap=step_time_s / (step_time_s + comm_s),
        exposed_comm_s_overlap=exposed, efficiency_overlap=step_time_s / (step_time_s + exposed),
    )


def comms_table(num_params: int, step_time_s: float, world_size: int = 8,
                links: Optional[Mapping[str, float]] = None, bytes_per_elem: int = 4) -> str:
    """A text table of :func:`zero2_comm_estimate` for each link (default :data:`LINKS`)."""
    links = LINKS if links is None else links
    lines = [f"ZeRO-2 on paper: P = {num_params:,} params x {bytes_per_elem} B, N = {world_size} GPUs, "
             f"1-GPU step {step_time_s:.3f} s",
             f"per GPU per step: reduce-scatter + all-gather = 2 x (N-1)/N x P x {bytes_per_elem} B",
             f"{'link':<32} {'GB/GPU/step':>11} {'comm ms':>8} {'eff no-overlap':>14} {'eff overlap':>11} "
             f"{'samples/s':>10}"]
    for name, gbps in links.items():
        e = zero2_comm_estimate(num_params, world_size, step_time_s, gbps, bytes_per_elem)
        throughput = world_size * e["efficiency_no_overlap"] / step_time_s
        lines.append(f"{name:<32} {e['bytes_per_gpu'] / GB:>11.3f} {1000 * e['comm_s']:>8.2f} "
                     f"{e['efficiency_no_overlap']:>13.1%} {e['efficiency_overlap']:>11.1%} {throughput:>10.1f}")
    lines.append("samples/s: batch 1 per GPU, without overlap (ds_configs/zero2.json ships overlap_comm: false)")
    return "\n".join(lines)

"""LiveTensorMemory counts live tensor bytes exactly; the estimates order the policies the way a GPU does."""

import pytest
import torch

from varnet_ds.model.varnet import VarNetDS, count_parameters
from varnet_ds.profiling.memtrack import LiveTensorMemory, measure_step
from varnet_ds.profiling.planner import make_batch, train_step_fn

MIB = 2**20


def test_counts_allocations_frees_and_views_exactly():
    mem = LiveTensorMemory()
    with mem:
        a = torch.zeros(MIB // 4)  # 1 MiB fp32
        b = torch.ones(MIB // 2, dtype=torch.bfloat16)  # 1 MiB
        view = a.view(-1, 2)[:, 0]  # shares a's storage: no new bytes
        assert mem.current_bytes == 2 * MIB
        del b
        c = a + 1  # b freed before this op ran; c is new
        assert mem.current_bytes == 2 * MIB and mem.peak_bytes == 2 * MIB
        d = torch.cat([a, c])  # 2 MiB more while a and c are alive
        assert mem.peak_bytes == 4 * MIB and mem.peak_op == "cat.default"
        del d, c, view
    assert mem.ops >= 5


def test_track_counts_what_existed_before():
    model = torch.nn.Linear(256, 256)  # 256*256 + 256 fp32 params
    params = (256 * 256 + 256) * 4
    mem = LiveTensorMemory().track(model)
    assert mem.current_bytes == params
    x = torch.randn(64, 256)
    with mem:
        y = model(x)  # 64 KiB output
        y.sum().backward()  # + gradients (= params) + a few scalars
        del y
    assert mem.current_bytes == 2 * params  # gradients stay, the output is gone
    assert mem.peak_bytes == pytest.approx(2 * params + 64 * 256 * 4, abs=64)


def _cost(policy, precision="fp32", sens_chunk=0, coils=8):
    torch.manual_seed(0)
    model = VarNetDS(num_cascades=2, chans=8, pools=2, sens_chans=4, sens_pools=2, checkpointing=policy,
                     precision=precision, sens_chunk=sens_chunk).train()
    opt = torch.optim.Adam(model.parameters())
    from fastmri.losses import SSIMLoss

    step = train_step_fn(model, lambda loss: loss.backward(), opt.step, make_batch(coils, 64, 48, "cpu"), SSIMLoss())
    step()  # Adam state exists before the measured step, like the bench's warm-up
    return measure_step(step)


def test_checkpointing_chunking_and_bf16_lower_the_estimated_peak():
    none, cascades, every = _cost("none"), _cost("cascades"), _cost("all")
    chunked = _cost("all", sens_chunk=2)
    assert none.peak_bytes > cascades.peak_bytes > every.peak_bytes > chunked.peak_bytes
    assert _cost("cascades", "bf16").peak_bytes < cascades.peak_bytes
    # Recompute is counted: each checkpointed region runs its forward twice.
    assert none.flops < cascades.flops < every.flops
    assert chunked.flops == pytest.approx(every.flops)
    assert _cost("none", "bf16").flops == none.flops  # same convolutions, other dtype
    # Every row includes the model states: parameters, gradients and two Adam moments, fp32.
    params = count_parameters(VarNetDS(num_cascades=2, chans=8, pools=2, sens_chans=4, sens_pools=2))
    assert chunked.peak_bytes > 4 * 4 * params


def test_measure_step_without_memory_counts_flops_only():
    x = torch.randn(32, 64, requires_grad=True)
    w = torch.randn(64, 16)
    cost = measure_step(lambda: (x @ w).sum().backward(), track_memory=False)
    assert cost.peak_bytes is None and cost.flops == 2 * 2 * 32 * 64 * 16  # forward + the grad of x (w needs none)

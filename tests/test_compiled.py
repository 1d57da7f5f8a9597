"""model.compile: one graph-break-free torch.compile graph shared by every U-Net, same results as fastMRI's."""

import shutil

import pytest
import torch
from fastmri.models.unet import Unet
from fastmri.models.varnet import NormUnet

from varnet_ds.config import load_config
from varnet_ds.model import compiled
from varnet_ds.model.compiled import norm_unet_forward, unet_forward
from varnet_ds.model.varnet import VarNetDS, build_model

SMALL = dict(num_cascades=2, chans=4, pools=2, sens_chans=2, sens_pools=2)


@pytest.mark.parametrize("h,w", [(32, 24), (31, 23), (30, 17)])  # odd sizes take the reflect-pad branch
def test_unet_forward_equals_fastmri(h, w):
    torch.manual_seed(0)
    unet = Unet(2, 2, 4, 3)
    x = torch.randn(2, 2, h, w)
    assert torch.equal(unet_forward(unet, x), unet(x))
    net = NormUnet(4, 2)
    z = torch.randn(3, 1, h, w, 2)
    assert torch.equal(norm_unet_forward(net, z), net(z))
    with pytest.raises(ValueError, match=r"last dimension of 2.*\(1, 3, 8, 8, 3\)"):
        norm_unet_forward(net, torch.randn(1, 3, 8, 8, 3))


def _loss_and_grads(model, kspace, mask):
    model.zero_grad(set_to_none=True)
    loss = model(kspace, mask).square().mean()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def _batch(coils=3, h=32, w=24):
    g = torch.Generator().manual_seed(1)
    mask = torch.zeros(1, 1, 1, w, 1, dtype=torch.bool)
    mask[..., w // 2 - 3: w // 2 + 3, :] = True
    mask[..., ::3, :] = True
    return torch.randn(1, coils, h, w, 2, generator=g) * mask, mask


@pytest.mark.parametrize("checkpointing,precision", [("cascades", "fp32"), ("all", "bf16")])
def test_compiled_varnet_traces_one_graph_per_shape(monkeypatch, checkpointing, precision):
    from torch._dynamo.utils import counters

    monkeypatch.setattr(compiled, "BACKEND", "aot_eager")  # Dynamo + AOTAutograd as with Inductor, no codegen
    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    eager = VarNetDS(**SMALL, checkpointing=checkpointing, precision=precision)
    comp = VarNetDS(**SMALL, checkpointing=checkpointing, precision=precision, compile_unets=True)
    comp.load_state_dict(eager.state_dict(), strict=True)  # same modules, same keys
    kspace, mask = _batch()
    loss_a, grads_a = _loss_and_grads(eager, kspace, mask)
    loss_b, grads_b = _loss_and_grads(comp, kspace, mask)
    loss_b, grads_b = _loss_and_grads(comp, kspace, mask)  # second step: cached graphs, no new compile
    tol = 1e-5 if precision == "fp32" else 2e-2
    assert torch.allclose(loss_a, loss_b, rtol=tol, atol=0)
    for name, g in grads_a.items():
        assert torch.allclose(g, grads_b[name], rtol=tol, atol=tol * g.abs().max().item()), name
    # one graph for the sensitivity net's shape, one shared by both cascades; no graph breaks
    assert counters["stats"]["unique_graphs"] == 2
    assert sum(counters["graph_break"].values()) == 0
    torch._dynamo.reset()


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None, reason="Inductor needs a C++ compiler")
def test_inductor_norm_unet_matches_eager():
    torch._dynamo.reset()
    torch.manual_seed(2)
    net = NormUnet(4, 1)  # 1 pool: fewer kernels for the C++ compiler on a cold cache (~40 s, not ~55 s)
    x = torch.randn(2, 1, 32, 24, 2, requires_grad=True)
    y = compiled.compiled_norm_unet()(net, x)
    ref = net(x)
    assert torch.allclose(y, ref, atol=1e-4, rtol=1e-4)
    (gx,) = torch.autograd.grad(y.square().sum(), x)
    (rx,) = torch.autograd.grad(ref.square().sum(), x)
    assert torch.allclose(gx, rx, atol=1e-3 * rx.abs().max().item(), rtol=1e-3)
    torch._dynamo.reset()


def test_compile_config_key():
    cfg = load_config("baseline", ["model.compile=true", "model.num_cascades=1", "model.chans=4"])
    model = build_model(cfg.model, "bf16")
    assert model.compile_unets and model.sens_net.norm_unet.compiled and model.cascades[0].model.compiled
    assert not build_model(load_config("baseline").model).compile_unets  # off by default

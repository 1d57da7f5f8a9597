"""VarNetDS: checkpointing is exact, bf16 keeps FFTs in fp32, weights stay fastMRI-compatible."""

import pytest
import torch
from fastmri.models import VarNet

from varnet_ds.model.varnet import VarNetDS, build_model, count_parameters

SMALL = dict(num_cascades=2, chans=4, pools=2, sens_chans=2, sens_pools=2)


def _batch(seed=0, coils=3, h=32, w=24):
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(1, 1, 1, w, 1, dtype=torch.bool)
    mask[..., w // 2 - 3 : w // 2 + 3, :] = True
    mask[..., ::3, :] = True
    kspace = torch.randn(1, coils, h, w, 2, generator=g) * mask
    return kspace, mask


def _loss_and_grads(model, kspace, mask):
    model.zero_grad(set_to_none=True)
    out = model(kspace, mask)
    loss = (out**2).mean() + out.std()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("policy", ["cascades", "all", "selective", "selective_all"])
def test_checkpointing_gives_same_loss_and_gradients(policy):
    torch.manual_seed(0)
    plain = VarNetDS(**SMALL, checkpointing="none")
    ckpt = VarNetDS(**SMALL, checkpointing=policy)
    ckpt.load_state_dict(plain.state_dict())
    kspace, mask = _batch()
    loss_a, grads_a = _loss_and_grads(plain, kspace, mask)
    loss_b, grads_b = _loss_and_grads(ckpt, kspace, mask)
    assert torch.allclose(loss_a, loss_b, atol=1e-5, rtol=0)
    for name, g in grads_a.items():
        assert torch.allclose(g, grads_b[name], atol=1e-5, rtol=1e-5), name


@pytest.mark.parametrize("policy,chunk", [("none", 2), ("cascades", 1), ("all", 2), ("all", 5),
                                          ("selective_all", 2)])
def test_coil_chunked_sensitivity_net_changes_nothing(policy, chunk):
    torch.manual_seed(3)
    plain = VarNetDS(**SMALL, checkpointing="none")
    chunked = VarNetDS(**SMALL, checkpointing=policy, sens_chunk=chunk)
    chunked.load_state_dict(plain.state_dict(), strict=True)  # same keys as fastMRI
    kspace, mask = _batch(3, coils=5)
    loss_a, grads_a = _loss_and_grads(plain, kspace, mask)
    loss_b, grads_b = _loss_and_grads(chunked, kspace, mask)
    assert torch.allclose(loss_a, loss_b, atol=1e-6, rtol=0)
    for name, g in grads_a.items():
        assert torch.allclose(g, grads_b[name], atol=1e-6, rtol=1e-5), name


def test_sens_chunk_checkpoints_each_chunk_under_all(monkeypatch):
    import varnet_ds.model.varnet as model_mod

    calls = []
    original = model_mod.checkpoint

    def spy(fn, *args, **kw):
        calls.append(getattr(fn, "__name__", type(fn).__name__))
        return original(fn, *args, **kw)

    monkeypatch.setattr(model_mod, "checkpoint", spy)
    model = VarNetDS(**SMALL, checkpointing="all", sens_chunk=2).train()
    kspace, mask = _batch(4, coils=5)
    model(kspace, mask).mean().backward()
    assert calls.count("_run") == 3  # 5 coils in chunks of 2 -> 3 checkpoints
    assert len(calls) == 3 + SMALL["num_cascades"]  # plus one per cascade, and no whole-sens_net checkpoint
    calls.clear()
    with torch.no_grad():
        model.eval()(kspace, mask)
    assert calls == []  # inference never checkpoints
    with pytest.raises(ValueError, match="model.sens_chunk"):
        VarNetDS(**SMALL, sens_chunk=-1)



def test_matches_fastmri_varnet_and_state_dict_compatible():
    torch.manual_seed(1)
    ours = VarNetDS(**SMALL, checkpointing="cascades")
    ref = VarNet(**SMALL)
    ref.load_state_dict(ours.state_dict(), strict=True)  # no renamed keys
    ours.load_state_dict(ref.state_dict(), strict=True)
    kspace, mask = _batch(1)
    ours.eval()
    ref.eval()
    with torch.no_grad():
        assert torch.allclose(ours(kspace, mask), ref(kspace, mask), atol=1e-6)


def test_bf16_runs_unets_in_bf16_and_ffts_in_fp32(monkeypatch):
    import fastmri

    seen = []
    original = fastmri.fft2c

    def spy(x, *a, **k):
        seen.append(x.dtype)
        return original(x, *a, **k)

    monkeypatch.setattr(fastmri, "fft2c", spy)
    torch.manual_seed(2)
    model = VarNetDS(**SMALL, precision="bf16", checkpointing="cascades")
    fp32 = VarNetDS(**SMALL, precision="fp32", checkpointing="none")
    fp32.load_state_dict(model.state_dict())
    kspace, mask = _batch(2)
    out = model(kspace, mask)
    out.mean().backward()
    assert out.dtype == torch.float32
    assert seen and all(d == torch.float32 for d in seen)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    with torch.no_grad():
        ref = fp32(kspace, mask)
    rel = (out.detach() - ref).norm() / ref.norm()
    assert 0 < rel < 0.05  # bf16 U-Nets differ a little, not a lot


def test_invalid_policy_names_the_key():
    with pytest.raises(ValueError, match="model.checkpointing"):
        VarNetDS(**SMALL, checkpointing="some")
    with pytest.raises(ValueError, match="train.precision"):
        VarNetDS(**SMALL, precision="fp16")


def test_default_size_and_build_from_config():
    from varnet_ds.config import load_config

    cfg = load_config(None, ["model.num_cascades=2"])
    model = build_model(cfg.model, "fp32")
    assert model.checkpointing == "cascades" and len(model.cascades) == 2
    assert model.sens_chunk == 0 and not model.sens_net.norm_unet.checkpoint_chunks
    chunked = build_model(load_config("baseline", ["model.num_cascades=1"]).model, "bf16")
    assert chunked.checkpointing == "all" and chunked.sens_chunk == 4 and chunked.sens_net.norm_unet.checkpoint_chunks
    assert count_parameters(VarNetDS()) == 29_936_966  # fastMRI default E2E-VarNet


def test_build_model_from_sizes_with_overrides_and_errors():
    from varnet_ds.config import FASTMRI_SIZES, ModelConfig, load_config
    from varnet_ds.model.weights import model_sizes

    plain = build_model(SMALL)  # a mapping of sizes: the schema's defaults for the rest
    assert model_sizes(plain) == SMALL and plain.checkpointing == "cascades" and plain.precision == "fp32"
    assert plain.sens_chunk == 0 and not plain.compile_unets
    assert model_sizes(build_model(ModelConfig())) == FASTMRI_SIZES
    cfg = load_config("baseline", ["model.num_cascades=1"]).model  # checkpointing=all, sens_chunk=4
    model = build_model(cfg, "bf16", checkpointing="none", sens_chunk=0, compile=True)
    assert (model.checkpointing, model.sens_chunk, model.precision, model.compile_unets) == ("none", 0, "bf16", True)
    assert build_model(dict(SMALL, checkpointing="all", sens_chunk=2)).sens_net.norm_unet.checkpoint_chunks
    with pytest.raises(ValueError, match=r"lacks \['model.pools'\]"):
        build_model({k: v for k, v in SMALL.items() if k != "pools"})
    with pytest.raises(ValueError, match=r"unknown model keys \['cascades'\]"):
        build_model(dict(SMALL, cascades=2))
    with pytest.raises(ValueError, match="model.checkpointing = 'some'"):
        build_model(SMALL, checkpointing="some")


def _step_cost(policy: str):
    from varnet_ds.profiling.memtrack import measure_step

    torch.manual_seed(5)
    model = VarNetDS(num_cascades=3, chans=8, pools=2, sens_chans=4, sens_pools=2, checkpointing=policy).train()
    kspace, mask = _batch(5, coils=4, h=96, w=64)
    model.requires_grad_(False)  # no gradients to hold: the peak is activations only
    kspace.requires_grad_(True)
    return measure_step(lambda: model(kspace, mask).square().mean().backward())


def test_selective_recomputes_full_resolution_only():
    none, cascades, selective = (_step_cost(p) for p in ("none", "cascades", "selective"))
    # the low-resolution convolutions are not run twice: FLOPs between no checkpointing and full recompute
    assert none.flops < selective.flops < none.flops + (cascades.flops - none.flops) / 2
    assert cascades.peak_bytes < selective.peak_bytes < none.peak_bytes
    sel_all, full_all = _step_cost("selective_all"), _step_cost("all")
    assert sel_all.flops < full_all.flops and sel_all.peak_bytes < selective.peak_bytes


def test_keep_low_res_convolutions_policy():
    from torch.utils.checkpoint import CheckpointPolicy

    from varnet_ds.model.varnet import CONVOLUTION, KeepLowResConvolutions

    save, recompute = CheckpointPolicy.MUST_SAVE, CheckpointPolicy.PREFER_RECOMPUTE
    policy = KeepLowResConvolutions(max_pixels=32 * 24 // 2)

    def conv(h, w, stride=(1, 1), transposed=False):
        return policy(None, CONVOLUTION, torch.empty(1, 4, h, w), None, None, list(stride), [0, 0], [1, 1],
                      transposed, [0, 0], 1)

    assert conv(32, 24) == recompute  # full resolution
    assert conv(16, 12) == save  # level 1
    assert conv(16, 12, stride=(2, 2), transposed=True) == recompute  # upsampling back to full resolution
    assert conv(8, 6, stride=(2, 2), transposed=True) == save  # upsampling to level 1
    assert conv(32, 24, stride=(2, 2)) == save  # strided: output at level 1
    assert policy(None, torch.ops.aten.relu.default, torch.empty(1, 4, 2, 2)) == recompute
    assert KeepLowResConvolutions()(None, CONVOLUTION, torch.empty(1, 4, 32, 24)) == save  # None: every conv

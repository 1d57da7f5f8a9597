"""Tests of varnet_ds.data.augment (MRAugment pipeline, p schedules) and its geometric kernels."""

from __future__ import annotations

import math
from dataclasses import dataclass

import fastmri
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fastmri.data.transforms import center_crop
from omegaconf import OmegaConf

from varnet_ds.config import AUG_WEIGHT_NAMES, AugConfig
from varnet_ds.data.augment import AugmentSchedule, MRAugment
from varnet_ds.data.augment_ops import AugParams, affine_matrix, affine_warp, rot90_keep_shape
from varnet_ds.profiling.benchmark import bench_augment

C, H, W = 4, 32, 24


def _kspace(shape=(C, H, W), dtype=torch.complex128, seed=0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, dtype=dtype, generator=gen)


def _img(kspace: torch.Tensor) -> torch.Tensor:
    return torch.view_as_complex(fastmri.ifft2c(torch.view_as_real(kspace)))


def _ksp(img: torch.Tensor) -> torch.Tensor:
    return torch.view_as_complex(fastmri.fft2c(torch.view_as_real(img)))


def _ref_target(kspace_aug: torch.Tensor, size) -> torch.Tensor:
    rss = fastmri.rss(fastmri.complex_abs(fastmri.ifft2c(torch.view_as_real(kspace_aug))), dim=0)
    return center_crop(rss, (min(rss.shape[-2], size[0]), min(rss.shape[-1], size[1])))


def _all_weights_one() -> AugConfig:
    cfg = AugConfig()
    for name in AUG_WEIGHT_NAMES:
        setattr(cfg.weights, name, 1.0)
    return cfg


# --------------------------------------------------------------------------- p = 0, target, formats


@pytest.mark.parametrize("real_view", [False, True])
def test_p_zero_returns_input_exactly(real_view):
    k = _kspace(dtype=torch.complex64)
    k_in = torch.view_as_real(k).clone() if real_view else k.clone()
    out, target = MRAugment().augment(k_in, (16, 16), 0.0, torch.Generator().manual_seed(3))
    assert out is k_in and torch.equal(out, k_in.clone())
    ref = _ref_target(k, (16, 16))
    assert target.dtype == torch.float32 and target.shape == (16, 16)
    torch.testing.assert_close(target, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("upsample", [False, True])
@pytest.mark.parametrize("p", [0.3, 0.7, 1.0])
def test_target_is_crop_rss_of_augmented_kspace(p, upsample):
    k = _kspace(dtype=torch.complex64, seed=1)
    aug = MRAugment(AugConfig(upsample=upsample))
    gen = torch.Generator().manual_seed(11)
    for size in [(20, 20), (40, 30)]:  # second larger than the image: cropped to min(H, h), min(W, w)
        for _ in range(4):
            out, target = aug.augment(k, size, p, gen)
            assert out.shape == k.shape and out.dtype == k.dtype
            assert target.shape == (min(H, size[0]), min(W, size[1])) and target.dtype == torch.float32
            ref = _ref_target(out, size)
            torch.testing.assert_close(target, ref, rtol=1e-5, atol=1e-5 * float(ref.max()))


def test_real_view_matches_complex_input():
    k = _kspace(dtype=torch.complex64, seed=2)
    aug = MRAugment(_all_weights_one())
    out_c, t_c = aug.augment(k, (16, 16), 1.0, torch.Generator().manual_seed(5))
    out_r, t_r = aug.augment(torch.view_as_real(k).clone(), (16, 16), 1.0, torch.Generator().manual_seed(5))
    assert out_r.shape == (C, H, W, 2) and not out_r.is_complex()
    assert torch.equal(torch.view_as_complex(out_r.contiguous()), out_c)
    assert torch.equal(t_r, t_c)


# --------------------------------------------------------------------------- exact pixel-preserving ops


def _kspace_of_flipped(kspace: torch.Tensor, dim: int) -> torch.Tensor:
    """k-space of the image flipped along ``dim``, derived for fastMRI's centred ortho FFT.

    fft2c(x)[k] = sum_n x[n] exp(-2 pi i (k - c)(n - c) / N) with c = N // 2 (for both parities). With
    y[n] = x[N-1-n], n - c = -(m - c) + d, d = N - 1 - 2c (-1 for even N, 0 for odd N):
    Y[k] = exp(-2 pi i (k - c) d / N) K[(2c - k) mod N], i.e. a flip with a one-sample roll plus a linear
    phase for even N, a plain flip for odd N. No conjugation (x is complex).
    """
    n = kspace.shape[dim]
    c, d = n // 2, n - 1 - 2 * (n // 2)
    k = torch.arange(n, dtype=torch.float64)
    phase = torch.exp(-2j * math.pi * (k - c) * d / n).to(kspace.dtype)
    idx = torch.remainder(2 * c - torch.arange(n), n)
    shape = [1] * kspace.ndim
    shape[dim] = n
    return kspace.index_select(dim, idx) * phase.reshape(shape)


@pytest.mark.parametrize("shape", [(C, H, W), (3, 15, 11)])
@pytest.mark.parametrize("which", ["fliph", "flipv"])
def test_flip_matches_kspace_identity(shape, which):
    k = _kspace(shape)
    aug = MRAugment()
    out, _ = aug.apply(k, AugParams(p=1.0, **{which: True}), (8, 8))
    expected = _kspace_of_flipped(k, -1 if which == "fliph" else -2)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    twice, _ = aug.apply(out, AugParams(p=1.0, **{which: True}), (8, 8))
    torch.testing.assert_close(twice, k, rtol=0, atol=1e-12)


@pytest.mark.parametrize("rot_k", [1, 2, 3])
def test_rot90_exact_square_and_numpy_reference(rot_k):
    k = _kspace((C, 20, 20))
    out, _ = MRAugment().apply(k, AugParams(p=1.0, rot90=rot_k), (8, 8))
    expected = np.rot90(_img(k).numpy(), rot_k, axes=(-2, -1))
    np.testing.assert_allclose(_img(out).numpy(), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("rot_k", [1, 3])
def test_rot90_non_square_keeps_shape(rot_k):
    x = torch.randn(2, C, H, W, dtype=torch.float64)
    out = rot90_keep_shape(x, rot_k)
    rotated = np.rot90(x.numpy(), rot_k, axes=(-2, -1))  # [.., W, H] = [.., 24, 32]
    pad = (H - W) // 2
    crop = (H - W) // 2
    expected = np.pad(rotated[..., crop:crop + W], [(0, 0), (0, 0), (pad, pad), (0, 0)], mode="reflect")
    assert out.shape == x.shape
    np.testing.assert_array_equal(out.numpy(), expected)


@pytest.mark.parametrize("shift", [(3, -2), (-5, 4), (0, 7), (40, -30)])
def test_integer_translation_exact(shift):
    k = _kspace()
    out, _ = MRAugment().apply(k, AugParams(p=1.0, translation=shift), (8, 8))
    got, img = _img(out).numpy(), _img(k).numpy()
    tr, tc = shift
    rows = slice(max(tr, 0), H + min(tr, 0))
    cols = slice(max(tc, 0), W + min(tc, 0))
    src_rows = slice(max(-tr, 0), H + min(-tr, 0))
    src_cols = slice(max(-tc, 0), W + min(-tc, 0))
    if abs(tr) < H and abs(tc) < W:  # the region no padding enters
        np.testing.assert_allclose(got[:, rows, cols], img[:, src_rows, src_cols], rtol=0, atol=1e-12)
    # whole image against numpy's reflect padding (periodic continuation for shifts beyond the image)
    big = np.pad(img, [(0, 0), (50, 50), (50, 50)], mode="reflect")
    expected = big[:, 50 - tr:50 - tr + H, 50 - tc:50 - tc + W]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)


# --------------------------------------------------------------------------- affine


@pytest.mark.parametrize("params", [AugParams(p=1.0, rotation=0.0), AugParams(p=1.0, shearing=(0.0, 0.0)),
                                    AugParams(p=1.0, scaling=(1.0, 1.0))])
def test_affine_identity_parameters_return_input(params):
    k = _kspace(dtype=torch.complex64)
    out, _ = MRAugment().apply(k, params, (8, 8))
    assert out is not k
    img = _img(k)
    torch.testing.assert_close(_img(out), img, rtol=0, atol=1e-4 * float(img.abs().max()))


@pytest.mark.parametrize("shape", [(H, W), (20, 20)])
@pytest.mark.parametrize("angle,rot_k", [(90.0, 1), (-90.0, 3), (180.0, 2)])
def test_affine_quarter_turn_matches_rot90(shape, angle, rot_k):
    x = torch.randn(2, 3, *shape)
    warped = affine_warp(x, affine_matrix(angle))
    rotated = rot90_keep_shape(x, rot_k)
    m = abs(shape[0] - shape[1]) // 2 + 1
    torch.testing.assert_close(warped[..., m:-m, m:-m], rotated[..., m:-m, m:-m], rtol=0, atol=1e-4)


def _affine_reference(x: torch.Tensor, matrix: torch.Tensor, pad: int) -> torch.Tensor:
    """Literal recipe: numpy reflect pad, affine_grid/grid_sample (zeros) on the padded image, centre crop."""
    h, w = x.shape[-2:]
    padded = torch.from_numpy(np.pad(x.numpy(), [(0, 0), (0, 0), (pad, pad), (pad, pad)], mode="reflect"))
    hp, wp = padded.shape[-2:]
    scale = torch.diag(torch.tensor([wp / 2.0, hp / 2.0], dtype=torch.float64))
    theta = torch.zeros(1, 2, 3, dtype=torch.float64)
    theta[0, :, :2] = torch.linalg.inv(scale) @ torch.linalg.inv(matrix) @ scale
    grid = F.affine_grid(theta, [1, 1, hp, wp], align_corners=False)
    out = F.grid_sample(padded, grid.expand(x.shape[0], -1, -1, -1), mode="bilinear", padding_mode="zeros",
                        align_corners=False)
    return out[..., pad:pad + h, pad:pad + w]


@pytest.mark.parametrize("rotation,shear,scale", [(33.0, (12.0, -7.0), (0.8, 0.8)), (-150.0, (-15.0, 15.0),
                                                                                    (1.2, 0.77))])
def test_affine_equals_reflect_pad_warp_crop(rotation, shear, scale):
    x = torch.randn(2, 3, H, W, dtype=torch.float64)
    mat = affine_matrix(rotation, shear, scale)
    expected = _affine_reference(x, mat, pad=60)
    torch.testing.assert_close(affine_warp(x, mat), expected, rtol=0, atol=1e-9)


@pytest.mark.parametrize("upsample", [1, 2])
def test_affine_lets_no_zeros_in(upsample):
    ones = torch.ones(2, C, H, W)
    out = affine_warp(ones, affine_matrix(45.0, (15.0, 15.0), (0.75, 0.75)), upsample_factor=upsample)
    torch.testing.assert_close(out, ones, rtol=0, atol=1e-6)


def test_upsampled_affine_close_to_direct_on_smooth_image():
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, H), torch.linspace(-1, 1, W), indexing="ij")
    smooth = torch.exp(-(xx**2 + yy**2) / 0.3)[None].double()
    mat = affine_matrix(20.0, (5.0, 0.0), (1.1, 1.1))
    direct, up = affine_warp(smooth, mat), affine_warp(smooth, mat, upsample_factor=2)
    assert float((direct - up).abs().max()) < 0.02
    assert float((direct - smooth).abs().max()) > 0.1  # the transform is not a no-op


# --------------------------------------------------------------------------- sampling


def test_same_seed_same_draw_different_seeds_differ():
    aug = MRAugment()
    draw = [aug.sample_params(0.8, torch.Generator().manual_seed(s), (H, W)) for s in (7, 7, 8)]
    assert draw[0] == draw[1]
    assert draw[0] != draw[2]
    k = _kspace(dtype=torch.complex64)
    a, _ = aug.augment(k, (16, 16), 1.0, torch.Generator().manual_seed(4))
    b, _ = aug.augment(k, (16, 16), 1.0, torch.Generator().manual_seed(4))
    assert torch.equal(a, b)


def test_weight_draw_order_is_pinned():
    # u[i] decides whether AUG_WEIGHT_NAMES[i] fires: reordering the AugWeights fields would change every draw
    assert AUG_WEIGHT_NAMES == ("fliph", "flipv", "rot90", "translation", "rotation", "shearing", "scaling")


def test_fire_frequencies_and_ranges():
    cfg = AugConfig()
    aug, gen, n, p = MRAugment(cfg), torch.Generator().manual_seed(0), 4000, 0.8
    draws = [aug.sample_params(p, gen, (640, 368)) for _ in range(n)]
    for name in AUG_WEIGHT_NAMES:
        rate = sum(name in d.fired for d in draws) / n
        expected = min(getattr(cfg.weights, name) * p, 1.0)
        sigma = math.sqrt(max(expected * (1 - expected), 1e-4) / n)
        assert abs(rate - expected) < 5 * sigma + 1e-3, (name, rate, expected)
    assert {d.rot90 for d in draws} == {0, 1, 2, 3}
    tr = np.array([d.translation for d in draws if d.translation is not None])
    assert np.abs(tr[:, 0]).max() <= int(0.125 * 640) and np.abs(tr[:, 1]).max() <= int(0.08 * 368)
    assert np.abs(tr[:, 0]).max() > 60 and np.abs(tr[:, 1]).max() > 20  # x spans H, y spans W (MRAugment)
    rot = np.array([d.rotation for d in draws if d.rotation is not None])
    assert np.abs(rot).max() <= 180 and np.abs(rot).max() > 170
    sc = np.array([d.scaling for d in draws if d.scaling is not None])
    assert sc.min() >= 0.75 and sc.max() <= 1.25 and np.all(sc[:, 0] == sc[:, 1])  # isotropic by default
    sh = np.array([d.shearing for d in draws if d.shearing is not None])
    assert np.abs(sh).max() <= 15


def test_weight_times_p_at_least_one_always_fires_and_anisotropic_option():
    @dataclass
    class AnisoConfig(AugConfig):
        anisotropic_scaling: bool = True

    cfg = AnisoConfig()
    for name in AUG_WEIGHT_NAMES:
        setattr(cfg.weights, name, 1.0)
    gen = torch.Generator().manual_seed(1)
    draws = [MRAugment(cfg).sample_params(1.0, gen, (H, W)) for _ in range(50)]
    assert all(len(d.fired) == 7 for d in draws)
    assert any(d.scaling[0] != d.scaling[1] for d in draws)


def test_dictconfig_matches_dataclass():
    from_node, from_dataclass = MRAugment(OmegaConf.structured(AugConfig)), MRAugment(AugConfig())
    k = _kspace((3, C, H, W), dtype=torch.complex64, seed=9)
    gen_a, gen_b = torch.Generator().manual_seed(2), torch.Generator().manual_seed(2)
    for i in range(3):
        out_a, t_a = from_node.augment(k[i], (16, 16), 0.6, gen_a)
        out_b, t_b = from_dataclass.augment(k[i], (16, 16), 0.6, gen_b)
        assert from_node.last_params == from_dataclass.last_params
        assert torch.equal(out_a, out_b) and torch.equal(t_a, t_b)
    out_z, _ = from_node.augment(torch.view_as_real(k[0]), (16, 16), 0.0)
    assert torch.equal(out_z, torch.view_as_real(k[0]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    k = _kspace(dtype=torch.complex64)
    aug = MRAugment(_all_weights_one())
    out_cpu, t_cpu = aug.augment(k, (16, 16), 1.0, torch.Generator().manual_seed(6))
    out_gpu, t_gpu = aug.augment(k.cuda(), (16, 16), 1.0, torch.Generator().manual_seed(6))
    assert out_gpu.is_cuda
    torch.testing.assert_close(out_gpu.cpu(), out_cpu, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(t_gpu.cpu(), t_cpu, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------- schedules


@pytest.mark.parametrize("kind", ["constant", "ramp", "exp"])
def test_schedule_endpoints_and_monotone(kind):
    sched = AugmentSchedule(kind, 0.55, delay=3, total_epochs=20)
    assert all(sched(t) == 0.0 for t in range(0, 3))
    assert sched(3) == (0.55 if kind == "constant" else 0.0)
    assert sched(20) == pytest.approx(0.55) and sched(25) == pytest.approx(0.55)
    values = [sched(t / 4) for t in range(0, 25 * 4)]
    assert all(b >= a for a, b in zip(values, values[1:]))
    assert max(values) <= 0.55 + 1e-12


def test_exp_schedule_limits():
    ramp = AugmentSchedule("ramp", 0.5, 2, 12)
    step = AugmentSchedule("exp", 0.5, 2, 12, exp_decay=100.0)
    lin = AugmentSchedule("exp", 0.5, 2, 12, exp_decay=1e-4)
    assert step(3) > 0.499 and step(2) == 0.0
    for t in range(2, 13):
        assert lin(t) == pytest.approx(ramp(t), abs=1e-4)
    mid = AugmentSchedule("exp", 0.5, 0, 10, exp_decay=5.0)(5)
    assert mid == pytest.approx(0.5 * (1 - math.exp(-2.5)) / (1 - math.exp(-5)))


def test_schedule_from_config():
    cfg = AugConfig(enabled=True, schedule="ramp", p_max=0.4, delay=1)
    sched = AugmentSchedule.from_config(cfg, total_epochs=5)
    assert sched(0) == 0.0 and sched(3) == pytest.approx(0.2) and sched(5) == pytest.approx(0.4)
    off = AugmentSchedule.from_config(OmegaConf.structured(AugConfig(enabled=False, p_max=0.9)), 5)
    assert not off.enabled and all(off(t) == 0.0 for t in range(10))


# --------------------------------------------------------------------------- errors, CLI helpers


@pytest.mark.parametrize("args,match", [
    (("linear", 0.5, 0, 10), "'linear'"), (("ramp", 1.5, 0, 10), "1.5"), (("ramp", 0.5, -1, 10), "-1"),
    (("ramp", 0.5, 10, 10), "delay = 10"), (("ramp", 0.5, 0, 0), "total_epochs = 0"),
    (("exp", 0.5, 0, 10, 0.0), "exp_decay = 0.0"),
])
def test_schedule_invalid_args(args, match):
    with pytest.raises(ValueError, match=match):
        AugmentSchedule(*args)
    with pytest.raises(ValueError, match="epoch = -1"):
        AugmentSchedule("ramp", 0.5, 0, 10)(-1)


def test_invalid_inputs_raise_clear_errors():
    aug, k = MRAugment(), _kspace(dtype=torch.complex64)
    with pytest.raises(TypeError, match="ndarray"):
        aug.augment(k.numpy(), (8, 8), 0.5)
    with pytest.raises(ValueError, match=r"\(4, 32\)"):
        aug.augment(k[:, :, 0], (8, 8), 0.5)
    with pytest.raises(ValueError, match="4, 32, 24, 3"):
        aug.augment(torch.zeros(C, H, W, 3), (8, 8), 0.5)
    with pytest.raises(ValueError, match="p = 1.5"):
        aug.augment(k, (8, 8), 1.5)
    with pytest.raises(ValueError, match="target_size"):
        aug.augment(k, (0, 8), 0.5)
    with pytest.raises(TypeError, match="generator"):
        aug.augment(k, (8, 8), 0.5, generator=3)
    bad = AugConfig(max_scaling=1.5)
    with pytest.raises(ValueError, match="aug.max_scaling = 1.5"):
        MRAugment(bad)
    bad = AugConfig()
    bad.weights.rotation = -1.0
    with pytest.raises(ValueError, match="aug.weights.rotation = -1.0"):
        MRAugment(bad)


def test_bench_augment_small():
    res = bench_augment(shape=(2, 16, 12), repeats=2)
    assert res["ms_per_slice"] > 0 and res["shape"] == (2, 16, 12) and res["device"] == "cpu"
    with pytest.raises(ValueError, match="repeats = 0"):
        bench_augment(shape=(2, 16, 12), repeats=0)


def test_preview_writes_png_from_a_synthetic_file(tmp_path):
    from varnet_ds.sim.augment_preview import write_preview
    from varnet_ds.sim.synth import write_dataset

    path = write_dataset("knee", tmp_path, volumes=1, slices=2, coils=2, shape=(32, 24), recon_size=(16, 16))[0]
    out = tmp_path / "preview.png"
    write_preview(str(out), str(path), slice_idx=1, draws=2, p_values=(0.0, 1.0))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="--slice 5 out of range"):
        write_preview(str(out), str(path), slice_idx=5)
    with pytest.raises(FileNotFoundError, match="missing.h5"):
        write_preview(str(out), str(tmp_path / "missing.h5"))

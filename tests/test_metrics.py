"""Tests for varnet_ds.eval.metrics: fastMRI metric definitions, per-volume accumulation, gathering, summaries."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
import torch.distributed as dist
from fastmri import evaluate
from fastmri.data.transforms import center_crop
from runstats import Statistics

from varnet_ds.eval.metrics import (
    VolumeAccumulator,
    aggregate_stats,
    evaluation_crop,
    gather,
    summarize,
    volume_metrics,
)
from varnet_ds.run_folder import VolumeRow


def _volume(seed: int, slices: int = 3, size: int = 32, noise: float = 0.1):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    target = np.stack([np.sin(3 * xx + s) ** 2 + yy for s in range(slices)]).astype(np.float32)
    target += 0.05 * rng.random(target.shape, dtype=np.float32)
    recon = (target + noise * rng.standard_normal(target.shape)).astype(np.float32)
    return target, recon


@pytest.mark.parametrize("maxval", [None, 3.0])
def test_volume_metrics_equal_fastmri_evaluate(maxval):
    target, recon = _volume(0)
    got = volume_metrics(target, recon, maxval)
    assert set(got) == {"ssim", "psnr", "nmse"} and all(type(v) is float for v in got.values())
    assert got["ssim"] == pytest.approx(float(np.asarray(evaluate.ssim(target, recon, maxval)).item()), abs=1e-12)
    assert got["psnr"] == pytest.approx(float(evaluate.psnr(target, recon, maxval)), abs=1e-12)
    assert got["nmse"] == pytest.approx(float(evaluate.nmse(target, recon)), abs=1e-12)
    # and the definitions themselves: whole-volume NMSE, PSNR with data range maxval
    t, r = target.astype(np.float64), recon.astype(np.float64)
    assert got["nmse"] == pytest.approx(np.sum((t - r) ** 2) / np.sum(t**2), rel=1e-5)
    data_range = t.max() if maxval is None else maxval
    assert got["psnr"] == pytest.approx(10 * np.log10(data_range**2 / np.mean((t - r) ** 2)), rel=1e-5)


def test_volume_metrics_properties_and_errors():
    target, recon = _volume(1)
    with np.errstate(divide="ignore"):
        perfect = volume_metrics(target, target)
    assert perfect["ssim"] == pytest.approx(1.0) and perfect["nmse"] == 0.0 and perfect["psnr"] == math.inf
    # SSIM is the mean of per-slice SSIMs computed with the *volume* data range
    per_slice = [volume_metrics(target[s : s + 1], recon[s : s + 1], float(target.max()))["ssim"] for s in range(3)]
    assert volume_metrics(target, recon)["ssim"] == pytest.approx(np.mean(per_slice))
    assert volume_metrics(target, recon, 10 * target.max())["ssim"] != pytest.approx(
        volume_metrics(target, recon)["ssim"])
    with pytest.raises(ValueError, match="slices, H, W"):
        volume_metrics(target[0], recon[0])
    with pytest.raises(ValueError, match="shape"):
        volume_metrics(target, recon[:, :30])
    with pytest.raises(ValueError, match="maxval"):
        volume_metrics(target, recon, 0.0)


def test_evaluation_crop_is_fastmri_crop():
    rng = np.random.default_rng(2)
    target = rng.random((2, 40, 32)).astype(np.float32)
    recon = rng.random((2, 64, 48)).astype(np.float32)
    t, r = evaluation_crop(target, recon)
    assert t.shape == r.shape == (2, 32, 32)
    np.testing.assert_array_equal(t, center_crop(target, (32, 32)))
    np.testing.assert_array_equal(r, center_crop(recon, (32, 32)))
    with pytest.raises(ValueError, match="reconstruction of shape"):
        evaluation_crop(target, recon[:, :20])


def _feed(acc: VolumeAccumulator, volumes: dict, seed: int = 0) -> None:
    """Adds every slice of every volume in shuffled order, plus padding repeats with garbage contents."""
    items = [(k, s) for k in volumes for s in range(volumes[k][0].shape[0])]
    random.Random(seed).shuffle(items)
    for (fname, accel), s in items:
        target, recon, acq = volumes[(fname, accel)]
        acc.add(fname, torch.tensor(s), torch.from_numpy(recon[s]), torch.from_numpy(target[s])[None],
                torch.tensor([float(target.max())]), acq, torch.tensor(accel))
    for (fname, accel), s in items[:3]:  # repeats of already seen slices (sampler padding)
        target, _, acq = volumes[(fname, accel)]
        acc.add(fname, s, np.zeros_like(target[s]), target[s], float(target.max()), acq, accel)


def test_accumulator_per_volume_equals_volume_metrics():
    volumes = {}
    for i, (fname, accel, acq) in enumerate(
        [("file_a.h5", 4, "CORPD_FBK"), ("file_a.h5", 8, "CORPD_FBK"), ("file_b.h5", 4, "CORPDFS_FBK")]
    ):
        target, recon = _volume(10 + i, slices=3 + i, noise=0.05 * (i + 1))
        volumes[(fname, accel)] = (target, recon, acq)
    other_target, other_recon = _volume(99)
    acc = VolumeAccumulator(owned=["/data/knee/val/file_a.h5", "file_b.h5"])  # paths match by base name
    _feed(acc, volumes)
    for s in range(3):  # a volume owned by another rank (padding on this one)
        acc.add("file_c.h5", s, other_recon[s], other_target[s], float(other_target.max()), "AXT2", 4)
    assert acc.num_duplicates == 3 and acc.num_not_owned == 3
    assert len(acc) == sum(v[0].shape[0] for v in volumes.values())

    results = acc.compute_local()
    assert [(r.fname, r.acceleration) for r in results] == sorted(volumes)
    for r in results:
        target, recon, acq = volumes[(r.fname, r.acceleration)]
        expected = volume_metrics(target, recon, float(target.max()))
        assert (r.acquisition, r.num_slices) == (acq, target.shape[0])
        assert (r.ssim, r.psnr, r.nmse) == pytest.approx((expected["ssim"], expected["psnr"], expected["nmse"]))


def test_accumulator_rejects_inconsistent_slices():
    target, recon = _volume(3)
    acc = VolumeAccumulator()
    acc.add("f.h5", 0, recon[0], target[0], 2.0, "AXT1", 4)
    with pytest.raises(ValueError, match="f.h5 slice 1"):
        acc.add("f.h5", 1, recon[1], target[1], 3.0, "AXT1", 4)  # other max for the same volume
    with pytest.raises(ValueError, match="f.h5 slice 2.*crop"):
        acc.add("f.h5", 2, recon[2, :16], target[2], 2.0, "AXT1", 4)
    with pytest.raises(ValueError, match="one slice"):
        acc.add("g.h5", 0, recon, target, 2.0, "AXT1", 4)


def _result(fname, acq, accel, ssim, psnr, nmse, slices=3):
    return VolumeRow(fname, acq, accel, slices, ssim, psnr, nmse)


def test_gather_without_process_group_dedups_and_sorts():
    a4 = _result("b.h5", "AXT2", 4, 0.9, 30.0, 0.01)
    a8 = _result("b.h5", "AXT2", 8, 0.8, 28.0, 0.02)
    c4 = _result("a.h5", "AXT1", 4, 0.7, 25.0, 0.03)
    assert gather([a8, a4, c4, a4]) == [c4, a4, a8]
    with pytest.warns(RuntimeWarning, match="different slice counts"):
        assert gather([a4, a4._replace(num_slices=1)]) == [a4]


def test_gather_with_process_group(tmp_path):
    assert not dist.is_initialized()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        results = [_result("b.h5", "AXT2", 4, 0.9, 30.0, 0.01), _result("a.h5", "AXT1", 4, 0.7, 25.0, 0.03)]
        assert gather(results) == sorted(results, key=lambda r: (r.fname, r.acceleration))
    finally:
        dist.destroy_process_group()


def test_aggregate_stats_matches_fastmri_runstats():
    values = [0.91, 0.85, 0.78, 0.88]
    stats = Statistics()
    for v in values:
        stats.push(v)
    got = aggregate_stats(values)
    assert got.mean == pytest.approx(stats.mean()) and got.two_std == pytest.approx(2 * stats.stddev())
    assert got.count == 4
    assert math.isnan(aggregate_stats([0.5]).two_std)
    with pytest.raises(ValueError, match="non-empty"):
        aggregate_stats([])


def test_summarize_rows():
    results = [
        _result("k1.h5", "AXT1", 4, 0.90, 33.0, 0.010),
        _result("k1.h5", "AXT1", 8, 0.80, 30.0, 0.020),
        _result("k2.h5", "AXT2", 4, 0.95, 35.0, 0.005),
        _result("k3.h5", "AXT2", 4, 0.85, 31.0, 0.015),
        _result("k3.h5", "AXT2", 8, 0.75, 29.0, 0.030),
    ]
    rows = summarize(results)
    keys = [(r.get("acquisition"), r.get("acceleration")) for r in rows]
    assert keys == [(None, None), ("AXT1", None), ("AXT2", None), (None, 4), (None, 8),
                    ("AXT1", 4), ("AXT1", 8), ("AXT2", 4), ("AXT2", 8)]

    def members(acq, accel):
        return [r for r in results if acq in (None, r.acquisition) and accel in (None, r.acceleration)]

    for row, (acq, accel) in zip(rows, keys):
        group = members(acq, accel)
        assert row["num_volumes"] == len(group)
        for name in ("ssim", "psnr", "nmse"):
            vals = [getattr(r, name) for r in group]
            assert row[name] == pytest.approx(np.mean(vals))
            if len(vals) > 1:
                assert row[f"{name}_2std"] == pytest.approx(2 * np.std(vals, ddof=1))
            else:
                assert math.isnan(row[f"{name}_2std"])
    assert set(rows[0]) == {"ssim", "psnr", "nmse", "ssim_2std", "psnr_2std", "nmse_2std", "num_volumes"}
    with pytest.raises(ValueError, match="no volume results"):
        summarize([])

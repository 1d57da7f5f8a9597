"""Tests for varnet_ds.data.datasets / samplers: transform parity with fastMRI, masks, subsets, samplers, seeds."""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import torch
from fastmri.data import SliceDataset
from fastmri.data import transforms as T
from torch.utils.data import DistributedSampler

from varnet_ds.config import load_config
from varnet_ds.data.datasets import (
    VarNetTransform,
    build_eval_dataset,
    build_mask_func,
    build_train_dataset,
    make_slice_dataset,
    volume_table,
)
from varnet_ds.data.fastmri_file import DataError
from varnet_ds.data.samplers import DistributedVolumeSampler, build_loader, seed_worker, set_loader_epoch
from varnet_ds.seeding import worker_seed


def _raw(folder: Path):
    """fastMRI's own SliceDataset without a transform: (kspace, mask, target, attrs, fname, slice)."""
    return SliceDataset(folder, "multicoil", transform=None)


def _assert_same_sample(a: T.VarNetSample, b: T.VarNetSample) -> None:
    assert torch.equal(a.masked_kspace, b.masked_kspace)
    assert torch.equal(a.mask, b.mask) and a.mask.dtype == b.mask.dtype == torch.bool
    assert torch.equal(a.target, b.target)
    assert (a.num_low_frequencies, a.fname, a.slice_num, a.max_value, a.crop_size) == (
        b.num_low_frequencies, b.fname, b.slice_num, b.max_value, b.crop_size)


def _copy_folder(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# --- masks and the transform ---


def test_build_mask_func_errors_name_the_value():
    with pytest.raises(ValueError, match="'gaussian'"):
        build_mask_func("gaussian", [0.08], [4])
    with pytest.raises(ValueError, match="equal length"):
        build_mask_func("random", [0.08, 0.04], [4])
    with pytest.raises(ValueError, match="accelerations"):
        build_mask_func("random", [0.08], [0])
    a = build_mask_func("random", [0.08, 0.04], [4, 8], seed=3)
    b = build_mask_func("random", [0.08, 0.04], [4, 8], seed=3)
    shape = (1, 64, 48, 2)
    for _ in range(4):
        assert torch.equal(a(shape)[0], b(shape)[0])


@pytest.mark.parametrize("use_seed", [True, False])
def test_transform_without_aug_equals_fastmri(synth_dirs, use_seed):
    raw = _raw(synth_dirs["train"])
    ours = VarNetTransform(build_mask_func("random", [0.08, 0.04], [4, 8], seed=7), use_seed=use_seed)
    ref = T.VarNetDataTransform(build_mask_func("random", [0.08, 0.04], [4, 8], seed=7), use_seed=use_seed)
    masks = []
    for i in range(len(raw)):
        a, b = ours(*raw[i]), ref(*raw[i])
        _assert_same_sample(a, b)
        masks.append(a.mask)
        pad_l, pad_r = raw[i][3]["padding_left"], raw[i][3]["padding_right"]
        assert not a.mask[..., :pad_l, :].any() and not a.mask[..., pad_r:, :].any()
    if not use_seed:  # training masks are redrawn per slice
        assert any(not torch.equal(masks[0], m) for m in masks[1:])


def test_eval_masks_fixed_per_volume_and_across_calls(synth_dirs):
    for split, mask_type, cf, acc in (("val", "random", 0.08, 4), ("brain", "equispaced", 0.04, 8)):
        masks = {}
        for _ in range(2):  # two independent datasets: same masks
            ds = build_eval_dataset(synth_dirs[split], mask_type, cf, acc)
            for i in range(len(ds)):
                s = ds[i]
                masks.setdefault(s.fname, []).append(s.mask)
                assert s.num_low_frequencies == round(s.mask.shape[-2] * cf)
        for fname, ms in masks.items():
            assert len(ms) >= 2
            assert all(torch.equal(ms[0], m) for m in ms), fname
        # the mask is the one fastMRI's validation transform draws for this file
        ref = T.VarNetDataTransform(build_mask_func(mask_type, [cf], [acc]), use_seed=True)
        raw = _raw(synth_dirs[split])
        _assert_same_sample(ds[0], ref(*raw[0]))


class FakeAugmentor:
    """Test double with MRAugment's interface: negates the k-space, returns a constant target."""

    def __init__(self):
        self.calls = []

    def augment(self, kspace, target_size, p, generator=None):
        self.calls.append((kspace.clone(), tuple(target_size), p, generator))
        return -kspace, torch.full(tuple(target_size), 7.0, dtype=torch.float64)


def test_transform_with_fake_augmentor(synth_dirs):
    raw = _raw(synth_dirs["train"])
    aug = FakeAugmentor()
    tr = VarNetTransform(build_mask_func("random", [0.08], [4]), use_seed=True, augmentor=aug,
                         schedule=lambda epoch: 0.0 if epoch < 2 else 0.1 * epoch)
    ref = T.VarNetDataTransform(build_mask_func("random", [0.08], [4]), use_seed=True)
    kspace, mask, target, attrs, fname, slice_num = raw[1]

    assert tr.current_p == 0.0
    _assert_same_sample(tr(*raw[1]), ref(*raw[1]))  # p == 0: plain fastMRI path, augmentor not called
    assert aug.calls == []

    tr.set_epoch(3)
    assert tr.current_p == pytest.approx(0.3)
    out = tr(*raw[1])
    (k_in, size, p, gen), = aug.calls
    assert torch.equal(k_in, T.to_tensor(kspace))  # augmented BEFORE masking: fully sampled input
    assert size == target.shape and p == pytest.approx(0.3) and gen is tr.generator
    expected, exp_mask, nlf = T.apply_mask(-T.to_tensor(kspace), tr.mask_func, seed=tuple(map(ord, fname)),
                                           padding=(attrs["padding_left"], attrs["padding_right"]))
    assert torch.equal(out.masked_kspace, expected) and torch.equal(out.mask, exp_mask.bool())
    assert out.num_low_frequencies == nlf
    assert torch.equal(out.target, torch.full(target.shape, 7.0)) and out.target.dtype == torch.float32
    assert out.max_value == attrs["max"] and out.crop_size == tuple(attrs["recon_size"][:2])


def test_transform_requires_schedule_and_mask():
    with pytest.raises(ValueError, match="schedule"):
        VarNetTransform(build_mask_func("random", [0.08], [4]), augmentor=FakeAugmentor())
    with pytest.raises(ValueError, match="mask_func"):
        VarNetTransform(None, augmentor=FakeAugmentor(), schedule=lambda e: 1.0)


def test_transform_with_real_mraugment(synth_dirs):
    augment = pytest.importorskip("varnet_ds.data.augment")
    raw = _raw(synth_dirs["train"])
    sched = augment.AugmentSchedule("constant", p_max=1.0, delay=0, total_epochs=10)

    def make(seed):
        tr = VarNetTransform(build_mask_func("random", [0.08], [4]), use_seed=True,
                             augmentor=augment.MRAugment(), schedule=sched)
        tr.reseed(seed)
        return tr

    a, b, c = make(1)(*raw[0]), make(1)(*raw[0]), make(2)(*raw[0])
    _assert_same_sample(a, b)  # reproducible from the seed
    assert not torch.equal(a.masked_kspace, c.masked_kspace)  # and seed-dependent
    kspace, _, target, attrs, _, _ = raw[0]
    assert a.masked_kspace.shape == T.to_tensor(kspace).shape and a.target.shape == target.shape
    assert not torch.equal(a.target, torch.from_numpy(target))  # target re-simulated
    assert a.max_value == attrs["max"]
    cols = ~a.mask[0, 0, :, 0]
    assert torch.count_nonzero(a.masked_kspace[:, :, cols]) == 0  # mask applied after augmentation


# --- datasets ---


def test_make_slice_dataset_subsets(synth_dirs, tmp_path):
    folder = _copy_folder(synth_dirs["train"], tmp_path / "train")
    (folder / "README.txt").write_text("not data")  # ignored (fastMRI's SliceDataset would fail on it)
    names = sorted(f.name for f in folder.glob("*.h5"))
    full = make_slice_dataset(folder, None)
    total = len(full)
    assert sorted(volume_table(full)) == names

    assert sorted(volume_table(make_slice_dataset(folder, None, skip_files=[names[0]]))) == names[1:]
    assert sorted(volume_table(make_slice_dataset(folder, None, max_volumes=2))) == names[:2]

    def picks(**kw):
        random.seed(kw.pop("global_seed"))  # the global RNG must not matter (every rank must agree)
        ds = make_slice_dataset(folder, None, **kw)
        return [(Path(f).name, s) for f, s, _ in ds.raw_samples]

    a = picks(sample_rate=0.5, seed=1, global_seed=0)
    assert a == picks(sample_rate=0.5, seed=1, global_seed=99)
    assert len(a) == round(total * 0.5) and len(set(a)) == len(a)
    assert picks(sample_rate=0.5, seed=2, global_seed=0) != a or total < 4

    v = picks(volume_sample_rate=0.5, seed=1, global_seed=5)
    assert v == picks(volume_sample_rate=0.5, seed=1, global_seed=6)
    kept = {name for name, _ in v}
    assert len(kept) == round(len(names) * 0.5)
    table = volume_table(full)
    assert len(v) == sum(table[n]["num_slices"] for n in kept)  # whole volumes


def test_make_slice_dataset_errors(synth_dirs, tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        make_slice_dataset(tmp_path / "nowhere", None)
    with pytest.raises(ValueError, match="sample_rate = 1.5"):
        make_slice_dataset(synth_dirs["val"], None, sample_rate=1.5)
    with pytest.raises(ValueError, match="not both"):
        make_slice_dataset(synth_dirs["val"], None, sample_rate=0.5, volume_sample_rate=0.5)
    names = [f.name for f in synth_dirs["val"].glob("*.h5")]
    with pytest.raises(DataError, match="no slices left"):
        make_slice_dataset(synth_dirs["val"], None, skip_files=names)
    folder = _copy_folder(synth_dirs["val"], tmp_path / "val")
    bad = folder / "zz_bad.h5"
    shutil.copy(sorted(folder.glob("*.h5"))[0], bad)
    with h5py.File(bad, "r+") as hf:
        del hf["ismrmrd_header"]
    with pytest.raises(DataError, match="zz_bad.h5"):
        make_slice_dataset(folder, None)
    assert len(volume_table(make_slice_dataset(folder, None, skip_files=[bad]))) == len(names)


def test_volume_table_matches_files(synth_dirs):
    ds = make_slice_dataset(synth_dirs["brain"], None)
    table = volume_table(ds)
    for f in synth_dirs["brain"].glob("*.h5"):
        with h5py.File(f, "r") as hf:
            row = table[f.name]
            assert row["acquisition"] == hf.attrs["acquisition"]
            assert row["max"] == pytest.approx(float(hf.attrs["max"]))
            assert row["num_slices"] == hf["kspace"].shape[0]
            assert row["slices"] == list(range(hf["kspace"].shape[0]))
            assert row["encoding_size"][:2] == hf["kspace"].shape[-2:]


def test_build_datasets_from_config(synth_dirs):
    cfg = load_config(None, [f"data.train_path={synth_dirs['train']}", "data.volume_sample_rate=0.5",
                             "run.seed=5"])
    ds = build_train_dataset(cfg)
    assert isinstance(ds.transform, VarNetTransform) and not ds.transform.use_seed
    assert len(volume_table(ds)) == round(3 * 0.5)
    s = ds[0]
    assert s.masked_kspace.ndim == 4 and s.target.shape == tuple(s.crop_size)
    with pytest.raises(ValueError, match="data.train_path"):
        build_train_dataset(load_config(None, []))
    ev = build_eval_dataset(synth_dirs["brain"], "equispaced", 0.08, 4, max_volumes=1)
    assert len(volume_table(ev)) == 1 and ev.transform.use_seed


# --- samplers ---


def _fake_dataset(slice_counts):
    raw = [(Path(f"/d/vol{v:02d}.h5"), s, {}) for v, n in enumerate(slice_counts) for s in range(n)]
    return SimpleNamespace(raw_samples=raw)


@pytest.mark.parametrize("slice_counts", [[3, 3, 3], [5, 1, 2, 7, 3], [4], [2, 6]])
@pytest.mark.parametrize("world", [1, 2, 3, 4, 6])
def test_volume_sampler_properties(slice_counts, world):
    ds = _fake_dataset(slice_counts)
    vol_of = [Path(r[0]).name for r in ds.raw_samples]
    samplers = [DistributedVolumeSampler(ds, world, r) for r in range(world)]
    lengths = {len(list(s)) for s in samplers}
    assert lengths == {len(samplers[0])}  # equal on every rank
    owned = [v for s in samplers for v in s.owned_volumes]
    assert sorted(owned) == sorted(set(vol_of))  # every volume owned exactly once
    real = []
    for s in samplers:
        idx = list(s)
        own, pad = idx[: s.num_owned_samples], idx[s.num_owned_samples:]
        assert {vol_of[i] for i in own} == s.owned_volumes
        for v in s.owned_volumes:  # volumes never split: all of its slices on this rank
            assert sorted(i for i in own if vol_of[i] == v) == [i for i, n in enumerate(vol_of) if n == v]
        if s.owned_volumes:
            assert {vol_of[i] for i in pad} <= s.owned_volumes  # padding repeats own slices
        else:
            assert {vol_of[i] for i in pad} == {vol_of[0]}  # rank without volumes repeats volume 0
        real += own
    assert sorted(real) == list(range(len(vol_of)))


def test_volume_sampler_on_dataset_and_errors(synth_dirs):
    ds = build_eval_dataset(synth_dirs["val"], "random", 0.08, 4)
    s = [DistributedVolumeSampler(ds, 3, r) for r in range(3)]
    assert s[2].owned_volumes == set() and len(s[2]) == len(s[0]) > 0
    names = {ds[i].fname for i in list(s[0])[: s[0].num_owned_samples]}
    assert names == s[0].owned_volumes
    with pytest.raises(ValueError, match="rank 3"):
        DistributedVolumeSampler(ds, 3, 3)


# --- seeding and loaders ---


def test_seed_worker_reproducible_and_distinct():
    def draws(*args):
        mf = build_mask_func("random", [0.08], [4])
        tr = VarNetTransform(mf)
        seed = seed_worker(*args, transform=tr)
        return (seed, random.random(), float(np.random.rand()), float(torch.rand(1)), mf((1, 64, 48, 2))[0],
                float(torch.rand(1, generator=tr.generator)))

    base = draws(42, 0, 0, 0)
    again = draws(42, 0, 0, 0)
    assert base[:4] == again[:4] and torch.equal(base[4], again[4]) and base[5] == again[5]
    others = [draws(42, 0, 1, 0), draws(42, 0, 0, 1), draws(42, 1, 0, 0), draws(43, 0, 0, 0)]
    seeds = [base[0]] + [o[0] for o in others]
    assert len(set(seeds)) == len(seeds)  # per rank, worker, epoch and run seed
    for o in others:
        assert o[1] != base[1] and o[3] != base[3] and o[5] != base[5]
    assert worker_seed(42, 0, 1, 0) != worker_seed(42, 0, 0, 1)  # no rank/worker aliasing
    with pytest.raises(ValueError, match="rank = -1"):
        worker_seed(1, 0, -1, 0)


def _epoch_masks(loader):
    return [b.mask.clone() for b in loader]


def test_loader_masks_reproducible_per_rank_epoch_and_worker_path(synth_dirs):
    def loader(rank, epoch, workers):
        cfg = load_config(None, [f"data.train_path={synth_dirs['train']}", "run.seed=3"])
        ds = build_train_dataset(cfg)
        return build_loader(ds, DistributedSampler(ds, num_replicas=2, rank=rank, seed=3), workers, 3, rank, epoch)

    ref = _epoch_masks(loader(0, 0, 0))
    batch = next(iter(loader(0, 0, 0)))
    assert batch.masked_kspace.shape[0] == 1 and len(batch.fname) == 1 and isinstance(batch.fname[0], str)
    assert all(torch.equal(a, b) for a, b in zip(ref, _epoch_masks(loader(0, 0, 0))))
    # a forked worker 0 is seeded exactly like the in-process loader
    assert all(torch.equal(a, b) for a, b in zip(ref, _epoch_masks(loader(0, 0, 1))))
    assert any(not torch.equal(a, b) for a, b in zip(ref, _epoch_masks(loader(1, 0, 0))))
    reused = loader(0, 0, 0)
    _epoch_masks(reused)
    set_loader_epoch(reused, 1)
    assert reused.dataset.transform.epoch == 1 and reused.sampler.epoch == 1
    e1 = _epoch_masks(reused)
    assert all(torch.equal(a, b) for a, b in zip(e1, _epoch_masks(loader(0, 1, 0))))
    assert any(not torch.equal(a, b) for a, b in zip(ref, e1))


def test_dataset_cache_honours_skip_files(synth_dirs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # fastMRI writes dataset_cache.pkl into the working directory
    names = sorted(f.name for f in synth_dirs["train"].glob("*.h5"))
    full = make_slice_dataset(synth_dirs["train"], None, use_dataset_cache=True)
    assert (tmp_path / "dataset_cache.pkl").exists() and sorted(volume_table(full)) == names
    cached = make_slice_dataset(synth_dirs["train"], None, use_dataset_cache=True, skip_files=names[:1])
    assert sorted(volume_table(cached)) == names[1:]

"""MRAugment in the train step (aug.device=cuda path, exercised on the CPU here)."""

import fastmri
import torch
from fastmri.data.transforms import center_crop

from varnet_ds.config import load_config
from varnet_ds.data.augment import AugmentSchedule, MRAugment
from varnet_ds.data.datasets import build_train_dataset
from varnet_ds.data.device_augment import FullySampledSample, augment_and_mask
from varnet_ds.data.loader import PerSampleSeed


def _dataset(synth_dirs, device="cuda"):
    cfg = load_config("demo", [f"data.train_path={synth_dirs['train']}", "aug.enabled=true", f"aug.device={device}",
                               "aug.schedule=constant", "aug.p_max=1.0"])
    augmentor = MRAugment(cfg.aug)
    ds = build_train_dataset(cfg, augmentor=augmentor, schedule=AugmentSchedule.from_config(cfg.aug, 5))
    ds.transform = PerSampleSeed(ds.transform, cfg.run.seed)
    return ds, augmentor


def test_worker_ships_fully_sampled_kspace_and_seeds(synth_dirs):
    ds, _ = _dataset(synth_dirs)
    sample = ds[0]
    assert isinstance(sample, FullySampledSample)
    assert sample.p == 1.0 and sample.kspace.shape[-1] == 2
    again = ds[0]
    assert (sample.aug_seed, sample.mask_seed) == (again.aug_seed, again.mask_seed)  # per-sample seeding
    assert ds[1].aug_seed != sample.aug_seed


def test_device_step_augments_then_masks(synth_dirs):
    ds, augmentor = _dataset(synth_dirs)
    batch = torch.utils.data.default_collate([ds[0], ds[2]])
    out = augment_and_mask(batch, augmentor, ds.transform.mask_func, torch.device("cpu"))
    assert out.masked_kspace.shape == batch.kspace.shape
    assert out.target.shape == batch.target.shape
    left, right = int(batch.padding[0][0]), int(batch.padding[1][0])
    assert not out.mask[0, ..., :left, :].any() and not out.mask[0, ..., right:, :].any()
    assert out.mask[0].sum() < out.mask.shape[-2]  # undersampled
    # the augmented target is the RSS crop of the augmented (unmasked) k-space: redo the draw and check
    gen = torch.Generator().manual_seed(int(batch.aug_seed[0]))
    kaug, taug = augmentor.augment(batch.kspace[0], tuple(batch.target.shape[-2:]), 1.0, generator=gen)
    rss = fastmri.rss(fastmri.complex_abs(fastmri.ifft2c(kaug)), dim=0)
    assert torch.allclose(center_crop(rss, tuple(taug.shape)), out.target[0], rtol=1e-4, atol=1e-9)
    assert torch.equal(out.masked_kspace[0], kaug * out.mask[0] + 0.0)
    assert not torch.allclose(out.target[0], batch.target[0])  # p = 1 changed the slice
    again = augment_and_mask(batch, augmentor, ds.transform.mask_func, torch.device("cpu"))
    assert torch.equal(again.masked_kspace, out.masked_kspace)

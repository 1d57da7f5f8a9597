"""The training run's data helpers, in-process with fake single-machine ranks (no process group):

- the start-up data check's verdict cache (``data.preflight.check_data``, ``data_check_cache.json``) re-checks
  exactly the files that changed (size or mtime) or were added;
- MRAugment draws and training masks depend only on (run seed, epoch, file, slice): not on the number of ranks,
  on DataLoader workers or on where in the epoch a loader starts (``data.loader.build_train_loader`` as the engine
  builds it, ``TrainData.loader`` with ``SkipSampler`` and ``PerSampleSeed``).
"""

import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import torch

from varnet_ds.config import load_config
from varnet_ds.data import loader, preflight
from varnet_ds.distributed import DistInfo


def fake_dist(rank=0, world_size=1):
    return DistInfo(rank=rank, world_size=world_size, local_rank=rank, device=torch.device("cpu"))


def paths(dirs):
    return [f"data.train_path={dirs['train']}", f"data.val_path={dirs['val']}", f"data.transfer_path={dirs['brain']}"]


# ---------------------------------------------------------------- 4. data-check cache


def test_check_cache_rechecks_changed_and_added_files_only(synth_dirs, tmp_path, monkeypatch):
    dirs = {key: tmp_path / key for key in ("train", "val", "brain")}
    for key, folder in dirs.items():
        shutil.copytree(synth_dirs[key], folder)
    cfg = load_config("demo", paths(dirs))
    cache = tmp_path / "run" / "data_check_cache.json"
    cache.parent.mkdir()
    checked = []
    real = preflight.check_file

    def counting(path, *args, **kwargs):
        checked.append(Path(path).name)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(preflight, "check_file", counting)

    def check():
        checked.clear()
        assert preflight.check_data(cfg, fake_dist(), cache) == []
        return sorted(checked)

    every = sorted(f.name for folder in dirs.values() for f in folder.glob("*.h5"))
    assert check() == every and cache.is_file()
    assert check() == []  # all verdicts cached

    grown = sorted(dirs["train"].glob("*.h5"))[1]
    before = grown.stat()
    with h5py.File(grown, "r+") as hf:  # still a valid file, a few KiB larger
        hf.create_dataset("extra", data=np.zeros(1024))
    os.utime(grown, ns=(before.st_atime_ns, before.st_mtime_ns))  # same mtime: only the size tells
    assert grown.stat().st_size != before.st_size and grown.stat().st_mtime_ns == before.st_mtime_ns
    assert check() == [grown.name]

    touched = sorted(dirs["brain"].glob("*.h5"))[0]
    before = touched.stat()
    os.utime(touched, ns=(before.st_atime_ns, before.st_mtime_ns + 5 * 10**9))  # same bytes, newer mtime
    assert check() == [touched.name]

    added = dirs["val"] / "file1001999.h5"
    shutil.copy(sorted(dirs["val"].glob("*.h5"))[0], added)
    assert check() == [added.name]
    assert check() == []


# ---------------------------------------------------------------- 6. augmentation invariance


def train_samples(synth_dirs, world_size, num_workers, epoch, skip=0):
    """{(file, slice): [(masked k-space, mask, target), ...]} of one epoch over all ``world_size`` ranks."""
    cfg = load_config("demo", [*paths(synth_dirs), "aug.enabled=true", "aug.schedule=constant", "aug.p_max=1.0",
                               f"data.num_workers={num_workers}"])
    out = {}
    for rank in range(world_size):
        train = loader.build_train_loader(cfg, fake_dist(rank, world_size), [])
        for batch in train.loader(epoch, skip=skip):
            assert train.aug_p == 1.0
            key = (Path(batch.fname[0]).name, int(batch.slice_num[0]))
            out.setdefault(key, []).append((batch.masked_kspace, batch.mask, batch.target))
    return out


def same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


def test_augmentation_and_masks_do_not_depend_on_ranks_or_workers(synth_dirs):
    raw = {}
    for f in synth_dirs["train"].glob("*.h5"):
        with h5py.File(f, "r") as hf:
            raw.update({(f.name, s): torch.from_numpy(t) for s, t in enumerate(hf["reconstruction_rss"][()])})
    by_epoch = []
    for epoch in (0, 1):
        ref = train_samples(synth_dirs, 1, 0, epoch)
        assert sorted(ref) == sorted(raw) and all(len(v) == 1 for v in ref.values())
        ref = {key: v[0] for key, v in ref.items()}
        assert any(not torch.equal(ref[key][2], raw[key]) for key in ref)  # augmented, not the file's target
        for world_size, workers, skip in ((2, 0, 0), (1, 2, 0), (2, 2, 0), (2, 0, 2)):
            got = train_samples(synth_dirs, world_size, workers, epoch, skip)
            rest = 9 - skip * world_size  # skip: batches of 1 sample per rank already done
            # 2 ranks: the padding (DistributedSampler's) repeats a sample of the epoch, with the same draw
            assert sum(map(len, got.values())) == rest + -rest % world_size, (world_size, skip)
            for key, draws in got.items():
                equal = [same(draw, ref[key]) for draw in draws]
                assert all(equal), (epoch, world_size, workers, skip, key)
        by_epoch.append(ref)
    assert any(not same(by_epoch[0][key], by_epoch[1][key]) for key in raw)  # new draws every epoch

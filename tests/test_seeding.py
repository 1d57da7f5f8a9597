"""Seeding (``varnet_ds.seeding``): every stream derived from (purpose, run seed, ...) with ``SeedSequence``.

The collisions of the earlier scheme must not come back: ``seed + 1000 * rank`` (seed 1 rank 1 = seed 1001 rank 0),
``seed + epoch`` for the data order (seed 1 epoch 1 = seed 2 epoch 0), SeedSequence's zero padding
(``[s, e, r]`` = ``[s, e, r, 0]``: an elastic reseed equal to a worker seed) and big ints split into words
(``[2**32 + 5, 7]`` = ``[5, 1, 7]``).
"""

from __future__ import annotations

import random
import zlib

import numpy as np
import pytest
import torch

from varnet_ds import seeding
from varnet_ds.data.loader import EpochOrder

SEEDS = (0, 1, 2, 42, 1000, 1001, 2000, 2001, 2**32, 2**32 + 1, -1)  # s and s + 1000, s + 2**32
RANKS = (0, 1, 2, 3)


def _first_draws():
    return random.random(), float(np.random.rand()), float(torch.rand(1))


def _all_streams():
    """{(purpose, parts): derived 64-bit seed} over a grid of seeds x ranks x purposes."""
    out = {}
    for s in SEEDS:
        for r in RANKS:
            out["process", s, r] = seeding.derive_seed("process", s, r)
            for step in (0, 1, 3, 1000):
                out["elastic", s, step, r] = seeding.derive_seed("elastic", s, step, r)
            for epoch in (0, 1, 3):
                for w in (0, 1, 2):
                    for kind in seeding.LOADER_KINDS:
                        out[f"{kind}_worker", s, epoch, r, w] = seeding.worker_seed(s, epoch, r, w, kind)
        for epoch in (0, 1, 3):
            out["order", s, epoch] = seeding.derive_seed("order", s, epoch)
            for fname, sl in (("file1000000.h5", 0), ("file1000000.h5", 1), ("file1000001.h5", 0)):
                out["sample", s, epoch, fname, sl] = seeding.sample_seed(s, epoch, fname, sl)
        for purpose in ("subsample", "transform", "globals", "mask", "augment", "planner", "benchmark", "preview"):
            out[purpose, s] = seeding.derive_seed(purpose, s)
    return out


def test_every_purpose_has_its_own_key():
    keys = [seeding.purpose_key(p) for p in seeding.PURPOSES]
    assert len(set(keys)) == len(keys) and keys[0] == zlib.crc32(b"process")
    with pytest.raises(ValueError, match="unknown purpose 'proces'.*'process'"):
        seeding.derive_seed("proces", 1)


def test_no_two_streams_of_the_grid_share_a_seed():
    streams = _all_streams()
    assert len(streams) > 1000
    seen = {}
    for key, value in streams.items():
        assert value not in seen, f"{key} and {seen[value]} share seed {value}"
        seen[value] = key
        assert 0 <= value < 2**64


def test_process_streams_of_seed_and_rank_are_distinct():
    draws = {}
    for s in SEEDS:
        for r in RANKS:
            seeding.seed_process(s, r)
            draws[s, r] = _first_draws()
    for lib in range(3):  # Python, NumPy and torch each: one first draw per (seed, rank)
        values = [d[lib] for d in draws.values()]
        assert len(set(values)) == len(values), lib
    assert draws[1, 1] != draws[1001, 0] and draws[1, 2] != draws[2001, 0]  # was seed + 1000 * rank
    assert all(draws[1, 1][lib] != draws[1001, 0][lib] for lib in range(3))
    seeding.seed_process(1, rank=1)
    assert _first_draws() == draws[1, 1]  # and reproducible
    seeding.seed_process(1, rank=0)
    assert _first_draws() == draws[1, 0]  # rank 0's stream (initial weights) depends on the seed only


def test_elastic_reseed_is_not_a_worker_or_process_stream():
    firsts = set()
    for s in (1, 1001):
        for r in (0, 1):
            for step in (0, 1):
                seeding.reseed_after_world_size_change(s, step, r)
                firsts.add(_first_draws())
                seeding.seed_globals(seeding.worker_seed(s, step, r, 0))  # was SeedSequence([s, e, r, 0])
                firsts.add(_first_draws())
                seeding.seed_globals(seeding.worker_seed(s, step, r, 0, "eval"))
                firsts.add(_first_draws())
            seeding.seed_process(s, r)
            firsts.add(_first_draws())
    assert len(firsts) == 2 * 2 * (2 * 3 + 1)


def test_encoding_is_injective():
    d = seeding.derive_seed
    assert d("order", 2**32 + 5, 7) != d("order", 5, 1, 7)  # big ints are not split into loose words
    assert d("elastic", 1, 2, 3) != d("elastic", 1, 2, 3, 0)  # no zero padding
    assert d("order", -1, 0) != d("order", 1, 0) != d("order", 2**32 - 1, 0)  # the sign is kept
    assert d("order", 0) != d("order") and d("order", np.int64(7)) == d("order", 7)
    with pytest.raises(TypeError, match="part 1 of purpose 'order' is 1.5"):
        d("order", 1, 1.5)
    with pytest.raises(TypeError, match="part 0 of purpose 'order' is True"):
        d("order", True)
    assert seeding.seed_words("mask", 3).dtype == np.uint32 and seeding.seed_words("mask", 3).shape == (4,)


def test_worker_seed_names_bad_arguments():
    with pytest.raises(ValueError, match="kind = 'test'"):
        seeding.worker_seed(1, 0, 0, 0, "test")
    with pytest.raises(ValueError, match="worker_id = -2"):
        seeding.worker_seed(1, 0, 0, -2)
    assert seeding.worker_seed(1, 0, 0, 0, "train") != seeding.worker_seed(1, 0, 0, 0, "eval")


def test_epoch_order_has_its_own_stream_per_seed_and_epoch():
    def order(seed, epoch):
        sampler = EpochOrder(50, seed)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert sorted(order(1, 0)) == list(range(50)) and len(EpochOrder(50, 1)) == 50
    assert order(1, 1) != order(2, 0)  # DistributedSampler: seed + epoch, the same permutation
    assert order(1, 0) == order(1, 0) != order(1001, 0)
    with pytest.raises(ValueError, match="size = -1"):
        EpochOrder(-1, 0)

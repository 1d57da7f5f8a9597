"""Shared pytest fixtures: small fastMRI-format multicoil folders made by our own simulator.

``synth_dirs`` (session): {"train": 3 knee volumes, "val": 2 knee volumes, "brain": 2 brain volumes (AXT1,
AXT2)}; every volume has 3 slices and 4 coils, k-space 64x48 (knee) / 64x40 (brain), recon size 32x32.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict

import pytest

from varnet_ds.sim.synth import write_dataset

SYNTH_SLICES = 3
SYNTH_COILS = 4
SYNTH_KNEE_SHAPE = (64, 48)
SYNTH_BRAIN_SHAPE = (64, 40)
SYNTH_RECON = (32, 32)


@pytest.fixture(scope="session")
def synth_dirs(tmp_path_factory) -> Dict[str, Path]:
    """Folders of simulated fastMRI multicoil h5 files (read-only: copy before modifying)."""
    root = tmp_path_factory.mktemp("synth")
    common = dict(slices=SYNTH_SLICES, coils=SYNTH_COILS, recon_size=SYNTH_RECON)
    write_dataset("knee", root / "train", volumes=3, shape=SYNTH_KNEE_SHAPE, seed=0, **common)
    write_dataset("knee", root / "val", volumes=2, shape=SYNTH_KNEE_SHAPE, seed=1, **common)
    write_dataset("brain", root / "brain", volumes=2, shape=SYNTH_BRAIN_SHAPE, seed=2, **common)
    return {"train": root / "train", "val": root / "val", "brain": root / "brain"}


@pytest.fixture(scope="session")
def synth_file(synth_dirs) -> Path:
    """One small simulated knee file (CORPD_FBK, 3 slices, 4 coils, 64x48, recon 32x32)."""
    return sorted(synth_dirs["train"].glob("*.h5"))[0]


@pytest.fixture(scope="session")
def one_rank(synth_dirs, tmp_path_factory):
    """A finished 1-process ZeRO-2 run: 2 micro-batches per step (global batch 2), 4 steps."""
    from trainrun import common, ok, run_single

    out = tmp_path_factory.mktemp("one_rank")
    ok(run_single(common(synth_dirs, out, "train.grad_accum=2", "train.max_steps=4")))
    return out


# `make test` runs `pytest -n 2 --dist loadscope`, one work unit per module (a module's fixtures are built once), with
# the scheduler below: units go out in collection order, longest first (LONG_MODULES; pytest-xdist would otherwise
# order them by their number of tests), and modules sharing a session fixture that is a training run form one unit
# (a session fixture is built once per worker that uses it). Timings: docs/measurements/2026-12-02-demo-and-tests.md.
LONG_MODULES = ("test_epochs.py", "test_survival.py",
                "test_engine.py", "test_elastic.py", "test_study.py", "test_preempt_eval.py",
                "test_faults.py", "test_compiled.py", "test_bench.py", "test_wheel.py")
SHARED_RUNS = {"test_engine.py": "one_rank", "test_elastic.py": "one_rank"}


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONG_MODULES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: file order otherwise


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ModuleUnits(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return SHARED_RUNS.get(module.rsplit("/", 1)[-1], module)

    config.option.loadscopereorder = False  # keep the collection order above
    return ModuleUnits(config, log)

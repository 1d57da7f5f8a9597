"""The demo's inputs are pinned: one hash-verified anatomy file, content hashes of simulated files, and the committed
manifest (``varnet_ds/sim/demo_manifest.json``) that ``make demo`` checks before training.

Part of the demo set (3 of its 32 files, one per set, plus the AXT1POST brain) is simulated here in-process and
compared with the manifest; the full set takes ~20 s and is what ``python -m varnet_ds.demo --write-manifest``
hashes.
"""

from __future__ import annotations

import copy
import json
import shutil
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest

from varnet_ds import demo
from varnet_ds.sim import anatomy, manifest
from varnet_ds.sim.simulate import GENERATOR_VERSION, make_spec
from varnet_ds.sim.synth import write_volume

# {set: volume indices} simulated here; brain indices cycle AXT1, AXT2, AXFLAIR, AXT1POST
SUBSET = {"knee_train": [0], "knee_val": [1], "brain": [0, 3]}


def _specs(name, indices):
    kw = dict(demo.DEMO_SETS[name])
    kind, seed = kw.pop("anatomy"), kw.pop("seed")
    kw.pop("volumes")
    return [make_spec(kind, i, seed, **kw) for i in indices]


@pytest.fixture(scope="module")
def committed():
    return manifest.load()


@pytest.fixture(scope="module")
def subset(tmp_path_factory):
    """The SUBSET files of the demo set, simulated as ``make demo`` does: {set: [file names]} and the root."""
    root = tmp_path_factory.mktemp("demo-part")
    names = {}
    for name, indices in SUBSET.items():
        (root / name).mkdir()
        names[name] = [write_volume(spec, root / name).path.name for spec in _specs(name, indices)]
    return root, names


def _copy(subset, tmp_path, committed):
    """A writable copy of the subset and a manifest reduced to its files."""
    root, names = subset
    shutil.copytree(root, tmp_path / "data")
    small = copy.deepcopy(committed)
    for name, entry in small["sets"].items():
        entry["files"] = {f: rec for f, rec in entry["files"].items() if f in names.get(name, [])}
    return tmp_path / "data", small


def test_manifest_describes_the_demo_sets(committed):
    assert committed["generator"] == {"simulator": "varnet_ds.sim.synth", "generator_version": GENERATOR_VERSION}
    assert committed["anatomy"] == {"name": anatomy.NAME, "sha256": anatomy.SHA256}
    assert demo.load_manifest() == committed  # its sets are demo.py's DEMO_SETS
    for name, kw in demo.DEMO_SETS.items():
        expected = sorted(s.fname for s in _specs(name, range(kw["volumes"])))
        assert sorted(committed["sets"][name]["files"]) == expected, name


def test_part_of_the_demo_set_matches_the_manifest(subset, committed):
    root, names = subset
    assert manifest.check(root, committed, only=names) == []
    with h5py.File(root / "brain" / names["brain"][1], "r") as hf:
        assert hf.attrs["acquisition"] == "AXT1POST" and hf.attrs["anatomy_sha256"] == anatomy.SHA256


def test_a_changed_file_is_refused_with_its_name(subset, committed, tmp_path):
    data, small = _copy(subset, tmp_path, committed)
    demo.verify_data(small, simulated_now=False, root=data)  # the untouched copy passes
    knee = sorted((data / "knee_val").glob("*.h5"))[0]
    with h5py.File(knee, "r+") as hf:
        hf["kspace"][0, 0, 10, 10] += np.complex64(1e-9)
    brain = sorted((data / "brain").glob("*.h5"))[0]
    with h5py.File(brain, "r+") as hf:  # as if made from another brain
        hf["reconstruction_rss"][0] *= np.float32(1.1)
        hf.attrs["norm"] = float(hf.attrs["norm"]) * 1.05
        hf.attrs["anatomy_source"] = "Colin27 ch2.nii.gz (mricron-data)"
    problems = manifest.check(data, small)
    assert len(problems) == 2
    assert str(knee) in problems[0] and "the same target, so k-space or attributes differ" in problems[0]
    assert str(brain) in problems[1] and "different content" in problems[1]
    assert "produced by: simulator varnet_ds.sim.synth, generator_version 2, anatomy_source Colin27" in problems[1]
    with pytest.raises(SystemExit) as stop:
        demo.verify_data(small, simulated_now=False, root=data)
    msg = str(stop.value)
    assert str(knee) in msg and str(brain) in msg and demo.FRESH_COMMAND in msg and anatomy.NAME in msg
    with pytest.raises(SystemExit) as stop:  # freshly simulated and still different: this machine differs
        demo.verify_data(small, simulated_now=True, root=data)
    assert demo.WRITE_COMMAND in str(stop.value) and str(brain) in str(stop.value)


def test_missing_and_extra_files_are_named(subset, committed, tmp_path):
    data, small = _copy(subset, tmp_path, committed)
    gone = sorted((data / "brain").glob("*.h5"))[1]
    gone.rename(data / "knee_train" / "file9999999.h5")
    problems = manifest.check(data, small)
    assert problems == [f"{data / 'knee_train' / 'file9999999.h5'}: extra file (not in the manifest)",
                        f"{gone}: missing (listed in the manifest)"]


def test_content_hash_is_of_content_not_layout(subset, tmp_path):
    root, names = subset
    src = root / "knee_train" / names["knee_train"][0]
    digest = manifest.content_sha256(src)
    other = tmp_path / src.name
    with h5py.File(src, "r") as a, h5py.File(other, "w", libver="latest") as b:
        for key in reversed(list(a)):  # other order, chunking, compression and library format
            b.create_dataset(key, data=a[key][()], **({"chunks": True, "compression": "gzip"} if a[key].ndim else {}))
        for key in reversed(list(a.attrs)):
            b.attrs[key] = a.attrs[key]
        b.attrs["produced_by"] = "varnet_ds 9.9; numpy 1.26.4"  # informational: not hashed
    assert other.read_bytes() != src.read_bytes() and manifest.content_sha256(other) == digest
    with h5py.File(other, "r+") as b:
        b.attrs["seed"] = 2
    assert manifest.content_sha256(other) != digest


def test_demo_stops_without_the_anatomy_file(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(demo, "DATA", tmp_path / "demo-data")
    monkeypatch.setenv(anatomy.ENV_DIR, str(tmp_path / "empty"))
    with pytest.raises(SystemExit) as stop:
        demo.make_data(fresh=True)
    err = capsys.readouterr().err
    assert stop.value.code == 2  # a missing setup step: usage, not bad data
    assert anatomy.FETCH_COMMAND in err and "missing" in err
    assert not (tmp_path / "demo-data").exists()


def test_fetch_installs_only_the_pinned_file(tmp_path, monkeypatch, capsys):
    real = anatomy.require().read_bytes()
    monkeypatch.setenv(anatomy.ENV_DIR, str(tmp_path / "share"))
    wrong = tmp_path / "nilearn-0.0-py3-none-any.whl"
    with zipfile.ZipFile(wrong, "w") as zf:
        zf.writestr(anatomy.WHEEL_MEMBER, real[:-1] + bytes([real[-1] ^ 1]))
    with pytest.raises(anatomy.AnatomySourceError, match="sha256"):
        anatomy.fetch(wrong)
    empty = tmp_path / "empty.whl"
    with zipfile.ZipFile(empty, "w") as zf:
        zf.writestr("nilearn/__init__.py", "")
    with pytest.raises(anatomy.AnatomySourceError, match=anatomy.WHEEL_MEMBER):
        anatomy.fetch(empty)
    assert not anatomy.template_path().exists()
    wheel = tmp_path / "nilearn-0.14.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(anatomy.WHEEL_MEMBER, real)
    assert anatomy.main(["fetch", "--from", str(wheel)]) == 0
    assert anatomy.template_path().read_bytes() == real and anatomy.require() == anatomy.template_path()
    assert "verified" in capsys.readouterr().out
    assert [p.name for p in anatomy.template_path().parent.iterdir()] == [anatomy.FILENAME]  # no temporary left


def test_study_folder_is_bound_to_its_data(tmp_path, monkeypatch, committed):
    monkeypatch.setattr(demo, "RUNS", tmp_path)
    demo.bind_study("demo", committed)
    demo.bind_study("demo", committed)  # same data: fine
    assert json.loads((tmp_path / "demo" / demo.STUDY_DATA).read_text())["data_sha256"] == \
        manifest.data_sha256(committed)
    other = copy.deepcopy(committed)
    next(iter(other["sets"]["brain"]["files"].values()))["sha256"] = "0" * 64
    with pytest.raises(SystemExit, match="trained on other demo data"):
        demo.bind_study("demo", other)
    (tmp_path / "old" / "baseline-s1").mkdir(parents=True)
    with pytest.raises(SystemExit, match="predate the data manifest"):
        demo.bind_study("old", committed)


def test_bad_manifests_are_named(tmp_path, committed):
    path = tmp_path / "m.json"
    path.write_text("{not json")
    with pytest.raises(SystemExit, match=str(path)):
        demo.load_manifest(path)
    bad = copy.deepcopy(committed)
    bad["sets"]["brain"]["spec"]["volumes"] = 3
    path.write_text(json.dumps(bad))
    with pytest.raises(SystemExit, match="DEMO_SETS"):
        demo.load_manifest(path)
    del bad["anatomy"]
    path.write_text(json.dumps(bad))
    with pytest.raises(manifest.ManifestError, match="'anatomy'"):
        manifest.load(path)
    assert manifest.load(Path(manifest.DEMO_MANIFEST)) == committed

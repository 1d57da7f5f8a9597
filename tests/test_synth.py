"""The fastMRI-format simulator: files read by fastMRI itself, header/padding, targets, attrs, determinism, CLI."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import fastmri
import h5py
import numpy as np
import pytest
import torch
from fastmri.data import SliceDataset
from fastmri.data.subsample import RandomMaskFunc
from fastmri.data.transforms import VarNetDataTransform, VarNetSample, center_crop, to_tensor

from varnet_ds.sim import anatomy, brain_anatomy, mri_physics
from varnet_ds.sim.fastmri_header import encoding_limits
from varnet_ds.sim.knee_phantom import knee_slice, sample_knee_params
from varnet_ds.sim.simulate import GENERATOR_VERSION, make_spec
from varnet_ds.sim.synth import SIMULATOR, main, write_dataset

SPLITS = {"train": (3, 48), "val": (2, 48), "brain": (2, 40)}  # volumes, k-space width


def _files(folder):
    return sorted(folder.glob("*.h5"))


@pytest.mark.parametrize("split", sorted(SPLITS))
def test_fastmri_slicedataset_reads_files(synth_dirs, split):
    volumes, width = SPLITS[split]
    transform = VarNetDataTransform(mask_func=RandomMaskFunc([0.08], [4], seed=0))
    ds = SliceDataset(synth_dirs[split], challenge="multicoil", transform=transform)
    assert len(ds) == volumes * 3
    for i in (0, len(ds) - 1):
        sample = ds[i]
        assert isinstance(sample, VarNetSample)
        assert sample.masked_kspace.shape == (4, 64, width, 2)
        assert sample.mask.shape == (1, 1, width, 1) and sample.mask.dtype == torch.bool
        assert sample.target.shape == (32, 32)
        assert tuple(sample.crop_size) == (32, 32)
        assert sample.max_value > 0 and float(sample.target.max()) <= sample.max_value
        # fastMRI zeroes the mask outside [padding_left, padding_right) read from our header
        meta = ds.raw_samples[i].metadata
        mask = sample.mask[0, 0, :, 0]
        assert not mask[: meta["padding_left"]].any() and not mask[meta["padding_right"]:].any()
        assert mask.sum() >= 4


def test_header_padding_equals_zero_columns(synth_dirs):
    ds = SliceDataset(synth_dirs["train"], challenge="multicoil")
    ds_brain = SliceDataset(synth_dirs["brain"], challenge="multicoil")
    seen = {}
    for sample in ds.raw_samples + ds_brain.raw_samples:
        seen[sample.fname] = sample.metadata
    assert len(seen) == 5
    any_padded = False
    for fname, meta in seen.items():
        with h5py.File(fname, "r") as hf:
            kspace = hf["kspace"][()]
        left, right = meta["padding_left"], meta["padding_right"]
        assert meta["encoding_size"] == (kspace.shape[2], kspace.shape[3], 1)
        assert meta["recon_size"] == (32, 32, 1)
        assert 0 <= left < kspace.shape[3] // 2 < right <= kspace.shape[3]
        assert np.all(kspace[..., :left] == 0) and np.all(kspace[..., right:] == 0), fname
        assert np.all(np.abs(kspace[..., left]) > 0) and np.all(np.abs(kspace[..., right - 1]) > 0), fname
        any_padded |= left > 0 and right < kspace.shape[3]
    assert any_padded  # the knee files always have zero columns on both sides


def test_encoding_limits_follow_fastmri_formula():
    for width, pad in ((368, (17, 16)), (320, (0, 0)), (264, (3, 5)), (48, (2, 2)), (47, (1, 2))):
        _, maximum, center = encoding_limits(width, pad)
        left = width // 2 - center
        assert (left, left + maximum + 1) == (pad[0], width - pad[1])
    with pytest.raises(ValueError, match="padding"):
        encoding_limits(10, (6, 6))


def test_target_is_fastmri_rss_of_stored_kspace(synth_dirs):
    for fname in _files(synth_dirs["train"])[:2] + _files(synth_dirs["brain"]):
        with h5py.File(fname, "r") as hf:
            kspace, target = hf["kspace"][()], hf["reconstruction_rss"][()]
        assert kspace.dtype == np.complex64 and target.dtype == np.float32
        ref = center_crop(fastmri.rss(fastmri.complex_abs(fastmri.ifft2c(to_tensor(kspace))), dim=1), (32, 32))
        np.testing.assert_allclose(target, ref.numpy(), rtol=1e-5, atol=1e-6 * float(target.max()))
        # independent float64 computation
        img = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(kspace.astype(np.complex128), axes=(-2, -1)),
                                           norm="ortho"), axes=(-2, -1))
        rss = np.sqrt((np.abs(img) ** 2).sum(1))
        h, w = rss.shape[-2:]
        np.testing.assert_allclose(target, rss[:, h // 2 - 16 : h // 2 + 16, w // 2 - 16 : w // 2 + 16],
                                   rtol=1e-4, atol=1e-5 * float(target.max()))


def test_attrs_and_file_names(synth_dirs):
    knee_acqs, brain_acqs = [], []
    for split in SPLITS:
        for fname in _files(synth_dirs[split]):
            with h5py.File(fname, "r") as hf:
                recon = hf["reconstruction_rss"][()]
                attrs = dict(hf.attrs)
                ET.fromstring(hf["ismrmrd_header"][()])  # valid XML
            assert attrs["max"] == pytest.approx(float(recon.max()), rel=1e-6)
            assert attrs["norm"] == pytest.approx(float(np.linalg.norm(recon.astype(np.float64))), rel=1e-6)
            assert re.fullmatch(r"[0-9a-f]{64}", attrs["patient_id"])
            assert attrs["simulator"] == SIMULATOR and attrs["generator_version"] == GENERATOR_VERSION
            assert attrs["produced_by"].startswith("varnet_ds ") and "numpy " in attrs["produced_by"]
            assert attrs["seed"] == {"train": 0, "val": 1, "brain": 2}[split]
            if split == "brain":
                assert re.fullmatch(r"file_brain_(AXT1|AXT2)_2(0\d|10)_\d{7}\.h5", fname.name)
                assert 2e-5 < attrs["max"] < 2e-3
                brain_acqs.append(attrs["acquisition"])
            else:
                assert re.fullmatch(r"file\d{7}\.h5", fname.name)
                assert attrs["anatomy_source"] == "procedural phantom" and "anatomy_sha256" not in attrs
                assert 2e-5 < attrs["max"] < 3e-3  # fastMRI-like magnitudes
                knee_acqs.append(attrs["acquisition"])
    assert knee_acqs == ["CORPD_FBK", "CORPDFS_FBK", "CORPD_FBK", "CORPD_FBK", "CORPDFS_FBK"]
    assert sorted(brain_acqs) == ["AXT1", "AXT2"]


def test_brain_uses_the_pinned_anatomy(synth_dirs):
    for fname in _files(synth_dirs["brain"]):
        with h5py.File(fname, "r") as hf:
            assert hf.attrs["anatomy_source"] == anatomy.NAME and "MNI152" in anatomy.NAME
            assert hf.attrs["anatomy_sha256"] == anatomy.SHA256 == anatomy.sha256_file(anatomy.require())


def test_brain_slice_orientation_matches_template():
    tpl = brain_anatomy.load_template()
    vol = brain_anatomy.contrast_volume("T1")
    pose = brain_anatomy.BrainPose(0.0, 0.0, 0.0, 1.0, (0.0, 0.0), (0.0, 0.0))
    x, y = mri_physics.grid_mm((160, 140), 1.0)
    centre_vox = np.linalg.solve(tpl.affine, np.append(tpl.centre, 1.0))[:3]
    kz = int(round(centre_vox[2])) + 10
    z_world = float((tpl.affine @ np.array([0, 0, kz, 1.0]))[2])
    img = brain_anatomy.brain_slice(pose, x, y, z_world, "T1")
    # rows run anterior -> posterior, columns patient right -> left (radiological), like fastMRI brain images
    cols = centre_vox[0] - x[0]
    rows = centre_vox[1] + y[:, 0]
    ref = vol[np.round(cols).astype(int)[None, :], np.round(rows).astype(int)[:, None], kz]
    assert np.corrcoef(img.ravel(), ref.ravel())[0, 1] > 0.95


def test_template_is_mni152_with_a_synthetic_skull():
    tpl = brain_anatomy.load_template()
    assert (tpl.source, tpl.sha256) == (anatomy.NAME, anatomy.SHA256)
    assert tpl.t1.shape == tpl.intracranial.shape == (197, 233, 189) and tpl.t1.dtype == np.float32
    assert tpl.intracranial.max() > 0.99 and tpl.affine.dtype == np.float64
    assert (tpl.t1 > 1.3).any()  # synthetic scalp fat around the skull-stripped template


@pytest.mark.parametrize("content", [None, b"not the template"])
def test_missing_or_different_anatomy_stops_with_the_install_command(tmp_path, monkeypatch, capsys, content):
    folder = tmp_path / "share"
    if content is not None:
        folder.mkdir()
        (folder / anatomy.FILENAME).write_bytes(content)
    monkeypatch.setenv(anatomy.ENV_DIR, str(folder))
    match = "missing" if content is None else "differs"
    with pytest.raises(anatomy.AnatomySourceError, match=match) as err:
        write_dataset("brain", tmp_path / "out", volumes=1, slices=1, coils=2, shape=(32, 24))
    assert anatomy.FETCH_COMMAND in str(err.value) and str(folder / anatomy.FILENAME) in str(err.value)
    assert not (tmp_path / "out").exists()  # stopped before anything was written
    with pytest.raises(anatomy.AnatomySourceError, match=match):
        brain_anatomy.contrast_volume("T2")
    assert main(["brain", "--out", str(tmp_path / "cli"), "--volumes", "1", "--shape", "32x24"]) == 2
    assert anatomy.FETCH_COMMAND in capsys.readouterr().err
    assert anatomy.main(["check"]) == 1
    write_dataset("knee", tmp_path / "knee", volumes=1, slices=1, coils=2, shape=(32, 24))  # knees need no file


def test_contrasts_are_tissue_plausible():
    tpl = brain_anatomy.load_template()
    ic = tpl.intracranial > 0.99
    csf = ic & (tpl.t1 < 0.3)
    wm = ic & (np.abs(tpl.t1 - 1.0) < 0.03)
    t1, t2, flair = (brain_anatomy.contrast_volume(c) for c in ("T1", "T2", "FLAIR"))
    assert t2[csf].mean() > 1.8 * t2[wm].mean()  # CSF bright on T2
    assert flair[csf].mean() < 0.3 * flair[wm].mean()  # CSF suppressed on FLAIR
    assert t1[csf].mean() < 0.5 * t1[wm].mean()  # CSF dark on T1
    post = brain_anatomy.contrast_volume("T1POST")
    assert (post >= t1 - 1e-6).all() and (post - t1).max() > 0.2  # enhancement only adds signal

    p = sample_knee_params(np.random.default_rng(0))
    x, y = mri_physics.grid_mm((192, 160), 1.0)
    pd, pdfs = (knee_slice(p, x, y, 0.0, c, 1.0) for c in ("PD", "PDFS"))
    body = pd > 0.05
    assert pd[body].mean() > 1.8 * pdfs[body].mean()  # fat (subcutaneous, marrow) dark with fat suppression
    assert pdfs.max() > pd[body].mean()  # fluid bright on PDFS
    with pytest.raises(ValueError, match="T3"):
        knee_slice(p, x, y, 0.0, "T3", 1.0)


def test_deterministic_for_a_seed(tmp_path):
    kw = dict(volumes=2, slices=2, coils=3, shape=(48, 40), recon_size=(24, 24))
    a = write_dataset("knee", tmp_path / "a", seed=7, **kw)
    b = write_dataset("knee", tmp_path / "b", seed=7, **kw)
    c = write_dataset("knee", tmp_path / "c", seed=8, **kw)
    assert [p.name for p in a] == [p.name for p in b]
    assert not {p.name for p in a} & {p.name for p in c}
    for pa, pb, pc in zip(a, b, c):
        with h5py.File(pa, "r") as fa, h5py.File(pb, "r") as fb, h5py.File(pc, "r") as fc:
            assert fa["kspace"][()].tobytes() == fb["kspace"][()].tobytes()
            assert fa.attrs["patient_id"] == fb.attrs["patient_id"]
            assert fa["kspace"].shape == fc["kspace"].shape
            assert not np.array_equal(fa["kspace"][()], fc["kspace"][()])
    names = {make_spec(anatomy, i, s).fname for anatomy in ("knee", "brain") for s in (0, 1, 2) for i in (0, 1, 999)}
    assert len(names) == 18


def test_interrupted_write_leaves_no_file(tmp_path, monkeypatch):
    from varnet_ds.sim import synth

    def broken(spec):
        yield from []
        raise OSError("disk full (fake)")

    monkeypatch.setattr(synth, "simulate_volume", broken)
    with pytest.raises(OSError, match="disk full"):
        synth.write_volume(make_spec("knee", 0, 0, shape=(48, 40), recon_size=(24, 24), slices=1, coils=2), tmp_path)
    assert list(tmp_path.iterdir()) == []  # neither the volume nor a temporary file


def test_defaults_match_fastmri():
    knee = [make_spec("knee", i, 3) for i in range(6)]
    for s in knee:
        assert s.shape == (640, 368) and s.recon_size == (320, 320) and s.num_coils == 15
        assert 10 <= s.num_slices <= 16 and all(14 <= p <= 19 for p in s.pad)
    assert [s.acquisition for s in knee[:2]] == ["CORPD_FBK", "CORPDFS_FBK"]
    brain = [make_spec("brain", i, 3) for i in range(24)]
    assert [s.acquisition for s in brain[:4]] == ["AXT1", "AXT2", "AXFLAIR", "AXT1POST"]
    assert {s.num_coils for s in brain} == {16, 20}
    widths = {s.shape[1] for s in brain}
    assert 320 in widths and widths & {264, 272}
    for s in brain:
        assert s.shape[0] == 640 and s.recon_size == (320, min(320, s.shape[1])) and 8 <= s.num_slices <= 16
        assert s.shape[1] == 320 or s.acquisition == "AXFLAIR"
    small = make_spec("knee", 0, 0, shape="160x128", coils=4)
    assert small.recon_size == (80, 80) and small.num_coils == 4
    # overrides leave the other random properties of a volume unchanged
    full = make_spec("brain", 5, 3)
    over = make_spec("brain", 5, 3, slices=2, coils=3, shape=(64, 40))
    assert (over.fname, over.patient_id, over.snr, over.system_model) == (
        full.fname, full.patient_id, full.snr, full.system_model)


@pytest.mark.parametrize("kwargs, match", [
    (dict(anatomy="elbow"), "elbow"),
    (dict(volumes=0), "volumes"),
    (dict(coils=0), "coils"),
    (dict(slices=0), "slices"),
    (dict(shape="64by48"), "64by48"),
    (dict(shape=(64, 48), recon_size=(80, 32)), "80x32"),
    (dict(acquisitions=["AXT2"]), "AXT2"),
    (dict(seed=-1), "seed"),
])
def test_bad_inputs_are_named(tmp_path, kwargs, match):
    kw = dict(anatomy="knee", out_dir=tmp_path / "out", volumes=1, slices=1, coils=2, shape=(32, 24))
    kw.update(kwargs)
    with pytest.raises(ValueError, match=match):
        write_dataset(**kw)
    assert not list(tmp_path.rglob("*.h5"))


def test_physics_helpers():
    rng = np.random.default_rng(0)
    fine = np.ones((64, 48), np.complex64) * (2 + 1j)
    np.testing.assert_allclose(mri_physics.downsample_via_kspace(fine, (32, 24)), 2 + 1j, rtol=1e-5)
    centres = np.array([[80.0 * np.cos(t), 0.0, 80.0 * np.sin(t)] for t in np.linspace(0, 6, 4)])
    chol = mri_physics.noise_cholesky(rng, centres, 0.5, 100.0)
    cov = chol @ chol.conj().T
    assert np.allclose(cov, cov.conj().T) and np.abs(np.diag(cov)).mean() == pytest.approx(1.0)
    zero = np.zeros((32, 40), np.complex64)
    sens = np.ones((4, 32, 40), np.complex64)
    k = mri_physics.acquire(zero, sens, (3, 5), 1.0, chol, rng)
    assert np.all(k[..., :3] == 0) and np.all(k[..., 35:] == 0)
    noise = k[..., 3:35].reshape(4, -1)
    emp = noise @ noise.conj().T / noise.shape[1]
    assert np.abs(emp - cov).max() < 0.1  # the noise has the requested coil correlation
    assert np.abs(cov[0, 1]) > 0.15


def test_cli_writes_files_and_prints_summary(tmp_path, capsys):
    out = tmp_path / "brain"
    argv = ["brain", "--out", str(out), "--volumes", "2", "--slices", "2", "--coils", "3", "--shape", "48x40",
            "--recon", "24x24", "--seed", "5", "--acquisitions", "AXFLAIR", "AXT1POST"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    files = _files(out)
    assert [f.name.split("_")[2] for f in files] == ["AXFLAIR", "AXT1POST"]
    assert "wrote 2 brain volume(s)" in text and all(f.name in text for f in files)
    assert "2x3x48x40" in text and " s\n" in text
    with h5py.File(files[0], "r") as hf:
        assert hf["kspace"].shape == (2, 3, 48, 40) and hf["reconstruction_rss"].shape == (2, 24, 24)


def test_cli_errors(tmp_path, capsys):
    assert main(["knee"]) == 2
    assert "--out" in capsys.readouterr().err
    assert main(["knee", "--out", str(tmp_path), "--shape", "64x"]) == 2
    assert "64x" in capsys.readouterr().err
    assert main(["knee", "--out", str(tmp_path), "--acquisitions", "AXT2"]) == 2
    assert "AXT2" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["elbow", "--out", str(tmp_path)])


def test_cli_preview_writes_png_without_files(tmp_path, capsys):
    png = tmp_path / "docs" / "preview.png"
    assert main(["knee", "--preview", str(png), "--shape", "48x40", "--coils", "3"]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "preview:" in capsys.readouterr().out
    assert not list(tmp_path.rglob("*.h5"))

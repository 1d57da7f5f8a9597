"""Tests for varnet_ds.data.check: every bad input gives an error naming the file and the problem."""

from __future__ import annotations

import json
import pickle
import shutil
import xml.etree.ElementTree as etree
from pathlib import Path

import h5py
import numpy as np
import pytest

from varnet_ds.data.check import check_folder, main
from varnet_ds.data.fastmri_file import DataError, check_file

NS = "http://www.ismrm.org/ISMRMRD"


def _copy_good(synth_dirs, tmp_path: Path, name: str = "vol.h5", split: str = "val") -> Path:
    src = sorted(synth_dirs[split].glob("*.h5"))[0]
    dst = tmp_path / name
    shutil.copy(src, dst)
    return dst


def _set_header(path: Path, keys, value: str) -> None:
    """Replace the text of one ISMRMRD header element, e.g. keys=("encodedSpace", "matrixSize", "x")."""
    with h5py.File(path, "r+") as hf:
        root = etree.fromstring(hf["ismrmrd_header"][()])
        node = root.find("." + "".join(f"//{{{NS}}}{k}" for k in ("encoding", *keys)))
        assert node is not None, keys
        node.text = value
        etree.register_namespace("", NS)
        del hf["ismrmrd_header"]
        hf["ismrmrd_header"] = etree.tostring(root)


def _header_value(path: Path, keys) -> int:
    with h5py.File(path, "r") as hf:
        root = etree.fromstring(hf["ismrmrd_header"][()])
    return int(root.find("." + "".join(f"//{{{NS}}}{k}" for k in ("encoding", *keys))).text)


def _replace(path: Path, key: str, data) -> None:
    with h5py.File(path, "r+") as hf:
        del hf[key]
        hf[key] = data


def _kspace(path: Path) -> np.ndarray:
    with h5py.File(path, "r") as hf:
        return hf["kspace"][()]


# --- corruptions: (name, function(path), expected substring of the problem) ---


def _not_hdf5(p):
    p.write_bytes(b"this is not an HDF5 file\n" * 10)


def _truncated(p):
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])


def _del(key):
    def f(p):
        with h5py.File(p, "r+") as hf:
            del hf[key]
    return f


def _wrong_rank(p):
    _replace(p, "kspace", _kspace(p)[None])


def _real_dtype(p):
    _replace(p, "kspace", np.abs(_kspace(p)).astype(np.float32))


def _real_pair_layout(p):
    ks = _kspace(p)[:, 0]
    _replace(p, "kspace", np.stack([ks.real, ks.imag], axis=-1).astype(np.float32))


def _singlecoil_3d(p):
    _replace(p, "kspace", _kspace(p)[:, 0])


def _singlecoil_esc(p):
    with h5py.File(p, "r+") as hf:
        hf["reconstruction_esc"] = hf["reconstruction_rss"][()]
        del hf["reconstruction_rss"]


def _nonfinite(value, slice_idx):
    def f(p):
        with h5py.File(p, "r+") as hf:
            ks = hf["kspace"]
            s = slice_idx % ks.shape[0]
            sl = ks[s]
            sl[0, 3, 5] = value
            ks[s] = sl
    return f


def _header(keys, value_fn):
    def f(p):
        _set_header(p, keys, str(value_fn(p)))
    return f


def _rss_slices(p):
    with h5py.File(p, "r+") as hf:
        rss = hf["reconstruction_rss"][()]
        del hf["reconstruction_rss"]
        hf["reconstruction_rss"] = rss[:-1]


def _max_attr(value):
    def f(p):
        with h5py.File(p, "r+") as hf:
            if value is None:
                del hf.attrs["max"]
            else:
                hf.attrs["max"] = value
    return f


def _bad_xml(p):
    _replace(p, "ismrmrd_header", b"<ismrmrdHeader><encoding>")


def _no_recon_element(p):
    with h5py.File(p, "r+") as hf:
        root = etree.fromstring(hf["ismrmrd_header"][()])
        enc = root.find(f".//{{{NS}}}encoding")
        enc.remove(enc.find(f"{{{NS}}}reconSpace"))
        etree.register_namespace("", NS)
        del hf["ismrmrd_header"]
        hf["ismrmrd_header"] = etree.tostring(root)


ENC_X = ("encodedSpace", "matrixSize", "x")
ENC_Y = ("encodedSpace", "matrixSize", "y")
REC_X = ("reconSpace", "matrixSize", "x")
CENTER = ("encodingLimits", "kspace_encoding_step_1", "center")

BAD_CASES = [
    ("not_hdf5", _not_hdf5, "not an HDF5 file"),
    ("truncated", _truncated, "truncated or corrupt"),
    ("no_kspace", _del("kspace"), "missing dataset 'kspace'"),
    ("no_header", _del("ismrmrd_header"), "missing dataset 'ismrmrd_header'"),
    ("no_target", _del("reconstruction_rss"), "missing dataset 'reconstruction_rss'"),
    ("wrong_rank", _wrong_rank, "must be 4-D [slices, coils, H, W]"),
    ("real_dtype", _real_dtype, "dtype float32; expected complex64 or complex128"),
    ("real_pair_layout", _real_pair_layout, "[..., 2] real/imag layout"),
    ("singlecoil_3d", _singlecoil_3d, "looks like singlecoil, varnet_ds needs multicoil"),
    ("singlecoil_esc", _singlecoil_esc, "looks like singlecoil, varnet_ds needs multicoil"),
    ("nan_slice1", _nonfinite(np.nan, 1), "'kspace' slice 1 contains 1 NaN/inf"),
    ("inf_last_slice", _nonfinite(np.inf, -1), "NaN/inf"),
    ("enc_x_mismatch", _header(ENC_X, lambda p: _header_value(p, ENC_X) + 2), "does not match 'kspace' H x W"),
    ("enc_y_mismatch", _header(ENC_Y, lambda p: _header_value(p, ENC_Y) - 4), "does not match 'kspace' H x W"),
    ("padding_outside", _header(CENTER, lambda p: -5), "is outside [0,"),
    ("recon_too_large", _header(REC_X, lambda p: _header_value(p, ENC_X) + 1), "larger than k-space"),
    ("recon_not_int", _header(REC_X, lambda p: "abc"), "is not an integer: 'abc'"),
    ("rss_slices", _rss_slices, "slices but 'kspace' has"),
    ("no_max", _max_attr(None), "missing attribute 'max'"),
    ("nan_max", _max_attr(float("nan")), "must be finite and > 0"),
    ("bad_xml", _bad_xml, "is not valid XML"),
    ("no_recon_element", _no_recon_element, "has no element encoding/reconSpace/matrixSize/x"),
]


def test_good_folder_matches_file_contents(synth_dirs):
    for split in ("train", "val", "brain"):
        report = check_folder(synth_dirs[split])
        files = sorted(synth_dirs[split].glob("*.h5"))
        assert report.ok and not report.bad
        assert [v.path.name for v in report.volumes] == [f.name for f in files]
        for vol, f in zip(report.volumes, files):
            with h5py.File(f, "r") as hf:
                s, c, h, w = hf["kspace"].shape
                assert (vol.num_slices, vol.num_coils, vol.shape) == (s, c, (h, w))
                assert vol.max_value == pytest.approx(float(hf.attrs["max"]))
                assert vol.acquisition == hf.attrs.get("acquisition")
                assert vol.recon_size == tuple(hf["reconstruction_rss"].shape[1:])
            assert 0 <= vol.padding[0] < vol.padding[1] <= vol.shape[1]
            assert vol.warnings == []
        assert report.num_slices == sum(v.num_slices for v in report.volumes)


@pytest.mark.parametrize("name,corrupt,expected", BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_bad_file_error_names_file_and_problem(synth_dirs, tmp_path, name, corrupt, expected):
    path = _copy_good(synth_dirs, tmp_path, f"{name}.h5")
    corrupt(path)
    with pytest.raises(DataError) as info:
        check_file(path)
    err = info.value
    assert err.path == path
    assert expected in err.problem
    assert str(err) == f"{path}: {err.problem}"
    # the folder check fails the same way, naming this file
    with pytest.raises(DataError, match=name):
        check_folder(tmp_path)


def test_test_folder_mode_does_not_need_target_or_max(synth_dirs, tmp_path):
    path = _copy_good(synth_dirs, tmp_path)
    _del("reconstruction_rss")(path)
    _max_attr(None)(path)
    with pytest.raises(DataError, match="reconstruction_rss"):
        check_file(path)
    info = check_file(path, require_target=False)
    assert info.max_value is None and info.num_slices > 0


def test_headers_only_skips_value_scan(synth_dirs, tmp_path):
    path = _copy_good(synth_dirs, tmp_path)
    _nonfinite(np.nan, 0)(path)
    assert check_file(path, scan_values=False).num_slices > 0
    with pytest.raises(DataError, match="slice 0"):
        check_file(path)


def test_nan_in_target_is_reported(synth_dirs, tmp_path):
    path = _copy_good(synth_dirs, tmp_path)
    with h5py.File(path, "r+") as hf:
        rss = hf["reconstruction_rss"][()]
        rss[2, 1, 1] = np.nan
        hf["reconstruction_rss"][...] = rss
    with pytest.raises(DataError, match="'reconstruction_rss' slice 2"):
        check_file(path)


def test_recon_wider_than_kspace_is_a_warning(synth_dirs, tmp_path):
    """Real fastMRI brain FLAIR files have recon width 320 > k-space width; fastMRI crops a square then."""
    path = _copy_good(synth_dirs, tmp_path)
    width = _header_value(path, ENC_Y)
    _set_header(path, ("reconSpace", "matrixSize", "y"), str(width + 8))
    info = check_file(path)
    assert any("recon width" in w for w in info.warnings)
    assert "warning: vol.h5: recon width" in check_folder(tmp_path).format_table()


@pytest.mark.parametrize("kind", ["missing", "not_a_dir", "empty", "no_h5"])
def test_folder_errors(tmp_path, kind):
    folder = tmp_path / "data"
    if kind == "not_a_dir":
        folder.write_text("x")
    elif kind in ("empty", "no_h5"):
        folder.mkdir()
        if kind == "no_h5":
            (folder / "notes.txt").write_text("x")
    expected = {"missing": "does not exist", "not_a_dir": "not a folder", "empty": "no .h5 files",
                "no_h5": "no .h5 files in folder (1 other entries)"}[kind]
    with pytest.raises(DataError) as info:
        check_folder(folder, skip_bad=True)
    assert info.value.path == folder and expected in info.value.problem


def _mixed_folder(synth_dirs, tmp_path) -> Path:
    folder = tmp_path / "mixed"
    folder.mkdir()
    for f in sorted(synth_dirs["train"].glob("*.h5"))[:2]:
        shutil.copy(f, folder / f.name)
    _not_hdf5(_copy_good(synth_dirs, folder, "zz_text.h5"))
    _nonfinite(np.nan, 1)(_copy_good(synth_dirs, folder, "zz_nan.h5"))
    return folder


def test_skip_bad_keeps_good_and_lists_bad(synth_dirs, tmp_path):
    folder = _mixed_folder(synth_dirs, tmp_path)
    with pytest.raises(DataError, match="zz_nan.h5"):
        check_folder(folder)
    report = check_folder(folder, skip_bad=True)
    assert len(report.volumes) == 2 and not report.ok
    assert sorted(report.bad_files) == ["zz_nan.h5", "zz_text.h5"]
    problems = dict((p.name, problem) for p, problem in report.bad)
    assert "not an HDF5 file" in problems["zz_text.h5"] and "slice 1" in problems["zz_nan.h5"]


def test_cli_good_folder_prints_table(synth_dirs, capsys):
    assert main([str(synth_dirs["train"]), str(synth_dirs["brain"])]) == 0
    out = capsys.readouterr().out
    for split in ("train", "brain"):
        for f in synth_dirs[split].glob("*.h5"):
            assert f.name in out
    assert "file" in out and "acquisition" in out and "recon" in out and "padding" in out
    n_train = sum(h5py.File(f, "r")["kspace"].shape[0] for f in synth_dirs["train"].glob("*.h5"))
    assert f"total: 3 volumes, {n_train} slices" in out


def test_cli_bad_and_skip_bad(synth_dirs, tmp_path, capsys):
    folder = _mixed_folder(synth_dirs, tmp_path)
    assert main([str(folder)]) == 1
    err = capsys.readouterr().err
    assert "zz_nan.h5" in err and "NaN/inf" in err
    assert main([str(folder), "--skip-bad"]) == 0
    out = capsys.readouterr().out
    assert "bad files: 2" in out and "zz_text.h5" in out and "not an HDF5 file" in out
    assert main([str(tmp_path / "nowhere")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_cli_skip_bad_with_no_good_file_fails(synth_dirs, tmp_path, capsys):
    _not_hdf5(_copy_good(synth_dirs, tmp_path, "a.h5"))
    assert main([str(tmp_path), "--skip-bad"]) == 1
    assert "no usable volumes" in capsys.readouterr().err


def test_cli_json(synth_dirs, tmp_path, capsys):
    folder = _mixed_folder(synth_dirs, tmp_path)
    assert main([str(synth_dirs["val"]), str(folder), "--skip-bad", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    val = result[str(synth_dirs["val"])]
    assert val["ok"] and val["num_volumes"] == 2 and len(val["volumes"]) == 2
    assert {b["path"].split("/")[-1] for b in result[str(folder)]["bad"]} == {"zz_text.h5", "zz_nan.h5"}
    assert main([str(folder), "--json"]) == 1
    result = json.loads(capsys.readouterr().out)
    assert result[str(folder)]["error"]["path"].endswith("zz_nan.h5")


def test_data_error_pickles():
    err = pickle.loads(pickle.dumps(DataError("/x/y.h5", "bad thing")))
    assert (err.path, err.problem, str(err)) == (Path("/x/y.h5"), "bad thing", "/x/y.h5: bad thing")

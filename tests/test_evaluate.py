"""Evaluate/export CLI: fastMRI submission files, metrics equal to fastmri.evaluate, weight loading, errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import torch
from fastmri import evaluate as fm_eval
from fastmri.data import transforms as T
from fastmri.models import VarNet

from varnet_ds.config import load_config, save_config
from varnet_ds.data.fastmri_file import DataError, check_file
from varnet_ds.eval.export import evaluate_folder, mask_summary, submission_crop
from varnet_ds.evaluate import build_parser, main
from varnet_ds.model.varnet import VarNetDS
from varnet_ds.model.weights import load_model, model_sizes

TINY = {"num_cascades": 1, "chans": 4, "pools": 2, "sens_chans": 2, "sens_pools": 2}


def _payload(model: torch.nn.Module, with_sizes: bool = True) -> dict:
    """The run folder's model_fp32.pt format (what training writes at the end)."""
    payload = {"state_dict": {k: v.detach().float().cpu() for k, v in model.state_dict().items()},
               "global_step": 7, "epoch": 1, "config": {"model": {**TINY, "checkpointing": "cascades"}}}
    if with_sizes:
        payload["model"] = {**TINY, "checkpointing": "cascades"}
    return payload


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    torch.save(_payload(VarNetDS(**TINY)), run / "model_fp32.pt")
    save_config(load_config(None, [f"model.{k}={v}" for k, v in TINY.items()]), run / "config.yaml")
    return run


@pytest.fixture(scope="module")
def evaluated(synth_dirs, run_dir, tmp_path_factory):
    """Knee val and brain folders reconstructed with chunks of 2 slices (3-slice volumes: chunks of 2 + 1)."""
    model = load_model(run_dir)
    outs = {}
    for split in ("val", "brain"):
        out = tmp_path_factory.mktemp(f"out_{split}")
        metrics = evaluate_folder(model, synth_dirs[split], out, "equispaced", 0.08, 4, "cpu", batch_slices=2,
                                  log=None)
        outs[split] = (out, metrics)
    return outs


def _fastmri_scores(target: np.ndarray, recon: np.ndarray) -> dict:
    """fastmri.evaluate's per-volume scoring: (W, W) crop of both, maxval = cropped target max."""
    width = target.shape[-1]
    target = T.center_crop(target, (width, width))
    recon = T.center_crop(recon, (width, width))
    return {"ssim": float(np.asarray(fm_eval.ssim(target, recon)).item()),
            "psnr": float(fm_eval.psnr(target, recon)), "nmse": float(fm_eval.nmse(target, recon))}


@pytest.mark.parametrize("split", ["val", "brain"])
def test_metrics_json_equals_fastmri_evaluate(synth_dirs, evaluated, split):
    out, metrics = evaluated[split]
    assert json.loads((out / "metrics.json").read_text()) == metrics
    data_files = sorted(synth_dirs[split].glob("*.h5"))
    assert [v["fname"] for v in metrics["per_volume"]] == [f.name for f in data_files]
    for row, data_file in zip(metrics["per_volume"], data_files):
        with h5py.File(data_file) as hf, h5py.File(out / data_file.name) as pred:
            scores = _fastmri_scores(hf["reconstruction_rss"][()], pred["reconstruction"][()])
            assert row["acquisition"] == hf.attrs["acquisition"]
            assert row["num_slices"] == hf["kspace"].shape[0]
        for name, value in scores.items():
            assert row[name] == pytest.approx(value, abs=1e-6), (data_file.name, name)

    def fastmri_cli(acquisition=None):
        args = SimpleNamespace(target_path=synth_dirs[split], predictions_path=out, acquisition=acquisition,
                               acceleration=None)
        return fm_eval.evaluate(args, "reconstruction_rss")

    groups = [(metrics["overall"], fastmri_cli())]
    groups += [(row, fastmri_cli(acq)) for acq, row in metrics["per_acquisition"].items()]
    assert len(metrics["per_acquisition"]) == len({r["acquisition"] for r in metrics["per_volume"]})
    for row, stats in groups:
        n = row["num_volumes"]
        for name in ("ssim", "psnr", "nmse"):
            assert row[name] == pytest.approx(float(np.asarray(stats.means()[name.upper()]).item()), abs=1e-6)
            two_std = 2 * float(np.asarray(stats.stddevs()[name.upper()]).item()) if n > 1 else None
            assert row[f"{name}_2std"] == (pytest.approx(two_std, abs=1e-6) if n > 1 else None)
    assert metrics["overall"]["num_volumes"] == len(data_files)
    assert metrics["unscored"] == []


@pytest.mark.parametrize("split", ["val", "brain"])
def test_outputs_are_fastmri_submission_files(synth_dirs, evaluated, run_dir, split):
    out, metrics = evaluated[split]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f.name for f in synth_dirs[split].glob("*.h5")] + ["metrics.json"])  # no temporary files left
    for data_file in sorted(synth_dirs[split].glob("*.h5")):
        info = check_file(data_file)
        with h5py.File(out / data_file.name) as hf:
            recon = hf["reconstruction"]
            assert recon.dtype == np.float32
            assert recon.shape == (info.num_slices, *info.recon_size)
            assert np.isfinite(recon[()]).all() and recon[()].max() > 0
            assert hf.attrs["acceleration"] == 4 and hf.attrs["center_fraction"] == pytest.approx(0.08)
            assert hf.attrs["mask_type"] == "equispaced" and hf.attrs["mask_source"] == "flags"
            assert hf.attrs["checkpoint"] == str(run_dir / "model_fp32.pt")
    assert metrics["settings"]["model"] == TINY
    assert metrics["settings"]["checkpoint_step"] == 7


def test_chunked_slices_equal_one_slice_at_a_time(synth_dirs, evaluated, run_dir, tmp_path):
    out, metrics = evaluated["val"]
    single = evaluate_folder(load_model(run_dir), synth_dirs["val"], tmp_path, "equispaced", 0.08, 4, "cpu",
                             batch_slices=1, log=None)
    for data_file in sorted(synth_dirs["val"].glob("*.h5")):
        with h5py.File(out / data_file.name) as a, h5py.File(tmp_path / data_file.name) as b:
            np.testing.assert_allclose(a["reconstruction"][()], b["reconstruction"][()], rtol=0, atol=1e-5)
    for a, b in zip(metrics["per_volume"], single["per_volume"]):
        assert a["ssim"] == pytest.approx(b["ssim"], abs=1e-5)


def test_plain_fastmri_state_dict_loads_and_matches(run_dir, tmp_path):
    torch.manual_seed(1)
    plain = VarNet(**TINY).eval()
    path = tmp_path / "varnet_state_dict.pt"
    torch.save(plain.state_dict(), path)
    model = load_model(path, sizes=TINY)
    assert model_sizes(model) == TINY and not model.training
    prefixed = tmp_path / "ddp_state_dict.pt"
    torch.save({f"module.{k}": v for k, v in plain.state_dict().items()}, prefixed)
    model_prefixed = load_model(prefixed, sizes=TINY)
    for k, v in plain.state_dict().items():
        assert torch.equal(model.state_dict()[k], v) and torch.equal(model_prefixed.state_dict()[k], v)

    kspace = torch.randn(1, 3, 32, 24, 2)
    mask = torch.zeros(1, 1, 1, 24, 1, dtype=torch.bool)
    mask[..., ::3, :] = True
    mask[..., 10:14, :] = True
    with torch.no_grad():
        torch.testing.assert_close(model(kspace * mask, mask, 4), plain(kspace * mask, mask, 4))

    # a model_fp32.pt passed as --checkpoint carries its own sizes; without them the run's config.yaml is used
    assert model_sizes(load_model(run_dir / "model_fp32.pt")) == TINY
    bare_run = tmp_path / "bare_run"
    bare_run.mkdir()
    shutil.copy(run_dir / "config.yaml", bare_run / "config.yaml")
    torch.save(_payload(plain, with_sizes=False), bare_run / "model_fp32.pt")
    assert model_sizes(load_model(bare_run)) == TINY


def test_bad_inputs_give_clear_errors(synth_dirs, run_dir, tmp_path):
    missing = tmp_path / "no_such_run"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        load_model(missing)
    unfinished = tmp_path / "unfinished"
    (unfinished / "checkpoints").mkdir(parents=True)
    (unfinished / "checkpoints" / "latest").write_text("step000000040")
    with pytest.raises(FileNotFoundError, match="training writes it at the end") as err:
        load_model(unfinished)
    assert str(unfinished / "model_fp32.pt") in str(err.value) and "zero_to_fp32" in str(err.value)
    assert "step000000040" in str(err.value)

    plain = tmp_path / "plain.pt"
    torch.save(VarNet(**TINY).state_dict(), plain)
    with pytest.raises(ValueError, match="does not match") as err:  # fastMRI default sizes vs a tiny file
        load_model(plain)
    assert str(plain) in str(err.value) and "sens_net.norm_unet.unet.down_sample_layers" in str(err.value)
    assert "'num_cascades': 1, 'chans': 4" in str(err.value)  # sizes read off the file
    with pytest.raises(ValueError, match=r"shape mismatches \['cascades\.0\.model\.unet"):
        load_model(run_dir, sizes={"chans": 8})
    junk = tmp_path / "junk.pt"
    junk.write_text("not a checkpoint")
    with pytest.raises(ValueError, match=str(junk)):
        load_model(junk)

    model = load_model(run_dir)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=f"{empty}: no .h5 files"):
        evaluate_folder(model, empty, tmp_path / "out", log=None)
    with pytest.raises(DataError, match="does not exist"):
        evaluate_folder(model, tmp_path / "nowhere", tmp_path / "out", log=None)
    with pytest.raises(ValueError, match="overwrite the inputs"):
        evaluate_folder(model, synth_dirs["val"], synth_dirs["val"], log=None)
    bad = tmp_path / "bad"
    bad.mkdir()
    shutil.copy(sorted(synth_dirs["val"].glob("*.h5"))[0], bad / "good.h5")
    (bad / "broken.h5").write_bytes(b"\0" * 64)
    with pytest.raises(DataError, match="broken.h5"):
        evaluate_folder(model, bad, tmp_path / "out_bad", log=None)
    skipped = evaluate_folder(model, bad, tmp_path / "out_bad", skip_bad=True, log=None)
    assert skipped["settings"]["skipped_files"] == ["broken.h5"] and skipped["overall"]["num_volumes"] == 1


def test_cli_main(synth_dirs, run_dir, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["--run", str(run_dir), "--data", str(synth_dirs["brain"]), "--out", str(out), "--device", "cpu",
            "--max-volumes", "1", "--acceleration", "8", "--center-fraction", "0.04", "--batch-slices", "3"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    first = sorted(synth_dirs["brain"].glob("*.h5"))[0].name
    assert f"[1/1] {first}" in printed and "ssim=" in printed  # progress line
    assert "overall" in printed and "SSIM" in printed and "PSNR" in printed  # summary table
    metrics = json.loads((out / "metrics.json").read_text())
    assert [v["fname"] for v in metrics["per_volume"]] == [first]
    assert metrics["per_volume"][0]["acceleration"] == 8 and metrics["settings"]["center_fraction"] == 0.04
    assert sorted(p.name for p in out.iterdir()) == sorted([first, "metrics.json"])

    assert main(["--run", str(tmp_path / "missing"), "--data", str(synth_dirs["brain"]), "--out", str(out)]) == 2
    assert str(tmp_path / "missing") in capsys.readouterr().err


def test_stored_mask_volumes_are_reconstructed_not_scored(synth_dirs, run_dir, tmp_path):
    """Test-set files: no target, k-space already undersampled, mask stored in the file."""
    data = tmp_path / "test_data"
    data.mkdir()
    src = sorted(synth_dirs["val"].glob("*.h5"))[0]
    with h5py.File(src) as hf:
        kspace, header, attrs = hf["kspace"][()], hf["ismrmrd_header"][()], dict(hf.attrs)
    width = kspace.shape[-1]
    stored = np.zeros(width, dtype=np.float32)
    stored[::8] = 1
    stored[width // 2 - 2: width // 2 + 2] = 1
    with h5py.File(data / "test_vol.h5", "w") as hf:
        hf["kspace"] = kspace * stored
        hf["mask"] = stored
        hf["ismrmrd_header"] = header
        hf.attrs["acquisition"] = attrs["acquisition"]
    model = load_model(run_dir)
    metrics = evaluate_folder(model, data, tmp_path / "out", acceleration=None, batch_slices=2, log=None)
    assert metrics["overall"] is None and metrics["per_volume"] == []
    assert metrics["unscored"] == [{"fname": "test_vol.h5", "reason": "no 'reconstruction_rss'"}]
    with h5py.File(tmp_path / "out" / "test_vol.h5") as hf:
        recon = hf["reconstruction"][()]
        assert hf.attrs["mask_source"] == "file"
        assert (int(hf.attrs["acceleration"]), hf.attrs["center_fraction"]) == mask_summary(stored)
    # slice 0 by hand: the stored k-space and mask go to the model as they are, then the submission crop
    mask = torch.from_numpy(stored.astype(bool)).view(1, 1, 1, width, 1)
    with torch.no_grad():
        full = model(T.to_tensor(kspace[:1] * stored), mask, None)
    np.testing.assert_allclose(recon[0], T.center_crop(full, recon.shape[1:])[0].numpy(), atol=1e-5)

    flags = evaluate_folder(model, data, tmp_path / "out_flags", acceleration=4, log=None)
    with h5py.File(tmp_path / "out_flags" / "test_vol.h5") as hf:
        assert hf.attrs["mask_source"] == "flags" and hf.attrs["acceleration"] == 4
    assert flags["unscored"][0]["fname"] == "test_vol.h5"


def test_mask_summary_and_submission_crop():
    mask = np.zeros(40)
    mask[18:22] = 1  # centre block of 4 around column 20
    mask[::8] = 1  # columns 0, 8, 16, 24, 32 (none touches the block)
    assert mask_summary(mask) == (round(40 / 9), 4 / 40)
    assert submission_crop((64, 48), (32, 32, 1)) == (32, 32)
    assert submission_crop((640, 368), (320, 320)) == (320, 320)
    assert submission_crop((64, 24), (32, 32)) == (24, 24)  # fastMRI's FLAIR 203 guard: square to the width


def test_bf16_precision_stays_close_to_fp32(synth_dirs, evaluated, run_dir, tmp_path):
    out, _ = evaluated["val"]
    metrics = evaluate_folder(load_model(run_dir, precision="bf16"), synth_dirs["val"], tmp_path, max_volumes=1,
                              acceleration=4, log=None)
    assert metrics["settings"]["precision"] == "bf16"
    name = metrics["per_volume"][0]["fname"]
    with h5py.File(out / name) as a, h5py.File(tmp_path / name) as b:
        fp32, bf16 = a["reconstruction"][()], b["reconstruction"][()]
        assert b.attrs["precision"] == "bf16" and bf16.dtype == np.float32
    rel = np.linalg.norm(bf16 - fp32) / np.linalg.norm(fp32)
    assert 0 < rel < 0.05  # bf16 U-Nets change the result a little, not a lot


def test_weights_selected_loads_model_selected_pt(synth_dirs, run_dir, tmp_path, capsys):
    """--weights selected evaluates RUN/model_selected.pt (the study's primary weights), final RUN/model_fp32.pt."""
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    base = ["--data", str(synth_dirs["brain"]), "--device", "cpu", "--max-volumes", "1", "--acceleration", "4"]
    assert main(["--run", str(run), "--weights", "selected", "--out", str(tmp_path / "none"), *base]) == 2
    err = capsys.readouterr().err
    assert str(run / "model_selected.pt") in err and "--weights final" in err
    torch.manual_seed(5)
    torch.save({**_payload(VarNetDS(**TINY)), "global_step": 3}, run / "model_selected.pt")  # other weights, step 3
    outs = {}
    for weights in ("selected", "final"):
        outs[weights] = tmp_path / weights
        assert main(["--run", str(run), "--weights", weights, "--out", str(outs[weights]), *base]) == 0
    name = sorted(synth_dirs["brain"].glob("*.h5"))[0].name
    with h5py.File(outs["selected"] / name) as sel, h5py.File(outs["final"] / name) as fin:
        assert sel.attrs["checkpoint"] == str(run / "model_selected.pt")
        assert fin.attrs["checkpoint"] == str(run / "model_fp32.pt")
        assert not np.array_equal(sel["reconstruction"][()], fin["reconstruction"][()])
    assert json.loads((outs["selected"] / "metrics.json").read_text())["settings"]["checkpoint_step"] == 3
    ckpt = ["--checkpoint", str(run / "model_fp32.pt"), "--weights", "selected", "--out", str(tmp_path / "x"), *base]
    assert main(ckpt) == 2 and "use it with --run" in capsys.readouterr().err


@pytest.mark.parametrize("cuda", [True, False])
def test_device_defaults_to_cuda_when_available(monkeypatch, cuda):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    args = build_parser().parse_args(["--run", "r", "--data", "d", "--out", "o"])
    assert args.device == ("cuda" if cuda else "cpu") and args.weights is None

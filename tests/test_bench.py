"""Benchmark CLI (in a subprocess: DeepSpeed needs a process group), MRAugment rows, ZeRO-2 comms on paper."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from varnet_ds import bench
from varnet_ds.bench import format_table, parse_shape, reference_drift
from varnet_ds.profiling.benchmark import REFERENCE, BenchResult, bench_augment_rows
from varnet_ds.profiling.comms import comms_table, zero2_comm_estimate
from varnet_ds.system import device_name

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--shape", "32x24x2", "--cascades", "1", "--chans", "4", "--pools", "2", "--sens-chans", "2",
        "--sens-pools", "2", "--steps", "1", "--ds", "zero2", "--checkpointing", "none", "cascades",
        "selective", "--precision", "fp32", "--augment-repeats", "1"]
CONFIGS = ["ours zero2 ckpt=none fp32", "ours zero2 ckpt=cascades fp32", "ours zero2 ckpt=selective fp32"]


def run_bench(*extra):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT"):
        env.pop(key, None)
    proc = subprocess.run([sys.executable, "-m", "varnet_ds.bench", *TINY, *extra], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_bench_table_and_json_out(tmp_path):
    out = run_bench("--repeat-reference", "--json-out", str(tmp_path / "new" / "bench.json")).stdout
    assert f"device: {device_name()} | torch" in out and "| deepspeed " in out and "| date " in out
    lines = out.splitlines()
    ref = [ln for ln in lines if ln.startswith(REFERENCE)]
    assert len(ref) == 2 and ref[1].startswith(f"{REFERENCE} repeat")
    for name in CONFIGS:
        row = [ln for ln in lines if ln.startswith(name)]
        assert len(row) == 1 and row[0].split()[4].startswith("~")  # CPU peak: live-tensor estimate
        assert "NOT freed" not in row[0]
    assert any(ln.startswith("reference drift (repeat vs first): step ") for ln in lines)
    assert any(ln.startswith("MRAugment cpu (1 thread") and " ms " in ln for ln in lines)

    doc = json.loads((tmp_path / "new" / "bench.json").read_text())  # the same measurements, as a document
    assert doc["device"] == device_name() and doc["torch"] == torch.__version__ and doc["deepspeed"]
    assert len(doc["date"]) == 10 and doc["shape"] == {"coils": 2, "height": 32, "width": 24}
    rows = doc["results"]
    assert [r["name"] for r in rows] == [REFERENCE, *CONFIGS, f"{REFERENCE} repeat"]
    for r in rows:
        assert r["peak_estimated"] is True and r["peak_gib"] > 0 and r["step_s"] > 0 and r["freed"] is True
        assert r["gflop"] > 0
        # Same initial weights and batch; fp32 ours == the plain reference (checkpointing is exact).
        assert r["loss"] == pytest.approx(rows[0]["loss"], rel=1e-5)
        assert f"{r['step_s']:.3f}" in out  # the table shows these numbers
    by = {r["name"]: r for r in rows}  # checkpointing recomputes the cascades: more FLOPs, same as ref without
    assert by[CONFIGS[1]]["gflop"] > by[CONFIGS[0]]["gflop"] == pytest.approx(by[REFERENCE]["gflop"])
    # selective recomputes only the full-resolution convolutions
    assert by[REFERENCE]["gflop"] < by[CONFIGS[2]]["gflop"] < by[CONFIGS[1]]["gflop"]
    (aug,) = doc["augment"]
    assert aug["device"] == "cpu" and aug["threads"] == 1 and aug["ms_per_slice"] > 0 and aug["error"] is None
    fastest = min(r["step_s"] for r in rows[1:-1])
    assert aug["workers_to_keep_up"] == math.ceil(aug["ms_per_slice"] / (1000 * fastest))


def test_json_out_folder_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main([*TINY, "--json-out", str(tmp_path)])
    assert exc.value.code == 2 and f"--json-out {tmp_path}: is a folder" in capsys.readouterr().err


def test_augment_rows_restore_threads():
    threads = torch.get_num_threads()
    (row,) = bench_augment_rows((2, 16, 12), torch.device("cpu"), repeats=1, ref_step_s=0.5, fastest_step_s=1e-6)
    assert torch.get_num_threads() == threads
    assert row.threads == 1 and row.frac_of_ref_step is None
    assert row.workers_to_keep_up == math.ceil(row.ms_per_slice / 1e-3)


def test_table_and_drift():
    rows = [BenchResult(REFERENCE, 10.0, 0.40, 1.0), BenchResult("ours zero2 ckpt=all bf16", 2.0, 0.20, 1.0),
            BenchResult(f"{REFERENCE} repeat", 10.5, 0.42, 1.0, freed=False)]
    drift = reference_drift(rows)
    assert drift["step_rel"] == pytest.approx(0.05) and drift["peak_gib"] == pytest.approx(0.5)
    table = format_table(rows, (15, 640, 368))
    assert "0.50x" in table and "step +5.0 %, peak +0.500 GiB" in table and "(NOT freed)" in table
    assert reference_drift(rows[:2]) is None


def test_parse_shape():
    assert parse_shape("knee") == (15, 640, 368)
    assert parse_shape("640x368x15") == (15, 640, 368)
    with pytest.raises(Exception, match="--shape 'big'"):
        parse_shape("big")


def test_zero2_comm_estimate_by_hand():
    # P = 29,936,966 fp32; N = 8: each collective moves 7/8 x P x 4 = 104,779,381 B per GPU.
    e = zero2_comm_estimate(29_936_966, 8, 0.23, 12.5)
    assert e["reduce_scatter_bytes"] == pytest.approx(104_779_381.0)
    assert e["bytes_per_gpu"] == pytest.approx(209_558_762.0)
    assert e["comm_s"] == pytest.approx(209_558_762 / 12.5e9)  # 16.76 ms on 100 Gb/s Ethernet
    assert e["efficiency_no_overlap"] == pytest.approx(0.23 / (0.23 + 0.0167647010))  # 93.2 %
    assert e["efficiency_overlap"] == pytest.approx(0.23 / (0.23 + 0.0083823505))  # reduce-scatter hidden
    nvlink = zero2_comm_estimate(29_936_966, 8, 0.23, 300.0)
    assert nvlink["comm_s"] == pytest.approx(209_558_762 / 300e9)
    # A tiny step cannot hide the reduce-scatter: exposed = all-gather + (reduce-scatter - 2/3 step).
    short = zero2_comm_estimate(29_936_966, 8, 0.003, 12.5)
    assert short["exposed_comm_s_overlap"] == pytest.approx(2 * 0.0083823505 - 0.002)
    single = zero2_comm_estimate(1000, 1, 0.1, 1.0)
    assert single["bytes_per_gpu"] == 0 and single["efficiency_no_overlap"] == 1.0
    for bad in (dict(num_params=0), dict(world_size=0), dict(step_time_s=-1.0), dict(link_gbps=0.0)):
        args = {**dict(num_params=10, world_size=2, step_time_s=0.1, link_gbps=1.0), **bad}
        with pytest.raises(ValueError, match=f"{next(iter(bad))} = "):
            zero2_comm_estimate(**args)


def test_comms_table_and_cli(capsys):
    table = comms_table(29_936_966, 0.23)
    assert "0.210" in table and "16.76" in table and "93.2%" in table and "99.7%" in table
    assert bench.main(["--comms", "--step-time", "0.23"]) == 0
    out = capsys.readouterr().out
    assert "P = 29,936,966 params" in out  # computed from fastMRI's default VarNet
    assert "NVLink" in out and "100 Gb/s Ethernet" in out and "93.2%" in out


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal")
def test_plan_cli_refuses_cpu(capsys):
    assert bench.main([*TINY, "--plan", "2.0"]) == 2
    err = capsys.readouterr().err
    assert "profiles CUDA memory" in err and "by hand" in err


def test_plain_rows_and_coil_chunks():
    proc = run_bench("--json", "--ds", "none", "zero0", "--checkpointing", "all", "--sens-chunk", "0", "2",
                     "--shape", "32x24x6", "--no-reference", "--no-augment")
    rows = json.loads(proc.stdout)["results"]  # DeepSpeed's prints went to stderr: stdout is the document only
    assert [r["name"] for r in rows] == ["plain ckpt=all fp32", "plain ckpt=all fp32 chunk=2",
                                         "ours zero0 ckpt=all fp32", "ours zero0 ckpt=all fp32 chunk=2"]
    assert rows[2]["loss"] == pytest.approx(rows[0]["loss"], rel=1e-6)  # same weights and batch
    whole, chunked = rows[:2]
    assert whole["freed"] and chunked["freed"] and chunked["loss"] == pytest.approx(whole["loss"], rel=1e-6)
    assert chunked["peak_gib"] < whole["peak_gib"] and chunked["gflop"] == pytest.approx(whole["gflop"])

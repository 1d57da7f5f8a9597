"""Provenance: what a run records (varnet_ds/provenance.py), what a study keeps of it and refuses
(varnet_ds/analysis/provenance.py via the study loader and study-report), and the command comparing two studies or runs.

The start event of a real run is checked in tests/test_engine.py (``one_rank``); here everything is in-process
except one script launch of the compare command. Study folders come from tests/test_study_stats.py's
``write_study``, with provenance blocks written into their runs' start (and resume) events.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import pytest
import torch
from test_study_stats import write_study

from varnet_ds.analysis.provenance_cli import load_block, main
from varnet_ds.analysis.runs import CompareError
from varnet_ds.analysis.study.load import load_study
from varnet_ds.analysis.study.report import build_study_report
from varnet_ds.provenance import LIBRARIES, folder_identity, git_state, run_provenance

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------ varnet_ds/provenance.py
def _h5_folder(root: Path) -> Path:
    root.mkdir()
    for name, size in (("file_a.h5", 100), ("file_b.h5", 250), ("file_c.h5", 7)):
        (root / name).write_bytes(b"x" * size)
    return root


def test_folder_identity_follows_names_and_sizes_only(tmp_path):
    folder = _h5_folder(tmp_path / "data")
    base = folder_identity(folder)
    assert (base["files"], base["bytes"], len(base["sha256"])) == (3, 357, 64)
    assert base["path"] == os.path.abspath(folder)
    os.utime(folder / "file_a.h5", (1, 1))  # an mtime change (a copy) is the same data
    (folder / "notes.txt").write_text("not read by the loader")  # the loader reads *.h5 only
    (folder / "sub").mkdir()
    (folder / "sub" / "file_z.h5").write_bytes(b"y")  # nor sub-folders
    assert folder_identity(folder) == base
    copy_dir = tmp_path / "elsewhere"
    shutil.copytree(folder, copy_dir)  # copy2 keeps mtimes; the path differs, the identity not
    assert {k: v for k, v in folder_identity(copy_dir).items() if k != "path"} == {
        k: v for k, v in base.items() if k != "path"}
    changes = {"added": lambda: (folder / "file_d.h5").write_bytes(b"z"),
               "renamed": lambda: (folder / "file_c.h5").rename(folder / "file_e.h5"),
               "resized": lambda: (folder / "file_b.h5").write_bytes(b"x" * 251)}
    seen = {base["sha256"]}
    for what, change in changes.items():
        change()
        now = folder_identity(folder)
        assert now["sha256"] not in seen, f"identity unchanged after a file was {what}"
        seen.add(now["sha256"])
    assert "error" in folder_identity(tmp_path / "missing") and "missing" in folder_identity(tmp_path / "missing")[
        "path"]


def _git(cwd: Path, *args: str) -> str:
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@t")
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_git_state_commit_dirty_and_outside_a_checkout(tmp_path):
    repo = tmp_path / "repo"
    pkg = repo / "pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("x = 1\n")
    _git(repo, "init", "-q")
    _git(repo, "add", "pkg/__init__.py")
    _git(repo, "commit", "-q", "-m", "c")
    head = _git(repo, "rev-parse", "HEAD").strip()
    assert git_state(pkg) == {"commit": head, "dirty": False}
    (pkg / "new.py").write_text("untracked\n")  # untracked files do not make the tree dirty
    assert git_state(pkg) == {"commit": head, "dirty": False}
    (pkg / "__init__.py").write_text("x = 2\n")
    assert git_state(pkg) == {"commit": head, "dirty": True}
    outside = tmp_path / "plain"
    outside.mkdir()
    (outside / "__init__.py").write_text("")
    assert git_state(outside) is None
    installed = repo / ".venv" / "site-packages" / "pkg"  # a package inside a checkout but not tracked by it
    installed.mkdir(parents=True)
    (installed / "__init__.py").write_text("")
    assert git_state(installed) is None


def test_run_provenance_fields(tmp_path):
    folder = _h5_folder(tmp_path / "train")
    block = run_provenance({"train_path": str(folder), "val_path": None}, world_size=3, device="cpu")
    assert set(block) == {"varnet_ds", "git", "python", "libraries", "cpu", "gpu", "world_size", "threads_per_rank",
                          "data"}
    assert tuple(block["libraries"]) == LIBRARIES and block["libraries"]["torch"] and block["libraries"]["h5py"]
    assert (block["world_size"], block["threads_per_rank"], block["gpu"]) == (3, torch.get_num_threads(), None)
    assert block["data"] == {"train_path": folder_identity(folder), "val_path": None, "transfer_path": None}
    assert block["cpu"] and block["varnet_ds"]
    json.dumps(block, allow_nan=False)  # goes into metrics.jsonl and W&B as is


# -------------------------------------------------------------------------------------------- study side (analysis)
BLOCK = {"varnet_ds": "0.1.0", "git": {"commit": "a" * 40, "dirty": False}, "python": "3.11.7",
         "libraries": {"torch": "2.5.1", "numpy": "2.1.0", "scipy": "1.14.1"}, "cpu": "Test CPU", "gpu": None,
         "world_size": 1, "threads_per_rank": 1,
         "data": {"train_path": {"path": "/data/knee", "files": 3, "bytes": 300, "sha256": "1" * 64},
                  "val_path": {"path": "/data/knee_val", "files": 2, "bytes": 200, "sha256": "2" * 64},
                  "transfer_path": None}}
Edit = Callable[[str, Dict[str, Any]], None]  # (run name, block) -> change the block in place


def provenance_study(root: Path, edit: Optional[Edit] = None, resume: Optional[Dict[str, Dict]] = None) -> Path:
    """A finished 2 seeds x 2 arms study whose runs record :data:`BLOCK` (changed by ``edit``) in their start
    event; ``resume`` maps run names to the block of an extra resume event."""
    write_study(root, seeds=(1, 2))
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        block = copy.deepcopy(BLOCK)
        if edit is not None:
            edit(folder.name, block)
        rows[0]["provenance"] = block
        if resume and folder.name in resume:
            rows.insert(2, {"step": 2, "epoch": 0, "split": "event", "event": "resume", "provenance": resume[
                folder.name]})
        (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_study_json_holds_the_provenance_block(tmp_path):
    def threads(name: str, block: Dict[str, Any]) -> None:
        block["threads_per_rank"] = 2 if name.startswith("mraugment") else 1

    study = provenance_study(tmp_path / "s", threads)
    prov = json.loads(build_study_report(study, n_resamples=50).read_text())["provenance"]
    assert prov["runs"] == ["baseline-s1", "baseline-s2", "mraugment-s1", "mraugment-s2"] and not prov["unrecorded"]
    assert prov["environment"]["git.commit"] == "a" * 40 and prov["environment"]["libraries.numpy"] == "2.1.0"
    assert prov["environment"]["gpu"] is None and prov["environment"]["cpu"] == "Test CPU"
    assert prov["data"] == BLOCK["data"] and prov["data_differs"] == {} and prov["environment_differs"] == {}
    assert prov["ranks_threads"]["mraugment-s2"] == {"world_size": 1, "threads_per_rank": 2}
    assert prov["ranks_threads"]["baseline-s1"] == {"world_size": 1, "threads_per_rank": 1}


def test_environment_differing_between_runs_is_recorded_not_refused(tmp_path):
    def numpy(name: str, block: Dict[str, Any]) -> None:
        if name == "baseline-s2":
            block["libraries"]["numpy"] = "1.26.4"

    prov = json.loads(build_study_report(provenance_study(tmp_path / "s", numpy), n_resamples=50).read_text())[
        "provenance"]
    assert "libraries.numpy" not in prov["environment"]
    assert prov["environment_differs"]["libraries.numpy"] == {"baseline-s1": "2.1.0", "baseline-s2": "1.26.4",
                                                              "mraugment-s1": "2.1.0", "mraugment-s2": "2.1.0"}


def test_study_over_different_data_is_refused_naming_runs_and_folders(tmp_path, capsys):
    def other_brain(name: str, block: Dict[str, Any]) -> None:
        if name == "mraugment-s2":
            block["data"]["val_path"] = {"path": "/copy/knee_val", "files": 2, "bytes": 201, "sha256": "3" * 64}

    study = provenance_study(tmp_path / "s", other_brain)
    with pytest.raises(CompareError) as err:
        load_study(study)
    msg = str(err.value)
    assert msg.startswith(f"{study}: the runs' data differ") and "data.val_path" in msg
    assert "in baseline-s1, baseline-s2, mraugment-s1 (folder /data/knee_val)" in msg
    assert "in mraugment-s2 (folder /copy/knee_val)" in msg and "sha256 333333333333" in msg
    assert "train_path" not in msg  # only the differing folder is named
    from varnet_ds.analysis.study.report import main as study_main
    assert study_main([str(study)]) == 2 and "the runs' data differ" in capsys.readouterr().err
    assert not (study / "report").exists()


def test_a_resume_on_other_data_is_refused_a_copy_elsewhere_is_not(tmp_path):
    moved = copy.deepcopy(BLOCK)
    moved["data"]["train_path"]["path"] = "/scratch/knee"  # same files in another place: same data
    load_study(provenance_study(tmp_path / "ok", resume={"baseline-s1": moved}))
    changed = copy.deepcopy(BLOCK)
    changed["data"]["train_path"]["files"] = 4
    with pytest.raises(CompareError, match=r"data\.train_path: .* in baseline-s1 \(resume at step 2\)"):
        load_study(provenance_study(tmp_path / "bad", resume={"baseline-s1": changed}))


def test_runs_without_provenance_are_listed_as_unrecorded(tmp_path):
    study = write_study(tmp_path / "old", seeds=(1, 2))
    prov = json.loads(build_study_report(study, n_resamples=50).read_text())["provenance"]
    assert prov["runs"] == [] and len(prov["unrecorded"]) == 4 and prov["environment"] == {}
    assert main([str(study), str(study)]) == 2  # nothing to compare


# ---------------------------------------------------------------------------------------------- compare command
def test_compare_same_studies_and_each_kind_of_difference(tmp_path, capsys):
    a = provenance_study(tmp_path / "a")
    assert main([str(a), str(provenance_study(tmp_path / "same"))]) == 0
    out = capsys.readouterr().out
    assert "same data? yes" in out and "same environment? yes" in out and "same ranks/threads? yes" in out

    def differ(name: str, block: Dict[str, Any]) -> None:
        block["libraries"]["numpy"] = "1.26.4"
        block["git"]["dirty"] = True
        block["threads_per_rank"] = 2
        block["data"]["train_path"]["sha256"] = "f" * 64

    b = provenance_study(tmp_path / "b", differ)
    assert main([str(a), str(b)]) == 1
    out = capsys.readouterr().out
    assert "same data? no" in out and "same environment? no" in out and "same ranks/threads? no" in out
    assert ("data.train_path: A 3 files, 300 bytes, sha256 111111111111 | B 3 files, 300 bytes, sha256 ffffffffffff"
            in out)
    assert "libraries.numpy: A 2.1.0 | B 1.26.4" in out and "git.dirty: A false | B true" in out
    assert "A 1 rank(s) x 1 thread(s) | B 1 rank(s) x 2 thread(s)" in out
    assert "val_path" not in out and "libraries.torch" not in out  # only what differs is listed


def test_compare_study_json_run_folder_and_a_study_varying_inside(tmp_path, capsys):
    a = provenance_study(tmp_path / "a")
    study_json = build_study_report(a, n_resamples=50)
    assert main([str(study_json), str(a / "baseline-s1")]) == 0  # a run of the study: same everything

    def one_gpu(name: str, block: Dict[str, Any]) -> None:
        if name == "baseline-s1":
            block["gpu"] = "NVIDIA H200"

    mixed = provenance_study(tmp_path / "mixed", one_gpu)
    assert main([str(study_json), str(mixed)]) == 1
    out = capsys.readouterr().out
    assert "gpu: A null | B varies: baseline-s1 NVIDIA H200; baseline-s2 null" in out
    assert main([str(mixed), str(mixed)]) == 1  # a study whose runs differ is not one environment


def test_compare_bad_inputs_exit_2_naming_the_path(tmp_path, capsys):
    a = provenance_study(tmp_path / "a")
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"study": "x", "contrasts": []}))
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"provenance": {"runs": [], "environment": []}}))
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [(tmp_path / "nope", "no such file or folder"), (old, "no 'provenance' mapping"),
             (broken, "provenance.unrecorded must be a list"), (empty, "not a study folder"),
             (tmp_path / "a" / "study.yaml", "not a readable study.json")]
    for path, reason in cases:
        assert main([str(a), str(path)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"{os.path.basename(sys.argv[0])}: error: ") and str(path) in err and reason in err, err
    with pytest.raises(CompareError, match="'provenance' must be a mapping"):
        (a / "baseline-s1" / "metrics.jsonl").write_text(json.dumps(
            {"step": 0, "epoch": 0, "split": "event", "event": "start", "provenance": "x"}) + "\n")
        load_block(a / "baseline-s1")


def test_compare_runs_as_a_script(tmp_path):
    a = provenance_study(tmp_path / "a")
    proc = subprocess.run([sys.executable, str(REPO / "analysis" / "provenance.py"), str(a), str(a)],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0 and "same environment? yes" in proc.stdout, proc.stderr
    # that the statistics and reports import no torch: tests/test_layers.py::test_analysis_imports_no_torch

"""The wheel works outside the checkout (issue 23, part 3).

One slow test builds the wheel from a copy of the source (``pip wheel --no-deps --no-build-isolation --no-index``:
offline, with the setuptools of the running environment, nothing written into the checkout), installs it into a
fresh virtual environment whose third-party packages come from the running one (a ``.pth`` line naming its
site-packages: a plain path, so its editable-install hook of ``varnet_ds`` is not run), and from a directory that is
not the checkout, without ``PYTHONPATH``, runs the installed ``varnet-ds``: ``--help``, bad command lines (exit 2
with the usage), a command whose optional package is missing (names the extra), and the study statistics and report
on a small study folder written here without training (``tests/test_study_stats.py``'s builder), whose
``study.json`` must equal the one this checkout's code writes. It also lists what the wheel holds: every file of
``varnet_ds/`` (modules and the data they load at run time), nothing of ``tests/``, ``analysis/`` or
``ds_configs/``. Fast checks: the packaged DeepSpeed JSONs are the checkout's ``ds_configs/`` byte for byte, and
no module reaches above the package folder by ``__file__``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
import zipfile
from pathlib import Path

import pytest
from test_study_stats import BRAIN_VOLS, KNEE_VOLS, write_study

from varnet_ds.analysis.study.report import main as study_report_main
from varnet_ds.config import DS_CONF_DIR

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "varnet_ds"
UP_BY_FILE = re.compile(r"Path\(__file__\)(?:\.resolve\(\))?((?:\.parent)+|\.parents\[(\d+)\])")


def package_files() -> set:
    """Every file of the checkout's ``varnet_ds/`` (relative, POSIX), compiled files left out."""
    return {p.relative_to(ROOT).as_posix() for p in PKG.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}


def test_packaged_ds_configs_are_the_checkouts():
    """``varnet_ds/conf/ds/*.json`` (what ``--ds_config zero2`` and an installed package use) = ``ds_configs/``."""
    packaged = {p.name: p.read_bytes() for p in DS_CONF_DIR.glob("*.json")}
    checkout = {p.name: p.read_bytes() for p in (ROOT / "ds_configs").glob("*.json")}
    assert set(packaged) == set(checkout), f"packaged {sorted(packaged)}, ds_configs/ {sorted(checkout)}"
    differ = [name for name in packaged if packaged[name] != checkout[name]]
    assert not differ, f"varnet_ds/conf/ds/ and ds_configs/ differ in {differ}: copy the edited one over the other"


def test_no_module_reaches_above_the_package_by_file():
    """``Path(__file__).parent...`` stays inside ``varnet_ds/`` (an installed package has no checkout around it)."""
    found = []
    for path in sorted(PKG.rglob("*.py")):
        allowed = len(path.relative_to(PKG).parts) - 1  # levels above the module's folder still inside varnet_ds/
        for match in UP_BY_FILE.finditer(path.read_text()):
            ups = int(match.group(2)) if match.group(2) else match.group(1).count(".parent") - 1
            if ups > allowed:
                found.append(f"{path.relative_to(ROOT)}: {match.group(0)}")
    assert not found, f"reaching into the checkout by path: {found}"


def _fresh_env(tmp: Path) -> dict:
    """The environment of the installed commands: no PYTHONPATH (the test runs with the checkout on it)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    return dict(env, PYTHONNOUSERSITE="1", MPLCONFIGDIR=str(tmp / "mpl"), OMP_NUM_THREADS="1")


def _build_and_install(tmp: Path) -> tuple:
    """(wheel, venv python, venv bin folder): the wheel built from a copy of the source, installed into a venv."""
    src = tmp / "src"
    shutil.copytree(PKG, src / "varnet_ds", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for path in ROOT.iterdir():  # pyproject.toml, README.md, LICENSE, ... (what the build reads)
        if path.is_file():
            shutil.copy2(path, src / path.name)
    dist = tmp / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                    "-w", str(dist), str(src)], check=True, capture_output=True, text=True, timeout=120)
    [wheel] = dist.glob("varnet_ds-*.whl")
    env_dir = tmp / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True, timeout=60)
    python = env_dir / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index",
                    str(wheel)], check=True, capture_output=True, text=True, timeout=120)
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "_varnet_ds_test_deps.pth").write_text("".join(f"{p}\n" for p in sorted(ours)))  # appended after site
    return wheel, python, env_dir / "bin"


def _wheel_contents(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    ours = {n for n in names if n.startswith("varnet_ds/")}
    missing, extra = package_files() - ours, ours - package_files()
    assert not missing, f"the wheel lacks {sorted(missing)} (pyproject.toml [tool.setuptools.package-data])"
    assert not extra, f"the wheel holds files the checkout's varnet_ds/ does not: {sorted(extra)}"
    for loaded in ("varnet_ds/conf/demo.yaml", "varnet_ds/conf/ds/zero2.json", "varnet_ds/sim/demo_manifest.json"):
        assert loaded in names, loaded
    others = sorted(n for n in names - ours if not re.match(r"varnet_ds-[^/]+\.dist-info/", n))
    assert not others, f"the wheel holds files outside the package: {others}"  # tests/, analysis/, ds_configs/
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "varnet-ds = varnet_ds.cli:main" in entry_points


@pytest.mark.slow
def test_installed_wheel_runs_outside_the_checkout(tmp_path):
    start = time.perf_counter()
    wheel, python, bin_dir = _build_and_install(tmp_path)
    _wheel_contents(wheel)
    away = tmp_path / "elsewhere"  # the working directory of every installed command: not the checkout
    away.mkdir()
    env = _fresh_env(tmp_path)

    def run(*args, extra_env=None) -> subprocess.CompletedProcess:
        return subprocess.run([str(bin_dir / "varnet-ds"), *args], cwd=away, env={**env, **(extra_env or {})},
                              capture_output=True, text=True, timeout=180)

    where = subprocess.run([str(python), "-c", "import varnet_ds; print(varnet_ds.__file__, varnet_ds.__version__)"],
                           cwd=away, env=env, capture_output=True, text=True, check=True).stdout.split()
    assert Path(where[0]).resolve().is_relative_to(tmp_path / "env"), f"imported {where[0]}, not the wheel's"
    assert where[1] == wheel.name.split("-")[1]

    # a checkout's analysis/ script run with the wheel's python runs the checkout's code, not the installed copy
    probe = ("import sys; sys.path.insert(0, sys.argv[1]); import _entry; "
             "_entry.main_of('varnet_ds.analysis.study.report'); import varnet_ds; print(varnet_ds.__file__)")
    got = subprocess.run([str(python), "-c", probe, str(ROOT / "analysis")], cwd=away, env=env, capture_output=True,
                         text=True, check=True).stdout.strip()
    assert Path(got).resolve() == PKG / "__init__.py", f"analysis/ ran {got}, not this checkout's code"

    proc = run("--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: varnet-ds")
    assert all(f"\n  {name} " in proc.stdout for name in ("train", "study", "demo", "report", "study-report"))
    for bad, message in ((["tran"], "unknown command 'tran'; did you mean 'train'?"),
                         (["--frobnicate"], "unknown option '--frobnicate'")):
        proc = run(*bad)
        assert proc.returncode == 2 and proc.stderr.startswith("usage: varnet-ds"), (bad, proc.stderr)
        assert f"varnet-ds: error: {message}" in proc.stderr
    proc = run("study-report", "--frobnicate")  # a command's own unknown option: its usage, exit 2
    assert proc.returncode == 2 and proc.stderr.startswith("usage: varnet-ds study-report"), proc.stderr

    # fastmri "not installed" in the installed package: the command names the lean install and the extra
    blocker = tmp_path / "no_fastmri" / "fastmri"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'fastmri'\", name='fastmri')\n")
    proc = run("check", str(away), extra_env={"PYTHONPATH": str(blocker.parent)})
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "'fastmri' is not installed: pip install --no-deps fastmri==0.3.0" in proc.stderr
    assert "pip install 'varnet_ds[fastmri]'" in proc.stderr

    study = write_study(tmp_path / "runs" / "mini", seeds=(1, 2), brain=BRAIN_VOLS[:3], knee=KNEE_VOLS[:2], accs=(4,))
    proc = run("study-report", str(study))
    assert proc.returncode == 0, proc.stderr[-3000:]
    installed = study / "report"
    for name in ("study.json", "per_volume.csv", "study.md", "study_seeds.png"):
        assert (installed / name).is_file(), name
    proc = run("report", str(study), "--out", str(tmp_path / "report"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("report.html", "report.md", "study.json"):
        assert (tmp_path / "report" / name).is_file(), name
    assert "mraugment changed brain SSIM by" in (tmp_path / "report" / "report.md").read_text()

    reference = tmp_path / "checkout"  # the same statistics from this checkout's code, in this process
    assert study_report_main([str(study), "--out", str(reference)]) == 0
    expected = json.loads((reference / "study.json").read_text())
    assert expected["contrasts"] and any(abs(c["mean"]) > 0 for c in expected["contrasts"])
    for got in (installed / "study.json", tmp_path / "report" / "study.json"):
        summary = json.loads(got.read_text())
        assert {k: v for k, v in summary.items() if k != "generated"} == \
               {k: v for k, v in expected.items() if k != "generated"}, f"{got} differs from the checkout's"
    assert (installed / "per_volume.csv").read_text() == (reference / "per_volume.csv").read_text()
    print(f"wheel test: {time.perf_counter() - start:.1f} s; {wheel.name}")

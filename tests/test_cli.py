"""``varnet-ds`` (:mod:`varnet_ds.cli`) and the package metadata it names (``pyproject.toml``).

In-process: dispatch hands the arguments over unchanged, unknown commands/options exit 2 with the usage, a missing
optional package names its extra, the analysis commands are package commands (``analysis/*.py`` call the same
``main``), every entry point is a command, and the
declared dependencies are what the code imports. One subprocess: ``python -m varnet_ds --help`` in a clean
interpreter imports no torch and no command module.
"""

from __future__ import annotations

import ast
import importlib.util
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

import varnet_ds
from varnet_ds import cli

tomllib = pytest.importorskip("tomllib", reason="Python >= 3.11 reads pyproject.toml with tomllib")
ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
HEAVY = ("torch", "numpy", "deepspeed", "omegaconf", "wandb", "fastmri", "h5py", "yaml")


def dist_name(requirement: str) -> str:
    """``"scikit-image>=0.20"`` -> ``"scikit-image"`` (normalised)."""
    return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_help_in_a_clean_interpreter_is_fast_and_imports_no_command():
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "varnet_ds", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in cli.COMMANDS:
        assert f"\n  {name} " in proc.stdout, f"{name} missing from the usage"
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    heavy = {m for m in imported if m.split(".")[0] in HEAVY or m.startswith("varnet_ds.analysis")}
    commands = {m for m in imported if m in {c.module for c in cli.COMMANDS.values()}}
    assert not heavy and not commands, f"--help imported {sorted(heavy | commands)}"
    assert seconds < 20, f"--help took {seconds:.1f} s"  # a loose bound on a shared box; ~0.1 s when idle


def test_arguments_reach_the_command_unchanged(monkeypatch):
    import varnet_ds.train

    seen = []
    monkeypatch.setattr(varnet_ds.train, "main", lambda argv: seen.append((list(argv), sys.argv[0])) or 75)
    argv0 = sys.argv[0]
    args = ["--config", "varnet_ds/conf/demo.yaml", "data.train_path=/d/k t", "--run.seed=3", "train.lr=1e-3"]
    assert cli.main(["train", *args]) == 75  # the command's exit status
    assert seen == [(args, "varnet-ds train")]
    assert sys.argv[0] == argv0  # restored


def test_real_command_parses_its_own_arguments(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train", "--config", "demo", "nope.key=1"])
    assert exit_.value.code == 2
    assert "varnet-ds train: error: unknown config key 'nope.key'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        cli.main(["help", "check"])
    assert exit_.value.code == 0 and "--headers-only" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    ([], "a command is required"),
    (["tran"], "unknown command 'tran'; did you mean 'train'?"),
    (["--frobnicate"], "unknown option '--frobnicate'"),
    (["help", "nope"], "help: unknown command 'nope'"),
])
def test_bad_command_line_prints_usage_and_exits_2(capsys, argv, message):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: varnet-ds") and f"varnet-ds: error: {message}" in err


def test_help_and_version(capsys):
    assert cli.main(["--help"]) == 0 and capsys.readouterr().out.startswith("usage: varnet-ds")
    assert cli.main(["--version"]) == 0 and capsys.readouterr().out.strip() == f"varnet-ds {varnet_ds.__version__}"


def _fake_command(monkeypatch, tmp_path, body: str) -> None:
    (tmp_path / "fake_cli_cmd.py").write_text(body)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "fake_cli_cmd", raising=False)
    monkeypatch.setitem(cli.COMMANDS, "fake", cli.Command("fake_cli_cmd", "a test command"))


def test_missing_extra_is_named(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "wandb_workspaces", None)  # "not installed"
    _fake_command(monkeypatch, tmp_path, "def main(argv):\n    import wandb_workspaces.reports.v2\n")
    assert cli.main(["fake"]) == 2
    assert "'wandb_workspaces' is not installed: pip install 'varnet_ds[report]'" in capsys.readouterr().err


def test_missing_unknown_module_is_a_bug_not_a_hint(monkeypatch, tmp_path, capsys):
    _fake_command(monkeypatch, tmp_path, "import no_such_module_anywhere\ndef main(argv):\n    return 0\n")
    assert cli.main(["fake"]) == 70  # EXIT_INTERNAL, with the traceback
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "No module named 'no_such_module_anywhere'" in err
    assert "is not installed" not in err


def test_missing_fastmri_says_how_to_install_it_lean(monkeypatch, capsys):
    for name in [m for m in sys.modules if m.split(".")[0] == "fastmri"] + ["fastmri"]:
        monkeypatch.setitem(sys.modules, name, None)  # "not installed", also its cached submodules
    for name in ("varnet_ds.data.check", "varnet_ds.data.fastmri_file"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    assert cli.main(["check", "/nowhere"]) == 2
    assert "pip install --no-deps fastmri==0.3.0" in capsys.readouterr().err


def test_analysis_commands_are_package_commands(capsys):
    with pytest.raises(SystemExit) as exit_:  # varnet_ds.analysis.compare.report's own --help
        cli.main(["report", "--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and "--out" in out and out.startswith("usage: varnet-ds report")
    assert all(cli.COMMANDS[c].module.startswith("varnet_ds.analysis.")
               for c in ("report", "study-report", "wandb-report", "provenance"))


def _script_targets():
    """``analysis/NAME.py`` -> the module whose ``main`` it runs (``main_of("...")``)."""
    for path in sorted((ROOT / "analysis").glob("*.py")):
        calls = [n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Call)
                 and getattr(n.func, "id", None) == "main_of"]
        if path.name != "_entry.py":
            assert len(calls) == 1, f"{path}: a thin script calls main_of(MODULE) once"
            yield path.name, calls[0].args[0].value


def _entry_modules(folder: Path, package: str):
    for path in sorted(folder.rglob("*.py")):
        if "__pycache__" not in path.parts and 'if __name__ == "__main__"' in path.read_text():
            yield package + "." + ".".join(path.relative_to(folder).with_suffix("").parts)


def test_every_entry_point_is_a_command_with_a_main():
    entries = set(_entry_modules(ROOT / "varnet_ds", "varnet_ds")) - {"varnet_ds.cli", "varnet_ds.__main__"}
    modules = {c.module for c in cli.COMMANDS.values()}
    assert entries == modules, f"not a command: {sorted(entries - modules)}; not an entry: {sorted(modules - entries)}"
    for module in [c.module for c in cli.COMMANDS.values()] + ["varnet_ds.cli"]:
        path = ROOT / (module.replace(".", "/") + ".py")
        (main,) = [n for n in ast.parse(path.read_text()).body if isinstance(n, ast.FunctionDef) and n.name == "main"]
        if module.startswith("varnet_ds."):  # an uncaught exception exits 70 (varnet_ds.exits), never 1
            assert any(getattr(d, "id", None) == "entry_point" for d in main.decorator_list), f"{path}: @entry_point"
    scripts = dict(_script_targets())  # the thin scripts of analysis/ run commands of the package
    assert set(scripts) == {"compare.py", "study.py", "wandb_report.py", "provenance.py"}
    assert set(scripts.values()) <= modules, scripts


def test_console_scripts_point_at_functions_that_exist():
    scripts = PYPROJECT["project"]["scripts"]
    assert scripts["varnet-ds"] == "varnet_ds.cli:main"
    for target in scripts.values():
        module, func = target.split(":")
        path = ROOT / (module.replace(".", "/") + ".py")
        assert any(isinstance(n, ast.FunctionDef) and n.name == func for n in ast.parse(path.read_text()).body), target


def test_one_version_read_from_the_package():
    project = PYPROJECT["project"]
    assert "version" not in project and project["dynamic"] == ["version"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "varnet_ds.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", varnet_ds.__version__)


def test_declared_dependencies_are_what_the_code_imports():
    """Every third-party import of varnet_ds/ and analysis/ is declared: a dependency, or the extra cli names."""
    declared = {dist_name(r) for r in PYPROJECT["project"]["dependencies"]}
    assert declared == set(cli.DEPENDENCIES.values()), "cli.DEPENDENCIES and [project].dependencies differ"
    extras = PYPROJECT["project"]["optional-dependencies"]
    for module, extra in cli.EXTRAS.items():
        assert module.replace("_", "-") in {dist_name(r) for r in extras[extra]}, (module, extra)
    assert "fastmri" not in declared  # fastmri's metadata pulls pytorch-lightning + torchvision: --no-deps / extra
    imported = {}
    for folder in ("varnet_ds", "analysis"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                         [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else [])
                for name in names:
                    imported.setdefault(name.split(".")[0], str(path.relative_to(ROOT)))
    third_party = {m: p for m, p in imported.items()
                   if m not in sys.stdlib_module_names and m not in ("varnet_ds", "_entry", "__future__")}
    known = set(cli.DEPENDENCIES) | set(cli.EXTRAS)
    assert set(third_party) <= known, {m: p for m, p in third_party.items() if m not in known}


def test_every_command_module_is_importable_by_name():
    for cmd in cli.COMMANDS.values():
        assert importlib.util.find_spec(cmd.module) is not None, cmd.module

"""The import layers of ``varnet_ds`` (docs/development.md, "Layout"), checked on the source with ``ast``.

L0 leaves ``config files seeding distributed rendezvous system provenance console exits run_folder study_folder``
-> L1 ``model/ data/ sim/`` -> L2 ``eval/ tracking/ profiling/ analysis/`` -> L3 ``trainer/ studies/`` -> L4 entry
points. A module imports only from lower layers or from its own unit (its folder, or the L0 leaves among
themselves); ``sim/`` may use ``data/`` (the augmentation preview) but ``data/`` never imports ``sim/``. Entry points
may run each other (``demo`` runs ``evaluate``). The statistics and reports (``analysis/``) read files: they import
no torch or DeepSpeed, and of the package only the torch-free leaves :data:`ANALYSIS_MAY_IMPORT`.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "varnet_ds"
LAYERS = {
    0: {"config", "files", "seeding", "distributed", "rendezvous", "system", "provenance", "console", "exits",
        "run_folder", "study_folder"},
    1: {"model", "data", "sim"},
    2: {"eval", "tracking", "profiling", "analysis"},
    3: {"trainer", "studies"},
    4: {"train", "evaluate", "bench", "demo", "study", "study_bench", "cli", "__main__"},
}
LAYER = {unit: level for level, units in LAYERS.items() for unit in units}
SAME_LAYER_OK = {("sim", "data")}  # (importer, imported) across units of one layer, besides L0 and L4
MODULES = sorted(p for p in PKG.rglob("*.py") if "__pycache__" not in p.parts)
ANALYSIS = [p for p in MODULES if p.relative_to(PKG).parts[0] == "analysis"]
ANALYSIS_MAY_IMPORT = {"analysis", "run_folder", "study_folder", "files", "exits"}  # torch-free (stdlib, PyYAML)
HEAVY = {"torch", "deepspeed", "fastmri"}  # what statistics and reports never import


def unit_of(path: Path) -> str:
    return path.relative_to(PKG).parts[0].removesuffix(".py")


def imported_units(path: Path):
    """(line, unit) of every ``varnet_ds`` import in ``path``, also those inside functions."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] if node.module != "varnet_ds" else [f"varnet_ds.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "varnet_ds" and len(parts) > 1:
                yield node.lineno, parts[1]


def violations(path: Path, me: str):
    for line, other in imported_units(path):
        if other == me:
            continue
        mine, theirs = LAYER[me], LAYER[other]
        allowed = theirs < mine or (theirs == mine and (mine in (0, 4) or (me, other) in SAME_LAYER_OK))
        if not allowed:
            yield f"{path}:{line}: {me} (L{mine}) imports {other} (L{theirs})"


def test_every_unit_has_a_layer():
    units = {unit_of(p) for p in MODULES} - {"__init__"}
    assert units <= set(LAYER), f"units without a layer (add them to docs/development.md, here): {units - set(LAYER)}"


def test_imports_go_down_the_layers():
    found = [v for p in MODULES for v in violations(p, unit_of(p))]
    assert not found, "\n".join(found)


def test_data_never_imports_the_simulator():
    found = [f"{p}:{line}" for p in MODULES if unit_of(p) == "data" for line, u in imported_units(p) if u == "sim"]
    assert not found, found


def test_no_top_level_name_shadows_the_standard_library():
    """``python varnet_ds/train.py`` puts varnet_ds/ first on sys.path: a top-level ``io.py`` would shadow io."""
    clash = {unit_of(p) for p in MODULES} & set(sys.stdlib_module_names)
    assert not clash, clash


def analysis_violations(path: Path):
    """Imports of ``path`` (an ``analysis/`` module) that would load torch: a package unit outside
    :data:`ANALYSIS_MAY_IMPORT` (``varnet_ds.provenance`` imports torch) or torch/DeepSpeed/fastMRI themselves."""
    found = [f"{path}:{line}: imports varnet_ds.{unit}" for line, unit in imported_units(path)
             if unit not in ANALYSIS_MAY_IMPORT]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                 else [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else [])
        found += [f"{path}:{node.lineno}: imports {n}" for n in names if n.split(".")[0] in HEAVY]
    return found


def test_analysis_imports_only_torch_free_modules():
    found = [v for p in ANALYSIS for v in analysis_violations(p)]
    assert ANALYSIS and not found, "\n".join(found)


def test_analysis_rule_catches_torch_paths(tmp_path):
    """The checker itself: the torch-importing ``varnet_ds.provenance`` and ``torch`` are reported, the study folder
    format is not."""
    fake = tmp_path / "mod.py"
    fake.write_text("from varnet_ds import study_folder\ndef f():\n    from varnet_ds.provenance import collect\n"
                    "    import torch.nn\n")
    assert [v.split(": ", 1)[1] for v in analysis_violations(fake)] == ["imports varnet_ds.provenance",
                                                                         "imports torch.nn"]


def test_analysis_imports_no_torch():
    """Importing every ``varnet_ds.analysis`` module (statistics, reports, W&B Report) in a fresh interpreter loads
    no torch or DeepSpeed, and of the package only ``analysis`` and the leaves it may import (reconstructions come
    from the runs' recon/*.h5 files)."""
    names = sorted(".".join(p.relative_to(PKG.parent).with_suffix("").parts).removesuffix(".__init__")
                   for p in ANALYSIS)
    code = ("import importlib, sys\n" + "".join(f"importlib.import_module({n!r})\n" for n in names)
            + "print(sorted({m.split('.')[0] if not m.startswith('varnet_ds.') else m.split('.')[1] "
              "for m in sys.modules if m.split('.')[0] in ('torch', 'deepspeed', 'fastmri', 'varnet_ds') "
              "and m != 'varnet_ds'}))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=PKG.parent, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    loaded = set(ast.literal_eval(proc.stdout.strip()))
    assert "varnet_ds.analysis.study.page" in names and loaded <= ANALYSIS_MAY_IMPORT, loaded - ANALYSIS_MAY_IMPORT


def is_version_assignment(node: ast.stmt) -> bool:
    """``__version__ = "<string literal>"``: the one statement the top package's ``__init__`` may hold."""
    return (isinstance(node, ast.Assign) and [ast.unparse(t) for t in node.targets] == ["__version__"]
            and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str))


def test_package_inits_hold_a_docstring_only():
    """No re-exports: a name is imported from the module that defines it. ``varnet_ds/__init__.py`` also holds
    ``__version__`` (the one version; ``pyproject.toml`` reads it)."""
    for path in (p for p in MODULES if p.name == "__init__.py"):
        body = ast.parse(path.read_text()).body
        has_doc = body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
        assert has_doc, f"{path}: no docstring"
        rest = body[1:]
        if path == PKG / "__init__.py":
            assert len(rest) == 1 and is_version_assignment(rest[0]), f"{path}: docstring + __version__ = '...' only"
        else:
            assert not rest, f"{path}: code besides the docstring (re-export?)"


def test_version_check_allows_only_a_string_version():
    ok, *bad = (ast.parse(src).body[0] for src in ('__version__ = "0.2.0"', "__version__ = VERSION",
                                                    'from .x import __version__', 'version = "0.2.0"'))
    assert is_version_assignment(ok) and not any(is_version_assignment(n) for n in bad)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PKG)))
def test_module_size(path):
    assert len(path.read_text().splitlines()) <= 400, f"{path}: split it (the layout keeps files under 400 lines)"


def test_layer_check_catches_upward_and_sideways_imports(tmp_path):
    """The checker itself: model -> trainer (up) and data -> sim (sideways) are reported, model -> config is not."""
    fake = tmp_path / "mod.py"
    fake.write_text("import varnet_ds.config\ndef f():\n    from varnet_ds.trainer.loop import Trainer\n")
    assert [v.split(": ", 1)[1] for v in violations(fake, "model")] == ["model (L1) imports trainer (L3)"]
    fake.write_text("from varnet_ds.sim import synth\n")
    assert len(list(violations(fake, "data"))) == 1 and not list(violations(fake, "demo"))

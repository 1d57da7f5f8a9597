"""What the scripts of ``analysis/`` share: the ``main`` of a ``varnet_ds`` command, importable from a source
checkout without installing it (the only path this folder adds: the checkout root, when ``varnet_ds`` is not
importable otherwise). The code lives in ``varnet_ds/analysis/``; these scripts keep documented commands working."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence


def main_of(module: str) -> Callable[[Optional[Sequence[str]]], int]:
    """``module.main`` (``module`` a dotted ``varnet_ds`` name)."""
    try:
        import varnet_ds  # noqa: F401
    except ModuleNotFoundError:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    return importlib.import_module(module).main

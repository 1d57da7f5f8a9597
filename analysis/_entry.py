"""What the scripts of ``analysis/`` share: the ``main`` of a ``varnet_ds`` command, importable from a source
checkout, installed or not: the checkout root goes first on ``sys.path`` (the only path this folder adds), so a
script runs the code beside it, never an older installed copy. The code lives in ``varnet_ds/analysis/``; these
scripts keep documented commands working."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence


def main_of(module: str) -> Callable[[Optional[Sequence[str]]], int]:
    """``module.main`` (``module`` a dotted ``varnet_ds`` name)."""
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / "varnet_ds" / "__init__.py").is_file() and str(checkout) not in sys.path:
        sys.path.insert(0, str(checkout))  # this checkout's code, even beside an installed (maybe older) varnet_ds
    return importlib.import_module(module).main

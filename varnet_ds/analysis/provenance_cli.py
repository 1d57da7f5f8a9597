"""``varnet-ds provenance A B``: were two studies or runs trained on the same data, in the same environment?

    varnet-ds provenance runs/study_a runs/study_b        # study folders, run folders or study.json files

(the same: ``python -m varnet_ds.analysis.provenance_cli``; in a source checkout ``python analysis/provenance.py``).
Prints, per aspect (data, environment, ranks/threads), ``same ...? yes|no`` and the differences; exits 0 when
everything recorded is the same, 1 when something differs, 2 on bad input (a one-line reason on stderr). The
blocks and their comparison are :mod:`varnet_ds.analysis.provenance`'s.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence

from varnet_ds.analysis.provenance import check_block, compare_blocks, provenance_block
from varnet_ds.analysis.runs import CompareError, load_run
from varnet_ds.analysis.study.load import load_study
from varnet_ds.exits import entry_point
from varnet_ds.study_folder import is_study


def load_block(path: Path | str) -> Dict[str, Any]:
    """The provenance block of a study folder, a run folder or a ``study.json`` file.

    Raises:
        CompareError: the path is none of these, is malformed, or none of its runs recorded provenance.
    """
    path = Path(path)
    if path.is_file():
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise CompareError(f"{path}: not a readable study.json ({err})") from None
        block = check_block(doc.get("provenance") if isinstance(doc, Mapping) else None, str(path))
    elif is_study(path):
        study = load_study(path)
        block = provenance_block({r.name: r.run for r in study.ordered_runs()})
    elif (path / "metrics.jsonl").is_file():
        run = load_run(path)
        block = provenance_block({run.label: run})
    elif path.exists():
        raise CompareError(f"{path}: not a study folder (study.yaml), a run folder (metrics.jsonl) or a study.json")
    else:
        raise CompareError(f"{path}: no such file or folder")
    if not block["runs"]:
        raise CompareError(f"{path}: no run recorded provenance (start events without a 'provenance' block: runs "
                           f"{', '.join(block['unrecorded']) or 'none'})")
    return block


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Command-line arguments."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", type=Path, help="study folder, run folder or study.json")
    parser.add_argument("b", type=Path, help="study folder, run folder or study.json")
    return parser.parse_args(argv)


@entry_point
def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry: 0 same, 1 differs, 2 bad input (a one-line reason on stderr)."""
    args = parse_args(argv)
    try:
        blocks = [load_block(args.a), load_block(args.b)]
    except CompareError as err:
        print(f"{os.path.basename(sys.argv[0])}: error: {err}", file=sys.stderr)  # argparse's prog
        return 2
    print(f"A: {args.a} ({len(blocks[0]['runs'])} run segment(s))\nB: {args.b} ({len(blocks[1]['runs'])} run "
          "segment(s))")
    for side, block in zip("AB", blocks):
        if block["unrecorded"]:
            print(f"note: {side} has run(s) without provenance, not compared: {', '.join(block['unrecorded'])}")
    diffs = compare_blocks(*blocks)
    for aspect, lines in diffs.items():
        print(f"same {aspect}? {'no' if lines else 'yes'}")
        for line in lines:
            print(f"  {line}")
    return 1 if any(diffs.values()) else 0


if __name__ == "__main__":
    sys.exit(main())

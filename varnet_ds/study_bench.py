"""Benchmark of the study layout: demo training throughput of the runner's layout against a plain fastMRI loop.

    python -m varnet_ds.study_bench [--steps 150] [--data runs/demo-data]

What is measured and how: ``varnet_ds.studies.bench`` (this module is its command line). A benchmark, not a
test: numbers depend on the machine; the table says which.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

from varnet_ds.exits import EXIT_USAGE, entry_point
from varnet_ds.studies import bench


@entry_point
def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m varnet_ds.study_bench", description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=150, help="timed steps per measurement (after 10 warm-up steps)")
    p.add_argument("--data", type=Path, default=Path("runs") / "demo-data",
                   help="demo data folder (make demo writes it; default: runs/demo-data of the working directory)")
    args = p.parse_args(argv)
    data = args.data / "knee_train"
    if not data.is_dir():
        print(f"study_bench: error: no knee training data in {data} (run make demo first)", file=sys.stderr)
        return EXIT_USAGE
    print(bench.format_table(bench.measure(data, args.steps), args.steps))
    return 0


if __name__ == "__main__":
    sys.exit(main())

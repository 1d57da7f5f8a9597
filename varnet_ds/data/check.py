"""Validate folders of fastMRI multicoil HDF5 files before a long run.

Usage:
    python -m varnet_ds.data.check DIR [DIR ...] [--skip-bad] [--no-target] [--headers-only] [--json]

Each file is opened once; only the header, shapes, dtypes and attributes are read, plus a finite-value scan of
the k-space one slice at a time (memory is bounded by one slice). The first bad file stops the check with a
:class:`DataError` naming the file and the problem, unless ``skip_bad`` is set, in which case bad files are
listed and the good ones kept.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from varnet_ds.data.fastmri_file import DataError, PathLike, VolumeInfo, check_file, list_h5_files
from varnet_ds.exits import entry_point


@dataclass
class CheckReport:
    """Result of :func:`check_folder` (or several folders merged).

    Attributes:
        volumes: Valid volumes, sorted by file name.
        bad: ``(path, problem)`` for every rejected file (only filled with ``skip_bad``).
    """

    volumes: List[VolumeInfo]
    bad: List[Tuple[Path, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when there is at least one volume and no bad file."""
        return bool(self.volumes) and not self.bad

    @property
    def num_slices(self) -> int:
        return sum(v.num_slices for v in self.volumes)

    @property
    def bad_files(self) -> List[str]:
        """Base names of the rejected files (what ``skip_files`` of the datasets expects)."""
        return [p.name for p, _ in self.bad]

    def format_table(self) -> str:
        """A fixed-width table of the volumes, totals, warnings and bad files."""
        header = ("file", "acquisition", "slices", "coils", "HxW", "recon", "padding", "max")
        rows = [
            (
                v.path.name,
                v.acquisition or "-",
                str(v.num_slices),
                str(v.num_coils),
                f"{v.shape[0]}x{v.shape[1]}",
                f"{v.recon_size[0]}x{v.recon_size[1]}",
                f"{v.padding[0]}:{v.padding[1]}",
                "-" if v.max_value is None else f"{v.max_value:.4g}",
            )
            for v in self.volumes
        ]
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows]]
        lines.insert(1, "  ".join("-" * w for w in widths))
        acq = Counter(v.acquisition or "-" for v in self.volumes)
        acq_txt = ", ".join(f"{k}: {n}" for k, n in sorted(acq.items()))
        lines.append(f"total: {len(self.volumes)} volumes, {self.num_slices} slices ({acq_txt or 'none'})")
        for v in self.volumes:
            lines.extend(f"warning: {v.path.name}: {w}" for w in v.warnings)
        if self.bad:
            lines.append(f"bad files: {len(self.bad)}")
            lines.extend(f"  {p}: {problem}" for p, problem in self.bad)
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "ok": self.ok,
            "num_volumes": len(self.volumes),
            "num_slices": self.num_slices,
            "volumes": [v.to_dict() for v in self.volumes],
            "bad": [{"path": str(p), "problem": problem} for p, problem in self.bad],
        }


def check_folder(
    path: PathLike, require_target: bool = True, skip_bad: bool = False, scan_values: bool = True
) -> CheckReport:
    """Validate every ``*.h5`` file of a folder.

    Args:
        path: Folder of fastMRI multicoil files.
        require_target: Require ``reconstruction_rss`` and ``max`` (train/val); False for test-like folders.
        skip_bad: Collect bad files in ``report.bad`` instead of raising on the first one.
        scan_values: Finite-value scan of the k-space and target (reads all data once).

    Returns:
        A :class:`CheckReport`.

    Raises:
        DataError: missing/empty folder (always) or the first bad file (unless ``skip_bad``).
    """
    report = CheckReport(volumes=[], bad=[])
    for f in list_h5_files(path):
        try:
            report.volumes.append(check_file(f, require_target=require_target, scan_values=scan_values))
        except DataError as err:
            if not skip_bad:
                raise
            report.bad.append((err.path, err.problem))
    return report


@entry_point
def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry point; returns 0 when every folder is usable, 1 otherwise."""
    parser = argparse.ArgumentParser(
        prog="python -m varnet_ds.data.check", description="Validate fastMRI multicoil HDF5 data folders."
    )
    parser.add_argument("dirs", nargs="+", type=Path, metavar="DIR", help="data folder(s)")
    parser.add_argument("--skip-bad", action="store_true", help="list bad files and keep the good ones")
    parser.add_argument("--no-target", action="store_true", help="do not require reconstruction_rss / max")
    parser.add_argument("--headers-only", action="store_true", help="skip the NaN/inf scan of the k-space")
    parser.add_argument("--json", action="store_true", help="print a JSON report instead of tables")
    args = parser.parse_args(argv)

    results = {}
    status = 0
    for d in args.dirs:
        try:
            report = check_folder(
                d, require_target=not args.no_target, skip_bad=args.skip_bad, scan_values=not args.headers_only
            )
        except DataError as err:
            if args.json:
                results[str(d)] = {"ok": False, "error": {"path": str(err.path), "problem": err.problem}}
            else:
                print(f"error: {err}", file=sys.stderr)
            status = 1
            continue
        usable = report.ok or (args.skip_bad and bool(report.volumes))
        status = status if usable else 1
        if args.json:
            results[str(d)] = report.to_dict()
        else:
            print(f"== {d}")
            print(report.format_table())
            if report.bad and usable:
                print(f"--skip-bad: {len(report.bad)} bad file(s) will be skipped")
            elif not report.volumes:
                print(f"error: {d}: no usable volumes", file=sys.stderr)
    if args.json:
        print(json.dumps(results, indent=2))
    return status


if __name__ == "__main__":
    sys.exit(main())

"""Evaluate/export CLI: trained VarNet weights -> fastMRI-format reconstructions (one HDF5 per volume) + metrics.json.

Usage::

    python -m varnet_ds.evaluate --run RUN_DIR [--weights final|selected] --data DIR --out OUT [--acceleration 4]
        [--center-fraction 0.08] [--mask-type equispaced] [--device cpu|cuda] [--max-volumes N]
        [--precision fp32|bf16] [--batch-slices 4]
    python -m varnet_ds.evaluate --checkpoint model_fp32.pt|state_dict.pt [--num-cascades 12 --chans 18 ...] ...

``--run`` loads the run's final weights (``RUN/model_fp32.pt``) or, with ``--weights selected``, the weights of its
best knee-validation evaluation (``RUN/model_selected.pt``: the "selected" checkpoint, a study's primary one).
``--device`` defaults to ``cuda`` when torch sees a GPU, else ``cpu``.

What is written (fastMRI submission format, scored exactly as ``fastmri.evaluate``): :mod:`varnet_ds.eval.export`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

import torch

from varnet_ds.config import FASTMRI_SIZES, MASK_TYPES, PRECISIONS, SIZE_KEYS
from varnet_ds.data.fastmri_file import DataError
from varnet_ds.eval.export import DEFAULT_ACCELERATION, evaluate_folder, format_summary
from varnet_ds.exits import EXIT_BAD_DATA, EXIT_USAGE, entry_point
from varnet_ds.model.weights import load_model, model_sizes
from varnet_ds.run_folder import FINAL_WEIGHTS, SELECTED_WEIGHTS

WEIGHTS = {"final": FINAL_WEIGHTS, "selected": SELECTED_WEIGHTS}  # --weights choice -> file in the run folder


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m varnet_ds.evaluate", description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", type=Path, help="run folder (loads RUN/model_fp32.pt, or see --weights)")
    src.add_argument("--checkpoint", type=Path, help="model_fp32.pt or a plain fastMRI VarNet state_dict file")
    p.add_argument("--weights", choices=tuple(WEIGHTS), default=None,
                   help="with --run: final = RUN/model_fp32.pt (default), selected = RUN/model_selected.pt (the "
                        "best knee-validation evaluation, a study's primary checkpoint)")
    p.add_argument("--data", type=Path, required=True, help="folder of fastMRI multicoil .h5 files")
    p.add_argument("--out", type=Path, required=True, help="output folder (reconstructions + metrics.json)")
    p.add_argument("--mask-type", default="equispaced", choices=MASK_TYPES, help="default: equispaced")
    p.add_argument("--center-fraction", type=float, default=0.08, help="default: 0.08")
    p.add_argument("--acceleration", type=int, default=None,
                   help=f"default: the file's stored mask if it has one, else {DEFAULT_ACCELERATION}")
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    p.add_argument("--device", default=default_device, help=f"cpu | cuda | cuda:N (default: {default_device})")
    p.add_argument("--precision", default="fp32", choices=PRECISIONS, help="default: fp32")
    p.add_argument("--max-volumes", type=int, default=None, help="first N volumes by file name (default: all)")
    p.add_argument("--batch-slices", type=int, default=4, help="slices per forward pass, bounds memory (4)")
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader workers (default: 0)")
    p.add_argument("--skip-bad", action="store_true", help="skip files that fail the data check")
    for key in SIZE_KEYS:
        p.add_argument(f"--{key.replace('_', '-')}", type=int, default=None,
                       help=f"default: from the checkpoint, else fastMRI's {FASTMRI_SIZES[key]}")
    return p


def weights_source(run: Optional[Path], checkpoint: Optional[Path], weights: Optional[str]) -> Path:
    """What :func:`varnet_ds.model.weights.load_model` loads: the run folder, its selected weights, or the file.

    Args:
        run: ``--run`` folder (or ``None``).
        checkpoint: ``--checkpoint`` file (or ``None``).
        weights: ``--weights`` choice (``None`` = final).

    Returns:
        ``run`` itself for the final weights (load_model reads ``RUN/model_fp32.pt`` and falls back to the run's
        config for sizes), ``RUN/model_selected.pt`` for the selected ones, else ``checkpoint``.

    Raises:
        ValueError: ``--weights`` with ``--checkpoint``, or ``--run`` naming a file.
        FileNotFoundError: ``--weights selected`` and the run has no ``model_selected.pt`` (names the file).
    """
    if run is None:
        if weights is not None:
            raise ValueError(f"--weights {weights} picks a file of a run folder: use it with --run, not --checkpoint")
        return checkpoint
    if run.exists() and not run.is_dir():
        raise ValueError(f"--run {run}: not a folder (use --checkpoint for a weights file)")
    if weights != "selected" or not run.exists():  # load_model names a missing run folder
        return run
    path = run / WEIGHTS["selected"]
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: a run writes it when it finishes, if it evaluated knee validation data "
            "(data.val_path); evaluate its final weights with --weights final, or finish the run by rerunning its "
            "command")
    return path


@entry_point
def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry point; 0 on success, 1 on bad data, 2 on bad usage (the reason on stderr; varnet_ds.exits)."""
    args = build_parser().parse_args(argv)
    try:
        source = weights_source(args.run, args.checkpoint, args.weights)
        sizes = {k: getattr(args, k) for k in SIZE_KEYS}
        model = load_model(source, args.precision, sizes, args.device)
        print(f"model: {model.source_checkpoint} {model_sizes(model)} {args.precision} on {args.device}", flush=True)
        metrics = evaluate_folder(
            model, args.data, args.out, args.mask_type, args.center_fraction, args.acceleration, args.device,
            max_volumes=args.max_volumes, batch_slices=args.batch_slices, num_workers=args.num_workers,
            skip_bad=args.skip_bad,
        )
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_DATA
    except (FileNotFoundError, ValueError) as err:  # ConfigError is a ValueError
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    print(format_summary(metrics))
    print(f"wrote {metrics['settings']['num_volumes']} reconstructions and {args.out / 'metrics.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`python -m training supervise`: fit a LensFit 2 encoder to a simulated set's true lenses."""

import argparse
import sys
from pathlib import Path

from training.commands.evaluate import positive_int
from training.commands.retune import add_new_folder_options, print_calibrations
from training.commands.simulate import positive_float


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "supervise",
        help="fit a LensFit 2 encoder to a simulated training split's true lens parameters",
        description=(
            "Load CHECKPOINT (lensfit2), fit its encoder by regression to the true lens "
            "parameters of DIR/train's no_sub images (DIR/parameters.csv), re-learn its "
            "prior from refits started at the new guesses, calibrate every score on DIR/val "
            "and write a new checkpoint folder OUT. The test split is never read: evaluate "
            "OUT afterwards."
        ),
    )
    p.add_argument("--checkpoint", type=Path, required=True, help="a lensfit2 checkpoint folder")
    p.add_argument("--data", type=Path, required=True, help="simulated set with parameters.csv")
    p.add_argument("--out", type=Path, required=True, help="new checkpoint folder")
    p.add_argument("--epochs", type=positive_int, default=20, help="passes over DIR/train (20)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="images per step (32)")
    p.add_argument("--lr", type=positive_float, default=1e-3, help="peak learning rate (1e-3)")
    p.add_argument("--seed", type=int, default=0, help="shuffling seed (0)")
    add_new_folder_options(p)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from deeplense.device import resolve_device
    from training.supervise import supervise

    try:
        out, calibrated, history = supervise(
            args.checkpoint, args.data, args.out, epochs=args.epochs,
            batch_size=args.batch_size, lr=args.lr, seed=args.seed, fpr=args.fpr,
            device=resolve_device(args.device), overwrite=args.overwrite,
            weights_dtype=args.weights_dtype,
        )  # fmt: skip
    except ValueError as exc:  # a model without a parameter loss
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for part in history[-1]:
        print(f"{part} parameter loss: {history[0][part]:.5g} (first epoch) -> "
              f"{history[-1][part]:.5g} (last)")  # fmt: skip
    print_calibrations(calibrated, out)
    return 0

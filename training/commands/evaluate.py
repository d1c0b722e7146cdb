"""`python -m training evaluate`: every checkpoint on the labelled test set -> a report folder."""

import argparse
import logging
import math
from pathlib import Path

log = logging.getLogger(__name__)


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def finite_float(text: str) -> float:
    """argparse type: a finite float (no nan or inf)."""
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="ROC-AUC, W1, MSE per class and threshold rates of every checkpoint, as a report",
        description=(
            "Evaluate every checkpoint folder under --checkpoints on DIR/test (no_sub, sphere, "
            "vort) and write metrics.json, report.md, roc.png and examples.png to --out."
        ),
    )
    p.add_argument("--checkpoints", type=Path, required=True, help="folder of checkpoint folders")
    p.add_argument("--data", type=Path, required=True, help="dataset folder holding test/")
    p.add_argument("--out", type=Path, required=True, help="report folder to write")
    p.add_argument(
        "--model",
        action="append",
        dest="models",
        metavar="NAME",
        help="evaluate only this checkpoint (repeatable; default: all found)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default auto)")
    p.add_argument("--batch-size", type=positive_int, default=64, help="images per forward pass")
    p.add_argument(
        "--examples", type=non_negative_int, default=3, help="example images per class per model"
    )
    p.add_argument(
        "--dataset",
        choices=["model_a", "model_b"],
        default=None,
        help="which published numbers to compare with (default: from manifest.json)",
    )
    p.add_argument(
        "--update-checkpoints",
        action="store_true",
        help="also store each model's metrics in its checkpoint's config.json",
    )
    p.add_argument(
        "--psf",
        type=Path,
        default=None,
        help="PSF kernel (FITS or .npy) for every test image whose file holds none (not used "
        "on a simulated set: its manifest records its PSF)",
    )
    p.add_argument(
        "--pixel-scale",
        type=finite_float,
        default=None,
        help="arcsec per pixel of every test image whose file states none (default: the "
        "model's; not used on a simulated set)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # scikit-learn and matplotlib (the train extra) load only when evaluate runs.
    from training.commands.score import request_instrument
    from training.evaluate import evaluate_checkpoints, store_metrics
    from training.report import REPORT_FILES, check_output, write_report

    check_output(args.out, args.overwrite)
    given = args.psf is not None or args.pixel_scale is not None
    evaluation = evaluate_checkpoints(
        args.checkpoints,
        args.data,
        device=args.device,
        batch_size=args.batch_size,
        n_examples=args.examples,
        names=args.models,
        dataset=args.dataset,
        request=request_instrument(args) if given else None,
    )
    write_report(evaluation, args.out, overwrite=args.overwrite)
    if args.update_checkpoints:
        store_metrics(evaluation, args.checkpoints)
    for name, result in evaluation.models.items():
        m = result.metrics
        log.info(
            "%s: AUC %.4f, W1(no_sub) %.4f",
            name,
            m.get("auc_sub", float("nan")),
            m.get("w1_no_sub", float("nan")),
        )
    print(f"wrote {', '.join(REPORT_FILES)} to {args.out}")
    return 0

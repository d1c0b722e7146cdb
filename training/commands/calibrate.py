"""`python -m training calibrate`: recompute checkpoints' thresholds on DIR/val no_sub images."""

import argparse
import logging
from pathlib import Path

from training.commands.evaluate import positive_int

log = logging.getLogger(__name__)


def fraction(text: str) -> float:
    """argparse type: a float strictly between 0 and 1."""
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must lie strictly between 0 and 1, got {text}")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "calibrate",
        help="set checkpoints' anomaly thresholds from normal validation images",
        description=(
            "For every anomaly score: score DIR/val no_sub images, set the threshold at the "
            "target false-positive rate and store 101 score quantiles in each checkpoint's "
            "config.json. When DIR/val also holds sphere or vort images, add each score's "
            "validation ROC-AUC and Youden-J threshold and make the best score the default. "
            "Then record in every card of --checkpoints the model the service will serve by "
            "default (it depends on these validation measurements). "
            "The test split is never read."
        ),
    )
    p.add_argument("--checkpoints", type=Path, required=True, help="folder of checkpoint folders")
    p.add_argument("--model", default="all", help="checkpoint name, or all (default)")
    p.add_argument("--data", type=Path, required=True, help="dataset folder holding val/")
    p.add_argument("--fpr", type=fraction, default=0.05, help="target false-positive rate")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default auto)")
    p.add_argument("--batch-size", type=positive_int, default=64, help="images per forward pass")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from deeplense.device import resolve_device
    from deeplense.errors import CheckpointError
    from deeplense.vocabulary import dataset_label
    from models.checkpoint import find_checkpoints, load_checkpoint, write_config
    from training.calibrate import calibrate_checkpoint
    from training.default_record import record_default_choice

    found = find_checkpoints(args.checkpoints)
    if not found:
        raise CheckpointError(f"{args.checkpoints}: no checkpoint folders (with config.json)")
    if args.model != "all":
        if args.model not in found:
            raise CheckpointError(
                f"{args.checkpoints}: no checkpoint {args.model!r}; found: {', '.join(found)}, all"
            )
        found = {args.model: found[args.model]}
    device = resolve_device(args.device)
    dataset = dataset_label(args.data)
    for name, path in found.items():
        loaded = load_checkpoint(path, device=device)
        result = calibrate_checkpoint(
            loaded,
            args.data,
            fpr=args.fpr,
            device=device,
            batch_size=args.batch_size,
            dataset=dataset,
        )
        update = {
            "calibrations": result.calibrations,
            "default_score": result.default_score,
            "default_score_reason": result.reason,
        }
        write_config(loaded.config.model_copy(update=update), path)
        for score, cal in result.calibrations.items():
            youden, auc, tpr = cal.youden_threshold, cal.validation_auc, cal.validation_tpr
            print(
                f"{name} {score}: threshold {cal.threshold:.6g} at FPR {cal.fpr} "
                f"({cal.n_images} val images)"
                + ("" if youden is None else f", Youden-J threshold {youden:.6g}")
                + ("" if auc is None else f", validation AUC {auc:.4f}")
                + ("" if tpr is None else f", flags {tpr:.3f} of substructure lenses")
            )
        print(f"{name}: default score {result.default_score} ({result.reason})")
    choice = record_default_choice(args.checkpoints).choice
    if choice is not None:
        served = f"{choice.model} ({choice.score})"
        print(f"{args.checkpoints}: serves {served} by default: {choice.reason}")
    return 0

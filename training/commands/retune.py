"""`python -m training retune`: new inference settings for a trained model, recalibrated."""

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from training.commands.calibrate import fraction
from training.commands.evaluate import positive_int
from training.commands.fit import WEIGHTS_DTYPES, arch_arg

if TYPE_CHECKING:
    from training.calibrate import ScoreCalibrations


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "retune",
        help="change a trained model's inference settings, re-learn and recalibrate it",
        description=(
            "Load CHECKPOINT, apply --arch-arg changes that keep its weights (e.g. LensFit's "
            "refine_steps, refine_method, prior_deconvolve), re-run the model's after-training "
            "step on DIR/train (LensFit re-learns its prior; --keep-prior skips it), calibrate "
            "every score on DIR/val "
            "and write a new checkpoint folder OUT. Its test metrics are dropped: evaluate it "
            "again. --weights-dtype float16 converts its storage (rounded before the "
            "calibration). The test split is never read."
        ),
    )
    p.add_argument("--checkpoint", type=Path, required=True, help="a checkpoint folder")
    p.add_argument("--data", type=Path, required=True, help="dataset folder with train/, val/")
    p.add_argument("--out", type=Path, required=True, help="new checkpoint folder")
    p.add_argument(
        "--arch-arg", type=arch_arg, action="append", default=[], metavar="KEY=VALUE",
        help="an argument to change, repeatable (refine_steps=3, prior_deconvolve=true)",
    )  # fmt: skip
    p.add_argument("--batch-size", type=positive_int, default=64, help="images per forward pass")
    p.add_argument(
        "--keep-prior", action="store_true",
        help="do not re-run the after-training step: keep the learnt prior (no DIR/train "
        "needed), e.g. for a new refinement schedule calibrated on the same model",
    )  # fmt: skip
    add_new_folder_options(p)
    p.set_defaults(func=_run)


def add_new_folder_options(p: argparse.ArgumentParser) -> None:
    """The options of a command that writes a recalibrated copy of a checkpoint (retune,
    supervise): calibration FPR, device, storage dtype, overwrite."""
    p.add_argument("--fpr", type=fraction, default=0.05, help="calibration FPR (default 0.05)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default auto)")
    p.add_argument(
        "--weights-dtype", choices=WEIGHTS_DTYPES, default=None,
        help="store the weights as float16 or float32 (default: as the checkpoint does)",
    )  # fmt: skip
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")


def _run(args: argparse.Namespace) -> int:
    from deeplense.device import resolve_device
    from training.retune import retune

    changes = dict(args.arch_arg)
    if not changes and args.weights_dtype is None:
        print(
            "error: nothing to change: give --arch-arg KEY=VALUE or --weights-dtype",
            file=sys.stderr,
        )
        return 2
    try:
        out, calibrated = retune(
            args.checkpoint, args.data, args.out, changes, fpr=args.fpr,
            device=resolve_device(args.device), batch_size=args.batch_size,
            overwrite=args.overwrite, weights_dtype=args.weights_dtype,
            keep_prior=args.keep_prior,
        )  # fmt: skip
    except ValueError as exc:  # an argument the model does not have or refuses
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print_calibrations(calibrated, out)
    return 0


def print_calibrations(calibrated: "ScoreCalibrations", out: Path) -> None:
    """Each score's new threshold, and the folder written with its default score."""
    for score, cal in calibrated.calibrations.items():
        auc = "" if cal.validation_auc is None else f", validation AUC {cal.validation_auc:.4f}"
        tpr = "" if cal.validation_tpr is None else f", flags {cal.validation_tpr:.3f} of sub"
        print(f"{score}: threshold {cal.threshold:.6g} at FPR {cal.fpr}{auc}{tpr}")
    print(f"wrote {out} (default score {calibrated.default_score}: {calibrated.reason})")

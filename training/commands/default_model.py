"""`python -m training default-model`: which model a checkpoint set serves by default, and why."""

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "default-model",
        help="say which model a checkpoint set serves by default and why; --record stores it",
        description=(
            "Apply the service's rule for its default model (models.selection: the labelled "
            "validation split's detection rates or ROC-AUCs stored at calibration; never test "
            "metrics) to the cards under --checkpoints, without loading any weights, and say "
            "which cards record another choice (the service serves it unless "
            "DEEPLENSE_DEFAULT_MODEL names another). --record writes the choice into every card "
            "whose record differs (calibrate and evaluate --update-checkpoints do it themselves)."
        ),
    )
    p.add_argument("--checkpoints", type=Path, required=True, help="folder of checkpoint folders")
    p.add_argument(
        "--record", action="store_true", help="write the choice into the cards that differ"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from deeplense.errors import CheckpointError
    from training.default_record import read_default_choice, record_default_choice

    said = (
        record_default_choice(args.checkpoints)
        if args.record
        else read_default_choice(args.checkpoints)
    )
    choice = said.choice
    if choice is None:
        raise CheckpointError(f"{args.checkpoints}: no checkpoint folders (with config.json)")
    print(f"{args.checkpoints}: serves {choice.model} ({choice.score}) by default: {choice.reason}")
    stale = ", ".join(said.stale)
    if not said.stale:
        print("every card records this choice")
    elif args.record:
        print(f"recorded in {stale}")
    else:
        print(f"cards recording another choice or none: {stale} (--record updates them)")
    return 0

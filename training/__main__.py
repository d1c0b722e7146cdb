"""`python -m training <command> ...`: simulate, fit, calibrate, evaluate, score.

Domain errors (bad input, existing outputs, bad checkpoints) end the program with one line on
stderr and exit code 2; nothing else is caught, so real bugs keep their traceback.
"""

import argparse
import importlib
import logging
import sys

from deeplense.errors import DeepLenseError
from deeplense.numerics import flush_denormals
from training.commands import COMMANDS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training", description="DeepLense anomaly models: offline tools."
    )
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"training.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    flush_denormals()
    try:
        return int(args.func(args) or 0)
    except DeepLenseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""`deeplense <command> ...` (also `python -m training <command> ...`): serve, simulate, fit,
calibrate, evaluate, score, bench.

Domain errors (bad input, existing outputs, bad checkpoints) and a missing optional extra end
the program with one line on stderr and exit code 2; nothing else is caught, so real bugs keep
their traceback. Each command imports its heavy dependencies only when it runs, so `--help`
and the commands that do not need the train extra (scikit-learn, matplotlib) work without it.
Ctrl-C (exit 130) and SIGTERM (exit 143) unwind the stack like an exception, so temp files
and half-written folders are removed on the way out, and the line on stderr says the work was
cut short. For `serve` a signal is the normal way to stop: once uvicorn has shut down
gracefully the program ends quietly with exit 0 (a command sets `stop_is_clean`).

A rank under torchrun ends without the interpreter's finalisation (`cli`): gloo can leave a
worker thread behind even after a clean `destroy_process_group`, and finalising then aborts
("terminate called without an active exception", SIGABRT), which fails a run whose work is
done. Measured with torch 2.13 on 2 loaded CPU cores: 3 of 31 two-rank runs aborted after
every rank had destroyed its group (a barrier before it did not help); none of 25 since.
"""

import argparse
import importlib
import logging
import os
import signal
import sys
from types import FrameType
from typing import NoReturn

from deeplense.errors import DeepLenseError
from training.commands import COMMANDS

# Optional dependencies, by the top-level module a command imports -> the extra that has it.
EXTRAS = {"sklearn": "train", "matplotlib": "train"}


class Terminated(BaseException):
    """SIGTERM arrived; raised where the program is, so cleanups run as for Ctrl-C."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise Terminated


def build_parser(prog: str = "deeplense") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="DeepLense anomaly models: the scoring service and the offline tools.",
    )
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"training.commands.{name.replace('-', '_')}").register(sub)
    return parser


def main(argv: list[str] | None = None, prog: str = "deeplense") -> int:
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from deeplense.numerics import set_process_numerics  # imports torch: not for --help

    set_process_numerics()
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return int(args.func(args) or 0)
    except DeepLenseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").partition(".")[0]
        extra = EXTRAS.get(missing)
        if extra is None:
            raise
        print(
            f"error: `{args.command}` needs {missing}, in the {extra} extra: "
            f"pip install -e '.[{extra}]' (make install does it)",
            file=sys.stderr,
        )
        return 2
    except (KeyboardInterrupt, Terminated) as exc:
        if getattr(args, "stop_is_clean", False):
            return 0
        if isinstance(exc, KeyboardInterrupt):
            print("error: interrupted", file=sys.stderr)
            return 130
        print("error: terminated (SIGTERM)", file=sys.stderr)
        return 143
    finally:
        signal.signal(signal.SIGTERM, previous)


def _is_torchrun_rank() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def cli(prog: str = "deeplense") -> NoReturn:
    """The program: `main`, then exit with its code; a torchrun rank skips the interpreter's
    finalisation (module doc), its output flushed first."""
    code = main(prog=prog)
    if _is_torchrun_rank():
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    cli(prog="python -m training")

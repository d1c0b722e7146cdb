"""`deeplense bench NAME [ARGS...]`: run one of the benchmark scripts of bench/.

The benchmarks are scripts that print a table; they live in the source checkout (bench/), not
in the installed package, so this command works from a clone.
"""

import argparse
import subprocess
import sys
from pathlib import Path

from deeplense.errors import DeepLenseError

BENCH_DIR = Path(__file__).resolve().parents[2] / "bench"
BENCHES = {
    "sim": ("bench_simulate.py", "simulated images/s per class, ours and lenstronomy's"),
    "train": ("bench_train.py", "training images/s per model on the current device"),
    "serve": ("bench_serve.py", "raw model vs HTTP throughput and latency on loopback"),
    "load": ("bench_load.py", "shedding under overload: status counts, goodput, latency, RSS"),
    "oracle": ("oracle_auc.py", "ROC-AUC of ideal scores on a simulated test set"),
    "instrument": ("bench_instrument.py", "ROC-AUC of FITS uploads with their own PSF and noise"),
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="run a benchmark: " + ", ".join(BENCHES),
        description="Run a benchmark script of bench/ (from a source checkout). "
        + "; ".join(f"{name}: {text}" for name, (_, text) in BENCHES.items())
        + ". Arguments after NAME go to the script: `deeplense bench sim --help` lists them.",
    )
    p.add_argument("name", choices=list(BENCHES), metavar="NAME", help=", ".join(BENCHES))
    p.add_argument("script_args", nargs=argparse.REMAINDER, metavar="ARGS", help="for the script")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    script = BENCH_DIR / BENCHES[args.name][0]
    if not script.is_file():
        raise DeepLenseError(
            f"{script}: missing; the benchmarks ship with the source checkout, not the package"
        )
    return subprocess.call([sys.executable, str(script), *args.script_args])

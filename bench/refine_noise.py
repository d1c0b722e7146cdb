"""Optimiser noise: how far a refined model's default score and AUC move when its refinement
starts a hair away from the encoder's guess (`training.refine_noise`).

Each eps moves every start parameter by eps times its range times a normal draw; 1e-7 is
rounding, 1e-3 a guess a little off. A score worth reading moves by much less than the gap
between the classes, and the AUC by much less than its standard error.

    .venv/bin/python bench/refine_noise.py DATA_DIR --checkpoint runs/lf2/model_r/lensfit2 \
        [--n 20] [--eps 1e-7 1e-3] [--repeats 3]
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from deeplense.metrics import auc_standard_error  # noqa: E402
from models.checkpoint import load_checkpoint  # noqa: E402
from training.refine_noise import CLASSES, SUB, NotRefinedError, start_noise  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path, help="a simulated dataset folder (its test split)")
    parser.add_argument("--checkpoint", type=Path, required=True, help="a checkpoint folder")
    parser.add_argument("--n", type=int, default=20, help="test images per class")
    parser.add_argument("--eps", type=float, nargs="+", default=[1e-7, 1e-3])
    parser.add_argument("--repeats", type=int, default=3, help="perturbed starts per eps")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not (args.data / "manifest.json").is_file():
        print(f"error: {args.data}: not a simulated dataset (no manifest.json)", file=sys.stderr)
        return 2
    if not (args.checkpoint / "config.json").is_file():
        print(f"error: {args.checkpoint}: not a checkpoint (no config.json)", file=sys.stderr)
        return 2
    if args.n < 2 or args.repeats < 1:
        print("error: --n must be at least 2 and --repeats at least 1", file=sys.stderr)
        return 2
    start = time.perf_counter()
    loaded = load_checkpoint(args.checkpoint)
    try:
        results = start_noise(loaded, args.data, args.n, args.eps, args.repeats, args.seed)
    except NotRefinedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    score = loaded.config.default_score
    base = results[0]
    se = auc_standard_error(base.base_auc, 2 * args.n, args.n)
    seconds = time.perf_counter() - start
    print(f"{args.checkpoint} ({score}), {args.data}: first {args.n} test images per class, "
          f"{args.repeats} perturbed starts per eps, {seconds:.0f} s\n")  # fmt: skip
    medians = {c: float(np.median(base.base[c])) for c in CLASSES}
    print("Median score from the encoder's start: "
          + ", ".join(f"{c} {medians[c]:.4g}" for c in CLASSES))  # fmt: skip
    gap = {c: abs(medians[c] - medians["no_sub"]) / abs(medians["no_sub"]) for c in SUB}
    print("Gap to no_sub (relative): " + ", ".join(f"{c} {gap[c]:.3g}" for c in SUB) + "\n")
    print(f"AUC from the encoder's start: {base.base_auc:.3f} (standard error {se:.3f})\n")
    print("| eps | AUC per perturbed start | AUC range | median relative score change "
          "no_sub / sphere / vort | largest |")  # fmt: skip
    print("| --- | --- | --- | --- | --- |")
    for r in results:
        aucs = r.run_aucs
        change = [r.relative_change(c) for c in CLASSES]
        med = " / ".join(f"{np.median(c):.2g}" for c in change)
        big = max(float(np.max(c)) for c in change)
        print(f"| {r.eps:g} | {', '.join(f'{a:.3f}' for a in aucs)} | "
              f"{aucs.max() - aucs.min():.3f} | {med} | {big:.2g} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""LensFit's MAP refinement: ROC-AUC and milliseconds per image against the number of steps K.

For each K, the checkpoint's `refine_steps` is set to K and the first N test images per
class of DATA_DIR are scored (every score); the table gives the AUC (sub vs no_sub) of
each score and the wall-clock milliseconds per image of the whole scoring (encoder,
refinement, rendering, scores) at the given batch size and thread count.

    .venv/bin/python bench/bench_lensfit.py CHECKPOINT_DIR DATA_DIR [--n 100] [--k 0 5 10 20]
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from deeplense.metrics import roc_auc  # noqa: E402
from deeplense.scores import list_scores  # noqa: E402
from deeplense.scoring import score_array  # noqa: E402
from models.checkpoint import load_checkpoint  # noqa: E402

CLASSES = ("no_sub", "sphere", "vort")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="a lensfit checkpoint folder")
    parser.add_argument("data", type=Path, help="dataset folder with test/{no_sub,sphere,vort}")
    parser.add_argument("--n", type=int, default=100, help="test images per class")
    parser.add_argument("--k", type=int, nargs="+", default=[0, 5, 10, 20], help="steps K")
    parser.add_argument(
        "--method", choices=["adam", "gauss_newton"], default="adam", help="refinement method"
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load_checkpoint(args.checkpoint)
    model = loaded.model
    if not hasattr(model.config, "refine_steps"):
        print(f"error: {args.checkpoint} is not a lensfit checkpoint", file=sys.stderr)
        return 2
    images = {
        c: np.array(np.load(args.data / "test" / f"{c}.npy", mmap_mode="r")[: args.n])
        for c in CLASSES
    }
    total = sum(len(x) for x in images.values())
    names = list_scores()
    print(f"{args.checkpoint}, {args.n} test images per class, batch {args.batch_size}, "
          f"{args.threads} threads, refinement {args.method}\n")  # fmt: skip
    print("| K | " + " | ".join(f"AUC {s}" for s in names) + " | ms / image |")
    print("|---|" + "---|" * (len(names) + 1))
    model.config.refine_method = args.method
    for k in args.k:
        model.config.refine_steps = k
        start = time.perf_counter()
        scores = {
            c: score_array(
                model, x, batch_size=args.batch_size, scores=names,
                psf_sigma_pixels=loaded.config.input.psf_sigma_pixels,
            ).scores
            for c, x in images.items()
        }  # fmt: skip
        ms = 1000 * (time.perf_counter() - start) / total
        aucs = [
            roc_auc(scores["no_sub"][s], np.concatenate([scores["sphere"][s], scores["vort"][s]]))
            for s in names
        ]
        print(f"| {k} | " + " | ".join(f"{a:.3f}" for a in aucs) + f" | {ms:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""LensFit's MAP refinement: ROC-AUC and milliseconds per image against the number of steps K.

For each K, the checkpoint's `refine_steps` is set to K and the first N images per class of
DATA_DIR's split (test by default; `--split val` for choosing settings, never the split one
reports) are scored (every score); the table gives the AUC (sub vs no_sub) of each score and
the wall-clock milliseconds per image of the whole scoring (encoder, refinement, rendering,
scores) at the given batch size and thread count.

`--prior deconvolved` first re-learns the checkpoint's prior with `prior_deconvolve` (the
fits' photon noise taken out) from the first `prior_fit_images` images of DATA_DIR/train,
and prints both priors; `--prior relearned` re-learns it without deconvolution (the control).

    .venv/bin/python bench/bench_lensfit.py CHECKPOINT_DIR DATA_DIR [--n 100] [--k 0 1 2 3 5]
    .venv/bin/python bench/bench_lensfit.py CKPT DATA --split val --k 2 --prior deconvolved
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from deeplense.inference import score_array  # noqa: E402
from deeplense.metrics import roc_auc  # noqa: E402
from deeplense.scores import scores_for  # noqa: E402
from deeplense.vocabulary import CLASSES  # noqa: E402
from models.checkpoint import load_checkpoint  # noqa: E402


def _stack(images: np.ndarray) -> np.ndarray:
    """A stack as float32 (N, 1, H, W), from (N, H, W) or (N, 1, H, W)."""
    x = np.array(images, dtype=np.float32)
    return x[:, None] if x.ndim == 3 else x


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="a lensfit checkpoint folder")
    parser.add_argument("data", type=Path, help="dataset folder with test/{no_sub,sphere,vort}")
    parser.add_argument("--n", type=int, default=100, help="test images per class")
    parser.add_argument("--k", type=int, nargs="+", default=[0, 1, 2, 3, 5], help="steps K")
    parser.add_argument(
        "--method",
        choices=["adam", "gauss_newton"],
        default="gauss_newton",
        help="refinement method (default gauss_newton, the model's default)",
    )
    parser.add_argument("--split", choices=["test", "val"], default="test", help="(test)")
    parser.add_argument(
        "--prior",
        choices=["stored", "relearned", "deconvolved"],
        default="stored",
        help="the checkpoint's prior, or one re-learned from DATA_DIR/train (see above)",
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
    if args.prior != "stored":
        before = model.card()["prior"]
        model.config.prior_deconvolve = args.prior == "deconvolved"
        n_fit = int(model.config.prior_fit_images)
        train = np.load(args.data / "train" / "no_sub.npy", mmap_mode="r")[:n_fit]
        model.after_training(torch.from_numpy(_stack(train)))
        after = model.card()["prior"]
        print(f"prior re-learned ({args.prior}) from {len(train)} training images:")
        print("| parameter | stored mean | stored std | new mean | new std |")
        print("|---|---|---|---|---|")
        for name in before:
            b, a = before[name], after[name]
            print(f"| {name} | {b['mean']} | {b['std']} | {a['mean']} | {a['std']} |")
        print()
    images = {
        c: _stack(np.load(args.data / args.split / f"{c}.npy", mmap_mode="r")[: args.n])
        for c in CLASSES
    }
    total = sum(len(x) for x in images.values())
    names = scores_for(model)
    print(f"{args.checkpoint}, {args.n} {args.split} images per class, batch {args.batch_size}, "
          f"{args.threads} threads, refinement {args.method}, prior {args.prior}\n")  # fmt: skip
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

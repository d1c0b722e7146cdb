"""LensFit 2's refinement schedule: coarse (2 x 2 binned) and full-resolution steps against
the AUC and the seconds per image.

For each schedule C+F, a LensFit 2 checkpoint's `coarse_steps` is set to C and its
`refine_steps` to F, and N images of each class of a split (the first, or from `--offset`;
choose on val, never on the split one reports) are scored one at a time on one thread by the
checkpoint's default score. The table gives the AUC (sub vs no_sub, and each class), the
normal lenses' median and 95th percentile score (a schedule that stops short of the optimum
leaves the normal lenses' tail heavier) and the wall seconds per image of the whole scoring
(noise estimate, encoder, refinement, scores); a first image is scored untimed as a warm-up.

    .venv/bin/python bench/refine_schedule.py checkpoints/model_b/lensfit2 \
        data/model_b_r2/val --n 100 --schedule 0+4 0+1 3+1 4+0
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deeplense.inference import score_array  # noqa: E402
from deeplense.metrics import roc_auc  # noqa: E402
from deeplense.numerics import set_process_numerics  # noqa: E402
from deeplense.vocabulary import NORMAL  # noqa: E402
from models.checkpoint import load_checkpoint  # noqa: E402
from training.datasets import load_split  # noqa: E402


def schedule(text: str) -> tuple[int, int]:
    """'C+F' -> (coarse steps, full steps)."""
    try:
        coarse, full = (int(part) for part in text.split("+"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"a schedule is C+F (coarse+full steps), got {text!r}"
        ) from None
    if coarse < 0 or full < 0:
        raise argparse.ArgumentTypeError(f"steps must be >= 0, got {text!r}")
    return coarse, full


def stacks(split: Path, n: int, offset: int = 0) -> dict[str, np.ndarray]:
    """Class -> n images (n, 1, H, W) float32 of each class in the split folder `split`
    (`training.datasets.load_split`), from `offset`."""
    found = {
        cls: np.array(images[offset : offset + n], dtype=np.float32)
        for cls, images in load_split(split.parent, split.name).items()
    }
    if NORMAL not in found or len(found) < 2:
        raise SystemExit(f"error: {split} needs no_sub and sphere or vort")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="a lensfit2 checkpoint folder")
    parser.add_argument("split", type=Path, help="a split folder with no_sub and sphere/vort")
    parser.add_argument("--n", type=int, default=50, help="images per class (50)")
    parser.add_argument("--offset", type=int, default=0, help="the first image of each class (0)")
    parser.add_argument(
        "--schedule", type=schedule, nargs="+", default=[(0, 4), (3, 1)], help="C+F ..."
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    set_process_numerics()
    loaded = load_checkpoint(args.checkpoint)
    model, score = loaded.model, loaded.config.default_score
    if not hasattr(model.config, "coarse_steps"):
        raise SystemExit(f"error: {loaded.config.architecture} has no coarse steps")
    images = stacks(args.split, args.n, args.offset)
    psf = model.psf_sigma_pixels
    score_array(model, images[NORMAL][:1], scores=(score,), psf_sigma_pixels=psf)  # warm-up
    print(
        f"{args.checkpoint}, {args.split}, {args.n} per class from image {args.offset}, "
        f"score {score}, one thread"
    )
    others = [c for c in images if c != NORMAL]
    print(
        "| coarse+full | AUC sub | "
        + " | ".join(f"AUC {c}" for c in others)
        + " | no_sub median, p95 | s / image |"
    )
    print("|---|---|" + "---|" * len(others) + "---|---|")
    for coarse, full in args.schedule:
        model.config.coarse_steps, model.config.refine_steps = coarse, full
        started, count, values = time.perf_counter(), 0, {}
        for cls, x in images.items():
            scored = score_array(model, x, batch_size=1, scores=(score,), psf_sigma_pixels=psf)
            values[cls] = scored.scores[score]
            count += len(x)
        seconds = (time.perf_counter() - started) / count
        normal = values[NORMAL]
        sub = np.concatenate([values[c] for c in others])
        per_class = " | ".join(f"{roc_auc(normal, values[c]):.3f}" for c in others)
        print(
            f"| {coarse}+{full} | {roc_auc(normal, sub):.3f} | {per_class} | "
            f"{np.median(normal):.3f}, {np.percentile(normal, 95):.3f} | {seconds:.3f} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""LensFit 2's scores with its bases drawn in float64 and in float32, on the same lenses.

LensFit 2 draws its bases (the design matrix and its Jacobian) in float32 and keeps the Gram
matrix, the solve, the image, the residual and the cost in float64
(`deeplense.lensing.flexible.FlexibleLens.bases_dtype`). This scores the first N images of
each class of a validation (or test) split both ways, one thread, by the checkpoint's
default score, and prints the changes against the score's spread, the AUC (sub vs no_sub)
both ways and the seconds per image.

    .venv/bin/python bench/bases_dtype.py checkpoints/model_r/lensfit2 \
        data/model_r_val10_1k/val --n 16
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deeplense.inference import score_array  # noqa: E402
from deeplense.lensing.flexible import FlexibleLens  # noqa: E402
from deeplense.metrics import roc_auc  # noqa: E402
from deeplense.vocabulary import CLASSES, NORMAL  # noqa: E402
from models.checkpoint import load_checkpoint  # noqa: E402

DTYPES = {"float64": torch.float64, "float32": torch.float32}


def scores_both_ways(
    checkpoint: Path, split: Path, n: int
) -> tuple[str, dict[str, dict[str, np.ndarray]], dict[str, float]]:
    """The default score's name; dtype -> class -> (n,) scores; dtype -> seconds per image."""
    loaded = load_checkpoint(checkpoint)
    model = loaded.model
    if not hasattr(model, "lens"):
        raise SystemExit(f"error: {loaded.config.architecture} has no flexible lens")
    score = loaded.config.default_score
    stacks = {}
    for cls in CLASSES:
        path = split / f"{cls}.npy"
        if path.exists():
            images = np.load(path, allow_pickle=False, mmap_mode="r")[:n]
            stacks[cls] = np.asarray(images[:, None] if images.ndim == 3 else images)
    if NORMAL not in stacks or len(stacks) < 2:
        raise SystemExit(f"error: {split} needs no_sub.npy and sphere.npy or vort.npy")
    if stacks[NORMAL].shape[-1] != model.image_size:
        # another grid gets a lens of its own (`lens_on`), which this swap would not reach
        raise SystemExit(
            f"error: {split}'s images are {stacks[NORMAL].shape[-1]} px; this compares on "
            f"the model's own grid of {model.image_size}"
        )
    shipped = model.lens
    values: dict[str, dict[str, np.ndarray]] = {}
    seconds: dict[str, float] = {}
    try:
        model.lens = FlexibleLens(shipped.config, bases_dtype=torch.float64)
        score_array(model, stacks[NORMAL][:1], scores=(score,))  # warm-up, untimed
        for label, dtype in DTYPES.items():
            model.lens = FlexibleLens(shipped.config, bases_dtype=dtype)
            started, count = time.perf_counter(), 0
            values[label] = {}
            for cls, images in stacks.items():
                scored = score_array(
                    model, images, batch_size=8, scores=(score,),
                    psf_sigma_pixels=model.psf_sigma_pixels,
                )  # fmt: skip
                values[label][cls] = scored.scores[score]
                count += len(images)
            seconds[label] = (time.perf_counter() - started) / count
    finally:
        model.lens = shipped
    return score, values, seconds


def table(score: str, values: dict[str, dict[str, np.ndarray]], seconds: dict[str, float]) -> str:
    exact, drawn = values["float64"], values["float32"]
    both = np.concatenate(list(exact.values()))
    change = np.abs(np.concatenate(list(drawn.values())) - both)
    lines = [
        f"{len(both)} images, score {score}: spread (SD) {both.std():.4g}, largest change "
        f"{change.max():.3g}, median change {np.median(change):.3g}",
        "| bases | AUC sub vs no_sub | s per image |",
        "|---|---|---|",
    ]
    for label, per_class in values.items():
        sub = np.concatenate([v for c, v in per_class.items() if c != NORMAL])
        auc = roc_auc(per_class[NORMAL], sub)
        lines.append(f"| {label} | {auc:.4f} | {seconds[label]:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="a lensfit2 checkpoint folder")
    parser.add_argument("split", type=Path, help="a split folder with no_sub.npy and sphere/vort")
    parser.add_argument("--n", type=int, default=16, help="images per class (16)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(table(*scores_both_ways(args.checkpoint, args.split, args.n)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

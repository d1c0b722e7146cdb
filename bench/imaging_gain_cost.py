"""What imaging_gain costs on top of a LensFit 2 fit, as the service pays it.

Scores the first N images of each class of a split through `score_array` (the service's and
`deeplense score`'s path), one image at a time on one thread: once with a pixel score alone
(`--plain`, chi2_psf_light) and once with imaging_gain beside it, `--rounds` times each,
alternated, and prints the seconds per image of each (the median over rounds) and their
difference, the tests' cost. Run it in two trees (a worktree of an older commit and this
one) on the same images, one after the other, to compare versions.

    .venv/bin/python bench/imaging_gain_cost.py checkpoints/model_a/lensfit2 \
        data/model_a_r2/val --n 4 --rounds 2
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deeplense.errors import ScoreNotOfferedError  # noqa: E402
from deeplense.inference import score_array  # noqa: E402
from deeplense.scores import check_offered, scores_for  # noqa: E402
from deeplense.vocabulary import CLASSES  # noqa: E402
from models.checkpoint import load_checkpoint  # noqa: E402


def split_images(split: Path, n: int) -> np.ndarray:
    """The first n images of each class file in split/ (stored (N, H, W) or (N, 1, H, W)), as
    float32 (N, 1, H, W)."""
    stacks = [
        np.load(split / f"{c}.npy", mmap_mode="r", allow_pickle=False)[:n]
        for c in CLASSES
        if (split / f"{c}.npy").exists()
    ]
    if not stacks:
        raise SystemExit(f"error: no class file ({', '.join(CLASSES)}.npy) in {split}")
    images = np.concatenate(stacks).astype(np.float32)
    return images[:, None] if images.ndim == 3 else images


def seconds_per_image(
    checkpoint: Path, images: np.ndarray, plain: str, rounds: int
) -> dict[str, float]:
    """'plain' and 'with imaging_gain': the median seconds an image over `rounds`."""
    model = load_checkpoint(checkpoint).model.eval()
    try:
        check_offered(model, ["imaging_gain", plain], checkpoint.name)
    except ScoreNotOfferedError as error:
        raise SystemExit(f"error: {error}") from None
    asks = {"plain": [plain], "with imaging_gain": ["imaging_gain", plain]}
    score_array(model, images[:1], scores=asks["with imaging_gain"], batch_size=1)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in asks}
    for _ in range(rounds):
        for name, scores in asks.items():
            start = time.perf_counter()
            score_array(model, images, scores=scores, batch_size=1)
            times[name].append((time.perf_counter() - start) / len(images))
    return {name: statistics.median(values) for name, values in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="a LensFit 2 checkpoint folder")
    parser.add_argument("split", type=Path, help="a split folder with {no_sub,sphere,vort}.npy")
    parser.add_argument("--n", type=int, default=4, help="images per class (4)")
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds of each (2)")
    parser.add_argument("--plain", default="chi2_psf_light", help="the pixel score (default)")
    args = parser.parse_args(argv)
    if args.n < 1 or args.rounds < 1:
        raise SystemExit("error: --n and --rounds must be at least 1")
    plain_names = scores_for(None)
    if args.plain not in plain_names:
        raise SystemExit(f"error: --plain must be one of {', '.join(plain_names)}")
    torch.set_num_threads(1)
    images = split_images(args.split, args.n)
    seconds = seconds_per_image(args.checkpoint, images, args.plain, args.rounds)
    print(f"{len(images)} images, one thread, batch 1, median of {args.rounds} rounds")
    print("| scores | s an image |")
    print("|---|---|")
    for name, value in seconds.items():
        print(f"| {name} | {value:.3f} |")
    print(f"| imaging_gain's tests | {seconds['with imaging_gain'] - seconds['plain']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""One checkpoint scored by two source trees: the speed of each, and how far their scores differ.

A change meant to make scoring faster without changing it (a layout, an allocator setting)
is checked here: the same checkpoint scores the first N images of each class of a split,
with its default score, one torch thread, in a fresh process per tree per round (each
tree's own `set_process_numerics` applied), the trees alternating for `--rounds` rounds so
that a busy machine slows both alike. Prints each tree's median seconds per image (the
encoder and the refinement; loading excluded) and AUC (sub vs no_sub), and the largest
change of any score against the scores' spread.

    git worktree add /tmp/before 120f21f
    .venv/bin/python bench/compare_trees.py checkpoints/model_r/lensfit2 \
        data/model_r_val10_1k/val --before /tmp/before --n 16 --rounds 3
"""

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from deeplense.metrics import roc_auc  # noqa: E402
from deeplense.vocabulary import CLASSES, NORMAL  # noqa: E402

# Run in a fresh interpreter with one tree first on its path: scores one split, prints JSON.
CHILD = r"""
import json, sys, time
tree, checkpoint, split, n, classes = sys.argv[1:6]
sys.path.insert(0, tree)
import numpy as np, torch
import deeplense.numerics as numerics
getattr(numerics, "set_process_numerics", numerics.flush_denormals)()
from deeplense.inference import score_array
from models.checkpoint import load_checkpoint
torch.set_num_threads(1)
loaded = load_checkpoint(checkpoint)
model, score = loaded.model, loaded.config.default_score
psf = float(getattr(model, "psf_sigma_pixels", 2.0))
values, seconds, count = {}, 0.0, 0
for cls in classes.split(","):
    images = np.load(f"{split}/{cls}.npy", allow_pickle=False, mmap_mode="r")[: int(n)]
    images = np.array(images[:, None] if images.ndim == 3 else images, dtype=np.float32)
    score_array(model, images[:1], scores=(score,), psf_sigma_pixels=psf)  # warm-up
    started = time.perf_counter()
    scored = score_array(model, images, batch_size=8, scores=(score,), psf_sigma_pixels=psf)
    seconds += time.perf_counter() - started
    count += len(images)
    values[cls] = scored.scores[score].tolist()
print(json.dumps({"score": score, "values": values, "seconds": seconds / count}))
"""


def run_tree(tree: Path, checkpoint: Path, split: Path, n: int, classes: list[str]) -> dict:
    """One fresh process of `tree` scoring the split: {"score", "values", "seconds"}."""
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(tree), str(checkpoint), str(split), str(n),
         ",".join(classes)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or ["no output"]
        raise SystemExit(f"error: {tree} failed: {tail[0]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="a checkpoint folder")
    parser.add_argument("split", type=Path, help="a split folder with no_sub.npy and sub classes")
    parser.add_argument("--before", type=Path, required=True, help="the other source tree")
    parser.add_argument("--n", type=int, default=16, help="images per class (16)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (3)")
    args = parser.parse_args(argv)
    classes = [c for c in CLASSES if (args.split / f"{c}.npy").exists()]
    if NORMAL not in classes or len(classes) < 2:
        raise SystemExit(f"error: {args.split} needs no_sub.npy and sphere.npy or vort.npy")
    trees = {"before": args.before.resolve(), "this tree": REPO}
    runs: dict[str, list[dict]] = {label: [] for label in trees}
    for _ in range(args.rounds):
        for label, tree in trees.items():
            runs[label].append(run_tree(tree, args.checkpoint, args.split, args.n, classes))
    first = {label: r[0]["values"] for label, r in runs.items()}
    flat = {label: np.concatenate([v[c] for c in classes]) for label, v in first.items()}
    change = np.abs(flat["this tree"] - flat["before"])
    score = runs["before"][0]["score"]
    print(
        f"{args.checkpoint} on {args.split}, {args.n} per class, score {score}: spread (SD) "
        f"{flat['before'].std():.4g}, largest change {change.max():.3g}"
    )
    print("| tree | AUC sub vs no_sub | s per image, median (each round) |")
    print("|---|---|---|")
    for label, values in first.items():
        sub = np.concatenate([values[c] for c in classes if c != NORMAL])
        auc = roc_auc(np.asarray(values[NORMAL]), sub)
        each = [r["seconds"] for r in runs[label]]
        rounds = ", ".join(f"{s:.3f}" for s in each)
        print(f"| {label} | {auc:.4f} | {statistics.median(each):.3f} ({rounds}) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

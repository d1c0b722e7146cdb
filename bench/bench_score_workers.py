"""`deeplense score`'s speed on one stack of images: seconds per image by threads and workers.

Scores the first N images of one .npy stack with one checkpoint through
`training.batch_score.score_files` (the `score` command's whole path: reading, the service's
preparation, scoring, the default score's verdict), each way in turn:

  - one process, one torch thread;
  - one process, `--threads` torch threads (torch's default is one per core);
  - `--workers` one-thread processes (`deeplense score --workers`), start-up included (each
    loads torch and the checkpoint: about two seconds), so few images understate them.

and prints wall seconds, seconds per image and images per second for each. Run it with the
machine otherwise idle: every way shares the same cores.

    .venv/bin/python bench/bench_score_workers.py CHECKPOINT_DIR STACK.npy [--n 16]
    .venv/bin/python bench/bench_score_workers.py checkpoints/model_r/lensfit2 \
        data/bound/model_r/test/no_sub.npy --n 16 --workers 2 --threads 2
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from deeplense.numerics import set_process_numerics  # noqa: E402
from models.checkpoint import load_checkpoint  # noqa: E402
from training.batch_score import score_files  # noqa: E402


def timed(
    checkpoint: Path, stack: Path, threads: int, workers: int, batch_size: int = 64
) -> tuple[float, int]:
    """Wall seconds to score every image of `stack`, and the images scored (this process's
    thread count is restored after)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        loaded = load_checkpoint(checkpoint)
        start = time.perf_counter()
        rows = list(
            score_files(loaded, [stack], progress=False, workers=workers, batch_size=batch_size)
        )
        wall = time.perf_counter() - start
    finally:
        torch.set_num_threads(before)
    errors = [r.error for r in rows if r.error]
    if errors:
        raise SystemExit(f"scoring failed: {errors[0]}")
    return wall, len(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="a checkpoint folder")
    parser.add_argument("stack", type=Path, help="an .npy stack (N, H, W) or (N, 1, H, W)")
    parser.add_argument("--n", type=int, default=16, help="images scored (the stack's first)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64, help="images per batch (64)")
    args = parser.parse_args(argv)
    set_process_numerics()  # as the `deeplense` CLI sets them
    images = np.load(args.stack, allow_pickle=False)[: args.n]
    with tempfile.TemporaryDirectory() as tmp:
        subset = Path(tmp) / "stack.npy"
        np.save(subset, images)
        timed(args.checkpoint, subset, 1, 1)  # warm: first-call costs out of the table
        ways = [
            ("1 process, 1 thread", 1, 1),
            (f"1 process, {args.threads} threads", args.threads, 1),
            (f"{args.workers} workers, 1 thread each", 1, args.workers),
        ]
        print(
            f"{args.checkpoint}, {len(images)} images of {args.stack}, batches of {args.batch_size}"
        )
        print("| how | wall s | s per image | images per s |")
        print("|---|---|---|---|")
        for label, threads, workers in ways:
            wall, n = timed(args.checkpoint, subset, threads, workers, args.batch_size)
            print(f"| {label} | {wall:.2f} | {wall / n:.3f} | {n / wall:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

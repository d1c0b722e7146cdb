"""What LensFit 2's learnt prior measures: the lens population's spread, the fits' error, or
one fit's noise. Per parameter, on N normal training lenses of a simulated set:

  - population: the spread of the true parameters (parameters.csv, as the flexible model
    names them: `training.flexible_bound.truth_theta`);
  - refits: the spread of converged refits from the encoder's start, under no prior (what
    `after_training` learns the prior from), and the spread of their errors (refit - truth);
  - one fit's noise: the median over the lenses of the inverse Fisher matrix's diagonal of
    the whitened residual, the light and source solved at every parameter;
  - from the truth: the largest difference between the refit started at the truth and the
    one started at the encoder's guess (0: both starts reach the same minimum).

A parameter the population holds fixed (population 0) whose refits still spread is held by
the family's misfit of each lens, not by noise; one that varies shows its spread in both.

    .venv/bin/python bench/prior_spread.py checkpoints/model_a/lensfit2 data/model_a_lf2s --n 32
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from deeplense.lensing.flexible import NAMES  # noqa: E402
from deeplense.lensing.flexible_fit import fit_flexible  # noqa: E402
from deeplense.lensing.levenberg import inverse_fisher_diagonal  # noqa: E402
from deeplense.noise import estimate_noise  # noqa: E402
from models.checkpoint import load_checkpoint  # noqa: E402
from training.datasets import load_split  # noqa: E402
from training.flexible_bound import truth_theta  # noqa: E402
from training.simulate import read_rows  # noqa: E402


def prior_spread(checkpoint: Path, data: Path, n: int, steps: int) -> dict[str, np.ndarray]:
    """Each column of the module doc's table, (13,) each, over DATA's first `n` normal
    training lenses: population, refits, refit_error, one_fit_noise, start_difference."""
    model = load_checkpoint(checkpoint).model.eval()
    images = load_split(data, "train", image_size=model.image_size, classes=["no_sub"])
    x = torch.from_numpy(np.asarray(images["no_sub"][:n], dtype=np.float64))  # (N, 1, S, S)
    rows = list(read_rows(data, "train", n=n).values())
    if len(rows) < len(x) or len(x) < 2:
        raise SystemExit(f"{data}: need at least 2 training lenses with their parameters")
    truth = torch.from_numpy(np.stack([truth_theta(r) for r in rows[: len(x)]]))  # (N, 13)
    sigma = estimate_noise(x.float(), model.psf_sigma_pixels).double()
    psf = model.psf_kernel().double()
    start = model.encoder_start(x.float()).double()
    refit, from_truth, noise = [], [], []
    for i in range(len(x)):
        one = (x[i : i + 1], sigma[i : i + 1], psf)
        theta = fit_flexible(model.lens, *one, start[i : i + 1], steps).theta  # (1, 13)
        refit.append(theta)
        from_truth.append(fit_flexible(model.lens, *one, truth[i : i + 1], steps).theta)
        noise.append(inverse_fisher_diagonal(model.lens.jacobian(theta, *one)))
    refits, truths = torch.cat(refit), torch.cat(from_truth)
    return {
        "population": truth.std(dim=0).numpy(),
        "refits": refits.std(dim=0).numpy(),
        "refit_error": (refits - truth).std(dim=0).numpy(),
        "one_fit_noise": torch.cat(noise).median(dim=0).values.sqrt().numpy(),
        "start_difference": (refits - truths).abs().amax(dim=0).numpy(),
    }


def table(result: dict[str, np.ndarray]) -> str:
    """The module doc's table, markdown."""
    lines = [
        "| parameter | population spread | refits' spread | refit error spread | "
        "one fit's noise | largest start difference |",
        "|---|---|---|---|---|---|",
    ]
    for j, name in enumerate(NAMES):
        cells = " | ".join(f"{result[key][j]:.4f}" for key in COLUMNS)
        lines.append(f"| {name} | {cells} |")
    return "\n".join(lines)


COLUMNS = ("population", "refits", "refit_error", "one_fit_noise", "start_difference")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="a LensFit 2 checkpoint folder")
    parser.add_argument("data", type=Path, help="a simulated set with train/ and parameters.csv")
    parser.add_argument("--n", type=int, default=32, help="training lenses (default 32)")
    parser.add_argument("--steps", type=int, default=10, help="refit steps (the prior's: 10)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    began = time.perf_counter()
    result = prior_spread(args.checkpoint, args.data, args.n, args.steps)
    print(
        f"{args.checkpoint} on {args.n} training lenses of {args.data}, {args.steps} steps, "
        f"{time.perf_counter() - began:.0f} s, one thread"
    )
    print(table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Gravitational imaging's tests (`deeplense.lensing.perturbation`) against LensFit 2's
default score, on the same fits: AUC sub vs no_sub and per class, one image at a time on one
thread.

Each image is fitted as `deeplense score` fits it (the checkpoint's coarse and full steps),
scored by the checkpoint's default score, then tested at the fitted lens: the tension (the
lens's pull against its prior), the one-blob scan, their sum, and the joint blob test. Also
the whole image's chi-square, the omnibus test. Choose settings on a validation split, never
on the split one reports.

    .venv/bin/python bench/perturbation_auc.py checkpoints/model_a/lensfit2 \
        data/model_a_r2/val --n 50 [--spacing 0.2 --width 0.1 --disc-radius 2 --ridge 1e-3]
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.refine_schedule import stacks  # noqa: E402
from deeplense.lensing.perturbation import PerturbationConfig, perturbation_test  # noqa: E402
from deeplense.metrics import roc_auc  # noqa: E402
from deeplense.noise import estimate_noise  # noqa: E402
from deeplense.numerics import set_process_numerics  # noqa: E402
from deeplense.scores import compute_scores  # noqa: E402
from deeplense.vocabulary import NORMAL  # noqa: E402
from models.checkpoint import load_checkpoint  # noqa: E402
from models.lensfit2 import LensFit2, fit_in_chunks  # noqa: E402

STATISTICS = ("default", "chi2_total", "tension", "scan", "imaging_gain", "improvement", "excess")


def fitted(model: LensFit2, x: torch.Tensor, sigma: torch.Tensor, psf_sigma: float) -> torch.Tensor:
    """The smooth lens (1, 13) float64 `LensFit2.refine` fits to one image x (1, 1, n, n)
    through a Gaussian PSF of `psf_sigma` pixels."""
    x64, sigma64 = x.double(), sigma.double()
    scale = model.config.pixel_scale
    start = model.encoder_start(x)
    if model.coarse_steps_for(x.shape[-1]) > 0:
        start = model.coarse_refine(x64, sigma64, start, psf_sigma, scale)
    lens = model.lens_on(x.shape[-1], scale)
    psf = model.psf_kernel(psf_sigma).double()
    steps = int(model.config.refine_steps)
    return fit_in_chunks(lens, x64, sigma64, psf, start, steps, model.prior()).theta.double()


def image_statistics(
    model: LensFit2, score: str, x: torch.Tensor, config: PerturbationConfig, psf_sigma: float
) -> dict[str, float]:
    """Every statistic of one image x (1, 1, n, n) float32 of PSF sigma `psf_sigma` pixels."""
    sigma = estimate_noise(x, psf_sigma)
    theta = fitted(model, x, sigma, psf_sigma)
    lens = model.lens_on(x.shape[-1])
    psf = model.psf_kernel(psf_sigma).double()
    x64, sigma64 = x.double(), sigma.double()
    linear = lens.fit_linear(theta, x64, sigma64, psf)
    x_hat = linear.image().view_as(x).clamp(0.0, 1.0).float()
    default = compute_scores(x, x_hat, [score], psf_sigma, sigma=sigma).values[score]
    test = perturbation_test(lens, theta, x64, sigma64, psf, config, linear)
    whitened = (x64 - linear.image().view_as(x64)) * lens.weight(sigma64)
    return {
        "default": float(default[0]),
        "chi2_total": float(whitened.square().sum()),
        "tension": test.tension,
        "scan": test.scan,
        "imaging_gain": test.imaging_gain,
        "improvement": test.improvement,
        "excess": test.excess,
        "dof": test.dof,
        "blobs": float(test.blobs),
        "best_x": test.best[0],
        "best_y": test.best[1],
        "amplitude": test.amplitude,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="a lensfit2 checkpoint folder")
    parser.add_argument("split", type=Path, help="a split folder with no_sub and sphere/vort")
    parser.add_argument("--n", type=int, default=50, help="images per class (50)")
    parser.add_argument("--offset", type=int, default=0, help="the first image of each class")
    parser.add_argument("--spacing", type=float, default=PerturbationConfig.spacing)
    parser.add_argument("--width", type=float, default=PerturbationConfig.width)
    parser.add_argument("--lit-sigma", type=float, default=PerturbationConfig.lit_sigma)
    parser.add_argument("--max-blobs", type=int, default=PerturbationConfig.max_blobs)
    parser.add_argument("--disc-radius", type=float, default=PerturbationConfig.disc_radius)
    parser.add_argument("--ridge", type=float, default=PerturbationConfig.ridge)
    parser.add_argument(
        "--psf-sigma-pixels",
        type=float,
        help="the images' Gaussian PSF sigma in pixels, told as an upload tells it (default: "
        "the checkpoint's)",
    )
    parser.add_argument("--per-image", type=Path, help="write each image's statistics (CSV)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    set_process_numerics()
    loaded = load_checkpoint(args.checkpoint)
    model, score = loaded.model, loaded.config.default_score
    if not isinstance(model, LensFit2):
        raise SystemExit(f"error: {args.checkpoint} is not a lensfit2 checkpoint")
    model.eval()
    config = PerturbationConfig(
        spacing=args.spacing,
        width=args.width,
        disc_radius=args.disc_radius,
        lit_sigma=args.lit_sigma,
        max_blobs=args.max_blobs,
        ridge=args.ridge,
    )
    psf_sigma = args.psf_sigma_pixels or model.psf_sigma_pixels
    images = stacks(args.split, args.n, args.offset)
    started = time.perf_counter()
    rows: dict[str, list[dict[str, float]]] = {}
    with torch.no_grad():
        for cls, stack in images.items():
            rows[cls] = [
                image_statistics(model, score, torch.from_numpy(image[None]), config, psf_sigma)
                for image in stack
            ]
    seconds = (time.perf_counter() - started) / sum(len(s) for s in images.values())
    print(
        f"{args.checkpoint}, {args.split}, {args.n} per class from {args.offset}, default "
        f"score {score}, PSF sigma {psf_sigma:g} px, {config}, one thread, {seconds:.2f} s an "
        "image"
    )
    others = [c for c in rows if c != NORMAL]
    print("| statistic | AUC sub | " + " | ".join(f"AUC {c}" for c in others) + " |")
    print("|---|---|" + "---|" * len(others))
    for name in STATISTICS:
        values = {c: np.array([r[name] for r in rs]) for c, rs in rows.items()}
        sub = np.concatenate([values[c] for c in others])
        per_class = " | ".join(f"{roc_auc(values[NORMAL], values[c]):.3f}" for c in others)
        print(f"| {name} | {roc_auc(values[NORMAL], sub):.3f} | {per_class} |")
    normal = rows[NORMAL]
    for key in ("tension", "scan", "excess", "dof", "blobs"):
        v = np.array([r[key] for r in normal])
        print(
            f"no_sub {key}: median {np.median(v):.2f}, 5-95% {np.percentile(v, 5):.2f}"
            f" - {np.percentile(v, 95):.2f}"
        )
    if args.per_image:
        with args.per_image.open("w") as out:
            keys = list(normal[0])
            out.write("class,index," + ",".join(keys) + "\n")
            for cls, rs in rows.items():
                for i, r in enumerate(rs):
                    out.write(
                        f"{cls},{i + args.offset}," + ",".join(f"{r[k]:.6g}" for k in keys) + "\n"
                    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

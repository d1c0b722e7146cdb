"""Gravitational imaging's tests (`deeplense.lensing.perturbation`) against LensFit 2's
image score, on the same fits: AUC sub vs no_sub and per class, one image at a time on one
thread.

Each image is fitted as `deeplense score` fits it (the checkpoint's coarse and full steps),
scored by the checkpoint's default score where the image and its reconstruction draw it, by
chi2_psf_light where the fit draws it (imaging_gain, these tests' sum), then tested at the
fitted lens: the tension (the lens mass's pull against its prior), the one-blob scan, their sum,
and the joint blob test. Also the whole image's chi-square, the omnibus test. Choose
settings on a validation split, never on the split one reports.

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

from bench.refine_schedule import schedule, stacks  # noqa: E402
from deeplense.lensing.flexible import MASS, NAMES  # noqa: E402
from deeplense.lensing.perturbation import PerturbationConfig, perturbation_test  # noqa: E402
from deeplense.metrics import roc_auc  # noqa: E402
from deeplense.noise import estimate_noise  # noqa: E402
from deeplense.numerics import set_process_numerics  # noqa: E402
from deeplense.scores import compute_scores, drawn_from_image  # noqa: E402
from deeplense.vocabulary import NORMAL  # noqa: E402
from models.checkpoint import load_checkpoint  # noqa: E402
from models.lensfit2 import LensFit2  # noqa: E402

TENSION_OF = {"mass": MASS, "all": NAMES}
STATISTICS = (
    "image_score",
    "chi2_total",
    "tension",
    "scan",
    "imaging_gain",
    "improvement",
    "excess",
)


def fitted(model: LensFit2, x: torch.Tensor, sigma: torch.Tensor, psf_sigma: float) -> torch.Tensor:
    """The smooth lens (1, 13) float64 `LensFit2.refine` fits to one image x (1, 1, n, n)
    through a Gaussian PSF of `psf_sigma` pixels."""
    start = model.encoder_start(x)
    scale = model.config.pixel_scale
    return model.refined_lens(x.double(), sigma.double(), start, psf_sigma, scale)[0]


def image_statistics(
    model: LensFit2, score: str, x: torch.Tensor, config: PerturbationConfig, psf_sigma: float
) -> dict[str, float]:
    """Every statistic of one image x (1, 1, n, n) float32 of PSF sigma `psf_sigma` pixels,
    and the seconds its fit (as served) and its tests took."""
    started = time.perf_counter()
    sigma = estimate_noise(x, psf_sigma)
    theta = fitted(model, x, sigma, psf_sigma)
    lens = model.lens_on(x.shape[-1])
    psf = model.psf_kernel(psf_sigma).double()
    x64, sigma64 = x.double(), sigma.double()
    linear = lens.fit_linear(theta, x64, sigma64, psf)
    model64 = linear.image().view_as(x64)  # (1, 1, n, n) float64
    x_hat = model64.clamp(0.0, 1.0).float()
    image_score = compute_scores(x, x_hat, [score], psf_sigma, sigma=sigma).values[score]
    whitened = (x64 - model64) * lens.weight(sigma64)
    fitted_at = time.perf_counter()
    test = perturbation_test(lens, theta, x64, sigma64, psf, config, linear)
    tested_at = time.perf_counter()
    return {
        "image_score": float(image_score[0]),
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
        "fit_s": fitted_at - started,
        "tests_s": tested_at - fitted_at,
    }


def paired_difference(
    rows: dict[str, list[dict[str, float]]], better: str, base: str, draws: int = 1000
) -> tuple[float, float, float]:
    """AUC(better) - AUC(base), sub vs no_sub, on the same images, and its 95% interval by a
    paired bootstrap (images resampled within each class, both statistics on each resample;
    seed 0)."""

    def auc(name: str, picks: dict[str, np.ndarray]) -> float:
        values = {c: np.array([r[name] for r in rs])[picks[c]] for c, rs in rows.items()}
        sub = np.concatenate([v for c, v in values.items() if c != NORMAL])
        return roc_auc(values[NORMAL], sub)

    every = {c: np.arange(len(rs)) for c, rs in rows.items()}
    rng = np.random.default_rng(0)
    spread = []
    for _ in range(draws):
        picks = {c: rng.integers(0, len(rs), len(rs)) for c, rs in rows.items()}
        spread.append(auc(better, picks) - auc(base, picks))
    lo, hi = np.percentile(spread, [2.5, 97.5])
    return auc(better, every) - auc(base, every), float(lo), float(hi)


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
        "--no-joint", action="store_true", help="skip the joint blob test (improvement, excess)"
    )
    parser.add_argument(
        "--tension-of",
        choices=sorted(TENSION_OF),
        default="mass",
        help="the parameters whose pull is the tension: the lens mass's 8 beyond the source's "
        "and light's (the service's), or all 13 (the tension until 8 December 2026)",
    )
    parser.add_argument(
        "--psf-sigma-pixels",
        type=float,
        help="the images' Gaussian PSF sigma in pixels, told as an upload tells it (default: "
        "the checkpoint's)",
    )
    parser.add_argument(
        "--schedule",
        type=schedule,
        help="C+F: coarse and full refinement steps (default: the card's)",
    )
    parser.add_argument("--per-image", type=Path, help="write each image's statistics (CSV)")
    args = parser.parse_args(argv)
    positive = {
        "--n": args.n,
        "--spacing": args.spacing,
        "--width": args.width,
        "--psf-sigma-pixels": 1.0 if args.psf_sigma_pixels is None else args.psf_sigma_pixels,
    }
    for flag, value in positive.items():
        if not value > 0:
            raise SystemExit(f"error: {flag} must be positive, got {value}")
    if args.per_image is not None and args.per_image.exists():
        raise SystemExit(f"error: {args.per_image} exists; name another file")
    torch.set_num_threads(1)
    set_process_numerics()
    loaded = load_checkpoint(args.checkpoint)
    model, score = loaded.model, drawn_from_image(loaded.config.default_score)
    if not isinstance(model, LensFit2):
        raise SystemExit(f"error: {args.checkpoint} is not a lensfit2 checkpoint")
    model.eval()
    if args.schedule is not None:
        model.config.coarse_steps, model.config.refine_steps = args.schedule
    config = PerturbationConfig(
        spacing=args.spacing,
        width=args.width,
        disc_radius=args.disc_radius,
        lit_sigma=args.lit_sigma,
        max_blobs=args.max_blobs,
        ridge=args.ridge,
        joint=not args.no_joint,
        tension_of=TENSION_OF[args.tension_of],
    )
    psf_sigma = model.psf_sigma_pixels if args.psf_sigma_pixels is None else args.psf_sigma_pixels
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
    timed = [r for rs in rows.values() for r in rs][1:]  # the first one warms up
    fit_s = float(np.mean([r["fit_s"] for r in timed])) if timed else 0.0
    tests_s = float(np.mean([r["tests_s"] for r in timed])) if timed else 0.0
    print(
        f"{args.checkpoint}, {args.split}, {args.n} per class from {args.offset}, image "
        f"score {score} (the card's default {loaded.config.default_score}), "
        f"{model.config.coarse_steps}+{model.config.refine_steps} steps, "
        f"PSF sigma {psf_sigma:g} px, {config}, one thread, {seconds:.2f} s an image (the fit "
        f"as served and the linear solve again {fit_s:.3f} s, the tests {tests_s:.3f} s)"
    )
    others = [c for c in rows if c != NORMAL]
    print("| statistic | AUC sub | " + " | ".join(f"AUC {c}" for c in others) + " |")
    print("|---|---|" + "---|" * len(others))
    for name in STATISTICS:
        values = {c: np.array([r[name] for r in rs]) for c, rs in rows.items()}
        sub = np.concatenate([values[c] for c in others])
        per_class = " | ".join(f"{roc_auc(values[NORMAL], values[c]):.3f}" for c in others)
        print(f"| {name} | {roc_auc(values[NORMAL], sub):.3f} | {per_class} |")
    diff, lo, hi = paired_difference(rows, "imaging_gain", "image_score")
    print(f"imaging_gain - image_score: {diff:+.3f} (95% paired bootstrap {lo:+.3f} to {hi:+.3f})")
    normal = rows[NORMAL]
    for key in ("tension", "scan", "excess", "dof", "blobs"):
        v = np.array([r[key] for r in normal])
        print(
            f"no_sub {key}: median {np.median(v):.2f}, 5-95% {np.percentile(v, 5):.2f}"
            f" - {np.percentile(v, 95):.2f}"
        )
    if args.per_image:
        keys = list(normal[0])
        lines = ["class,index," + ",".join(keys)] + [
            f"{cls},{i + args.offset}," + ",".join(f"{r[k]:.6g}" for k in keys)
            for cls, rs in rows.items()
            for i, r in enumerate(rs)
        ]
        partial = args.per_image.with_name(args.per_image.name + ".partial")
        partial.write_text("\n".join(lines) + "\n")
        partial.replace(args.per_image)  # whole or not at all
    return 0


if __name__ == "__main__":
    sys.exit(main())

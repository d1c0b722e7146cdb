"""The pixelated-source fit image by image (issue 21): the tuning tool for its settings.

For the first N images of each class of DATA_DIR's SPLIT (val by default: tune there, report
the bound on test), the light and a pixelated source are solved at the evidence-optimal
regularisation (`training.pixel_bound`), at each image's true lens (--mass truth) or at the
order-8 shapelet refit's parameters (--mass refit, started at the truth). Each image's line
gives the chosen log lambda, chi2 per pixel, chi2 per pixel on the arcs (0.9-1.5" from the
centre), and the candidate scores; then the AUC (sphere, vort vs no_sub) of each score.

    .venv/bin/python bench/pixel_residuals.py data/model_r --n 6 --source-pixels 40 \
        --half-width 1.5 --core 0.15 --regularisation curvature --mass truth

About 10 s per image on one core at 40 x 40 source pixels (the refit adds 15-40 s).
"""

import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))  # bench/ is scripts, not a package

from flexible_residuals import (  # noqa: E402
    ANNULI,
    annulus_chi2,
    missing_input,
    per_image_parser,
)

from deeplense.lensing.flexible import FlexibleConfig  # noqa: E402
from deeplense.lensing.pixel_source import REGULARISATIONS, PixelSourceConfig  # noqa: E402
from deeplense.metrics import roc_auc  # noqa: E402
from deeplense.noise import estimate_noise  # noqa: E402
from deeplense.scores import compute_scores  # noqa: E402
from deeplense.vocabulary import CLASSES  # noqa: E402
from training.bounds import sim_config  # noqa: E402
from training.flexible_bound import flexible_refit, read_rows  # noqa: E402
from training.pixel_bound import PIXEL_SCORES, pixel_refit  # noqa: E402

SCORES = ("chi2_psf_light", "chi2_psf", *PIXEL_SCORES)
ARCS = ANNULI.index(0.9)  # the annulus 0.9-1.5"


def main() -> int:
    parser = per_image_parser(__doc__)
    parser.add_argument("--source-pixels", type=int, default=PixelSourceConfig.source_pixels)
    parser.add_argument("--half-width", type=float, default=PixelSourceConfig.half_width)
    parser.add_argument("--regularisation", choices=REGULARISATIONS, default="curvature")
    parser.add_argument("--core", type=float, default=None,
                        help="the grid's core scale (arcsec); default regular")  # fmt: skip
    parser.add_argument("--mass", choices=("truth", "refit"), default="truth")
    args = parser.parse_args()
    if missing_input(args):
        return 2
    config = sim_config(args.data)
    psf = config.psf_sigma / config.pixel_scale  # pixels
    flexible = FlexibleConfig(config.image_size, config.pixel_scale, source_scales=(0.5, 1, 3))
    pixel = PixelSourceConfig(
        flexible, args.source_pixels, args.half_width, args.regularisation, args.core
    )
    rows = read_rows(args.data, args.split, args.n)
    start = time.perf_counter()
    print(
        "| class | image | source | log lambda | chi2/pixel | arcs | " + " | ".join(SCORES) + " |"
    )
    print("|" + "---|" * (6 + len(SCORES)))
    values: dict[str, dict[str, np.ndarray]] = {s: {} for s in SCORES}
    for cls in CLASSES:
        stack = np.load(args.data / args.split / f"{cls}.npy", mmap_mode="r")
        images = np.array(stack[: args.n], dtype=np.float32)  # (N, 1, n, n)
        ordered = [rows[(cls, i)] for i in range(len(images))]
        theta = None
        if args.mass == "refit":
            theta = flexible_refit(images, ordered, flexible, config.psf_sigma).theta
        fit = pixel_refit(images, ordered, pixel, config.psf_sigma, theta=theta)
        x, refit = torch.from_numpy(images), torch.from_numpy(fit.refit)
        scored = compute_scores(x, refit, SCORES[:2], psf).values
        sigma = estimate_noise(x, psf).numpy()
        rings = annulus_chi2(((images - fit.refit) / sigma)[:, 0], config.pixel_scale)
        for name in SCORES:
            values[name][cls] = scored[name].numpy() if name in scored else fit.scores[name]
        for i, row in enumerate(ordered):
            cells = " | ".join(f"{values[s][cls][i]:.2f}" for s in SCORES)
            print(
                f"| {cls} | {i} | {row.get('source_kind', '')} | {fit.log_lambda[i]:.2f} | "
                f"{fit.chi2[i] / images[i].size:.3f} | {rings[i, ARCS]:.2f} | {cells} |",
                flush=True,
            )
    print(f"\nAUC vs no_sub ({args.n} per class), sphere / vort\n")
    for name in SCORES:
        v = values[name]
        print(
            f"- {name}: {roc_auc(v['no_sub'], v['sphere']):.3f} / "
            f"{roc_auc(v['no_sub'], v['vort']):.3f}"
        )
    print(f"\n({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Where the flexible refit leaves its residual, image by image: the tuning tool behind the
flexible bound's choices (docs/results.md, "Model R: the source, not the mass").

For the first N images of each class of DATA_DIR's SPLIT (val by default: tune there, report
the bound on test), the flexible smooth lens (`training.flexible_bound`) is refitted from
each image's true lens and PSF, and each image's line gives the default score
(chi2_psf_light), the chi-square per pixel, and the chi-square per pixel in annuli about the
image centre (arcsec): a misfit of the lens light sits in the first, one of the source on the
arcs near the Einstein radius, and the subhalos' signal there too.

    .venv/bin/python bench/flexible_residuals.py data/model_r --n 6 --shapelet-order 12 \
        --mass-prior-width 0.01

About 15-40 s per image on one core (more for higher orders).
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from deeplense.lensing.flexible import FlexibleConfig  # noqa: E402
from deeplense.noise import estimate_noise  # noqa: E402
from deeplense.scores import compute_scores  # noqa: E402
from deeplense.vocabulary import CLASSES  # noqa: E402
from training.bounds import sim_config  # noqa: E402
from training.flexible_bound import flexible_refit, mass_prior, read_rows  # noqa: E402

ANNULI = (0.0, 0.2, 0.5, 0.9, 1.5, 2.2, 3.0, np.inf)  # arcsec from the image centre


def annulus_chi2(whitened: np.ndarray, pixel_scale: float) -> np.ndarray:
    """Mean squared whitened residual per annulus (`ANNULI`): (N, A) for (N, n, n) maps."""
    n = whitened.shape[-1]
    c = (np.arange(n) - (n - 1) / 2.0) * pixel_scale
    radius = np.hypot(*np.meshgrid(c, c))  # (n, n) arcsec
    out = []
    for inner, outer in zip(ANNULI[:-1], ANNULI[1:], strict=True):
        ring = (radius >= inner) & (radius < outer)
        out.append((whitened[:, ring] ** 2).mean(axis=1) if ring.any() else np.nan)
    return np.stack(out, axis=1)


def residual_table(
    directory: Path,
    split: str,
    n: int,
    flexible: FlexibleConfig,
    width: float | None,
    population: Path,
) -> list[str]:
    """One line per image: class, index, chi2_psf_light, chi2 per pixel, annuli."""
    config = sim_config(directory)
    psf = config.psf_sigma / config.pixel_scale  # pixels
    prior = None if width is None else mass_prior(population, "truth", width)[0]
    rows = read_rows(directory, split, n)
    header = " | ".join(f'{a:g}-{b:g}"' for a, b in zip(ANNULI[:-1], ANNULI[1:], strict=True))
    lines = [f"| class | image | chi2_psf_light | chi2/pixel | {header} |"]
    lines.append("|" + "---|" * (4 + len(ANNULI) - 1))
    for cls in CLASSES:
        stack = np.load(directory / split / f"{cls}.npy", mmap_mode="r", allow_pickle=False)
        images = np.array(stack[:n], dtype=np.float32)  # (N, 1, n, n)
        ordered = [rows[(cls, i)] for i in range(len(images))]
        fit = flexible_refit(images, ordered, flexible, config.psf_sigma, prior=prior)
        x, refit = torch.from_numpy(images), torch.from_numpy(fit.refit)
        score = compute_scores(x, refit, ["chi2_psf_light"], psf).values["chi2_psf_light"]
        sigma = estimate_noise(x, psf).numpy()
        whitened = ((images - fit.refit) / sigma)[:, 0]
        rings = annulus_chi2(whitened, config.pixel_scale)
        for i in range(len(images)):
            cells = " | ".join(f"{v:.2f}" for v in rings[i])
            chi2 = float((whitened[i] ** 2).mean())
            lines.append(f"| {cls} | {i} | {float(score[i]):.2f} | {chi2:.3f} | {cells} |")
    return lines


def per_image_parser(doc: str | None) -> argparse.ArgumentParser:
    """The arguments of every per-image bench (this one, `pixel_residuals.py`): the dataset,
    its split and the images per class."""
    parser = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("data", type=Path, help="a simulated dataset folder")
    parser.add_argument("--split", default="val", choices=("val", "test"))
    parser.add_argument("--n", type=int, default=6, help="images per class")
    return parser


def missing_input(args: argparse.Namespace) -> bool:
    """Print one line and say so when the dataset lacks the split or its parameters.csv."""
    for name in (args.split, "parameters.csv"):
        if not (args.data / name).exists():
            print(f"error: {args.data / name} does not exist", file=sys.stderr)
            return True
    return False


def main() -> int:
    parser = per_image_parser(__doc__)
    parser.add_argument("--shapelet-order", type=int, default=FlexibleConfig.shapelet_order)
    parser.add_argument("--source-scales", type=float, nargs="+", default=[0.5, 1.0, 3.0])
    parser.add_argument("--mass-prior-width", type=float, default=None,
                        help="a prior at the true mass, this many population sigmas")  # fmt: skip
    parser.add_argument("--mass-prior-population", type=Path, default=REPO / "data" / "model_r")
    args = parser.parse_args()
    if missing_input(args):
        return 2
    config = sim_config(args.data)
    flexible = FlexibleConfig(
        image_size=config.image_size, pixel_scale=config.pixel_scale,
        shapelet_order=args.shapelet_order, source_scales=tuple(args.source_scales),
    )  # fmt: skip
    start = time.perf_counter()
    lines = residual_table(
        args.data, args.split, args.n, flexible, args.mass_prior_width,
        args.mass_prior_population,
    )  # fmt: skip
    print("\n".join(lines))
    print(f"\n({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

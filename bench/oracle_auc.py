"""Detection bounds: the best ROC-AUC any reconstruction can reach, per score, and how it
grows with the subhalo mass (`training.bounds` has the method).

1. The bounds table, on DATA_DIR's test split (first N images per class): for every
   registered score, the AUC (sub, sphere, vort vs no_sub) when each image is scored against
   (a) the exact noiseless smooth lens and (b) a least-squares refit of the smooth model
   started at the truth, holding what the dataset keeps fixed; with --flexible also (c) the
   flexible smooth lens (`training.flexible_bound`: elliptical power law with shear and a
   free centre, multi-Gaussian lens light, a shapelet source) refitted from the truth with
   each image's true PSF: how much of the subhalos a gravitational-imaging modeller's
   smooth lens absorbs. Model R and the mismatch suite (simulator 2.3) get (a) and (c):
   (b) refits the Model A/B family. --mass-prior-width S adds a Gaussian prior on (c)'s
   8 mass parameters: S x their spread in --mass-prior-population's train split, centred
   at each image's truth or at the population mean (--mass-prior-centre). With --source
   pixel also (d) "pixel": the light and a pixelated source (--source-pixels per side,
   --source-half-width, --source-core, --regularisation) re-solved at the evidence-optimal
   regularisation (`training.pixel_bound`), at the true lens (--pixel-mass truth) or at (c)'s refit
   (--pixel-mass refit, which also reports (c)), with two more scores of that fit:
   pixel_cost (chi2 + lambda s^T R s) and neg_log_evidence.
2. With --curve: the detection curve, AUC (sub vs no_sub) against the subhalo mass fraction
   (0.25, 0.5, 1, 2, 4% by default) for both bounds and for every checkpoint folder under
   each --checkpoints root (each model by its default score, and by chi2_psf). Test sets for
   the other fractions are simulated into --work (same seed and dataset as DATA_DIR, so the
   no_sub images are the same) and reused on the next run. Printed as a table and drawn as
   --plot (PNG).

    .venv/bin/python bench/oracle_auc.py DATA_DIR [--n 300] [--no-refit]
    .venv/bin/python bench/oracle_auc.py DATA_DIR --n 100 --curve --checkpoints checkpoints/model_a
    .venv/bin/python bench/oracle_auc.py DATA_DIR --n 30 --no-refit --flexible
    .venv/bin/python bench/oracle_auc.py DATA_DIR --n 20 --no-refit --flexible \
        --mass-prior-width 0.1 --mass-prior-centre truth --mass-prior-population data/model_r
    .venv/bin/python bench/oracle_auc.py DATA_DIR --n 20 --no-refit --flexible --source pixel \
        --source-pixels 40 --pixel-mass truth

The refit costs about a second per image on one core, the flexible refit about five; the
exact bound a few milliseconds.
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from deeplense.inference import score_array  # noqa: E402
from deeplense.lensing.flexible import INDEX, MASS, FlexibleConfig  # noqa: E402
from deeplense.lensing.pixel_source import REGULARISATIONS, PixelSourceConfig  # noqa: E402
from deeplense.metrics import auc_standard_error, roc_auc  # noqa: E402
from deeplense.scores import compute_scores, list_scores, scores_for  # noqa: E402
from deeplense.vocabulary import CLASSES, read_manifest  # noqa: E402
from models.checkpoint import find_checkpoints, load_checkpoint  # noqa: E402
from training.bounds import (  # noqa: E402
    bound_reconstructions,
    fraction_test_set,
    signal_snr2,
    sim_config,
)
from training.evaluate import COMPARISONS  # noqa: E402
from training.flexible_bound import MassPrior, flexible_refit, mass_prior, read_rows  # noqa: E402
from training.pixel_bound import PIXEL_SCORES, pixel_refit  # noqa: E402

FRACTIONS = (0.0025, 0.005, 0.01, 0.02, 0.04)


def aucs(values: dict[str, np.ndarray]) -> dict[str, float]:
    """AUC of each comparison from one score's per-class values."""
    return {
        name: roc_auc(values["no_sub"], np.concatenate([values[c] for c in classes]))
        for name, classes in COMPARISONS.items()
    }


def bound_scores(
    directory: Path,
    n: int,
    refit: bool,
    psf: float,
    classes: tuple[str, ...] = CLASSES,
    flexible: FlexibleConfig | None = None,
    prior: MassPrior | None = None,
    pixel: PixelSourceConfig | None = None,
    pixel_mass: str = "truth",
) -> dict[str, dict[str, dict[str, np.ndarray]]]:
    """bound ("exact", "refit", "flexible", "pixel") -> score -> class -> (N,) values; `prior`
    on the flexible refit's mass; `pixel`: the pixelated source at the truth or at the
    flexible refit (`pixel_mass`), which then replaces "flexible" where it is the truth."""
    out: dict[str, dict[str, dict[str, np.ndarray]]] = {
        "exact": {}, "refit": {}, "flexible": {}, "pixel": {}
    }  # fmt: skip
    realistic = "departures" in read_manifest(directory)  # Model R or a departure from Model A
    config = sim_config(directory)
    rows = read_rows(directory, "test", n) if flexible is not None else {}
    for cls in classes:
        recons: dict[str, np.ndarray | None] = {}
        bounds = bound_reconstructions(directory, cls, n, refit and not realistic)
        images, recons["exact"], recons["refit"] = bounds.images, bounds.exact, bounds.refit
        theta = None  # the pixelated source's lenses: the truth unless refitted
        if flexible is not None:
            ordered = [rows[(cls, i)] for i in range(len(images))]
            if pixel is None or pixel_mass == "refit":
                fits = flexible_refit(images, ordered, flexible, config.psf_sigma, prior=prior)
                recons["flexible"], theta = fits.refit, fits.theta
            if pixel is not None:
                pixels = pixel_refit(images, ordered, pixel, config.psf_sigma, theta=theta)
                recons["pixel"] = pixels.refit
                for score in PIXEL_SCORES:
                    out["pixel"].setdefault(score, {})[cls] = pixels.scores[score]
        x = torch.from_numpy(images)
        for bound, recon in recons.items():
            if recon is None:
                continue
            values = compute_scores(x, torch.from_numpy(recon), scores_for(None), psf).values
            for score, v in values.items():
                out[bound].setdefault(score, {})[cls] = v.numpy()
    return {b: s for b, s in out.items() if s}


def model_scores(
    root: Path, directory: Path, n: int
) -> dict[str, tuple[str, dict[str, dict[str, np.ndarray]]]]:
    """model -> (its default score, score -> class -> (N,) values), per checkpoint in `root`."""
    out: dict[str, tuple[str, dict[str, dict[str, np.ndarray]]]] = {}
    for name, path in find_checkpoints(root).items():
        loaded = load_checkpoint(path)
        per: dict[str, dict[str, np.ndarray]] = {}
        for cls in CLASSES:
            stack = np.load(directory / "test" / f"{cls}.npy", mmap_mode="r", allow_pickle=False)
            scored = score_array(
                loaded.model, stack[:n], scores=scores_for(loaded.model),
                psf_sigma_pixels=loaded.config.input.psf_sigma_pixels,
            )  # fmt: skip
            for score, v in scored.scores.items():
                per.setdefault(score, {})[cls] = v
        out[f"{root.name}/{name}"] = (loaded.config.default_score, per)
    return out


def table(
    directory: Path,
    n: int,
    refit: bool,
    flexible: FlexibleConfig | None = None,
    prior: MassPrior | None = None,
    pixel: PixelSourceConfig | None = None,
    pixel_mass: str = "truth",
) -> None:
    manifest = read_manifest(directory)
    config = sim_config(directory)
    psf = config.psf_sigma / config.pixel_scale
    start = time.perf_counter()
    bounds = bound_scores(
        directory, n, refit, psf, flexible=flexible, prior=prior, pixel=pixel,
        pixel_mass=pixel_mass,
    )  # fmt: skip
    print(
        f"dataset {manifest['dataset']}, subhalo mass fraction "
        f"{manifest.get('subhalo_mass_fraction')}, first {n} test images per class "
        f"({time.perf_counter() - start:.0f} s)\n"
    )
    print("| score | bound | AUC sub | AUC sphere | AUC vort |")
    print("| --- | --- | --- | --- | --- |")
    counts = {cls: len(v) for cls, v in bounds["exact"]["mse"].items()}  # drawn on every set
    for score in [*list_scores(), *PIXEL_SCORES]:
        for bound, scores in bounds.items():
            if score not in scores:
                continue
            a = aucs(scores[score])
            print(f"| {score} | {bound} | {a['sub']:.3f} | {a['sphere']:.3f} | {a['vort']:.3f} |")
    n_sub, n_normal = counts["sphere"] + counts["vort"], counts["no_sub"]
    print(
        f"\nStandard error (Hanley-McNeil) at {counts['no_sub']} normal images: AUC sub "
        f"{auc_standard_error(0.5, n_sub, n_normal):.3f} at 0.5, "
        f"{auc_standard_error(0.75, n_sub, n_normal):.3f} at 0.75; sphere or vort alone "
        f"{auc_standard_error(0.5, counts['sphere'], n_normal):.3f} at 0.5, "
        f"{auc_standard_error(0.75, counts['sphere'], n_normal):.3f} at 0.75"
    )
    print("\nThe subhalos' signal: squared S/N of their noiseless change, summed over pixels\n")
    print("| class | median | quartiles |")
    print("| --- | --- | --- |")
    for cls in ("sphere", "vort"):
        snr2 = signal_snr2(directory, cls, n)
        q1, q3 = np.percentile(snr2, [25, 75])
        print(f"| {cls} | {np.median(snr2):.0f} | {q1:.0f}-{q3:.0f} |")


def curve(
    directory: Path, n: int, refit: bool, roots: list[Path], work: Path, plot: Path | None
) -> None:
    config = sim_config(directory)
    psf = config.psf_sigma / config.pixel_scale
    rows: dict[str, list[float]] = {}
    # The no_sub test images do not depend on the mass fraction (same seed): fit them once.
    normal = bound_scores(directory, n, refit, psf, classes=("no_sub",))
    for fraction in FRACTIONS:
        data = fraction_test_set(directory, work, fraction, n)
        bounds = bound_scores(data, n, refit, psf, classes=("sphere", "vort"))
        for bound, scores in bounds.items():
            for score in scores:
                scores[score]["no_sub"] = normal[bound][score]["no_sub"]
            for score in ("mse", "chi2_psf", "chi2_psf_light"):
                rows.setdefault(f"bound {bound}, {score}", []).append(aucs(scores[score])["sub"])
        for root in roots:
            for model, (default, scores) in model_scores(root, data, n).items():
                for score in dict.fromkeys([default, "chi2_psf"]):
                    rows.setdefault(f"{model}, {score}", []).append(aucs(scores[score])["sub"])
        print(f"  fraction {fraction:g} done", file=sys.stderr)
    print("\nAUC sub vs no_sub against the subhalo mass fraction\n")
    print("| detector | " + " | ".join(f"{100 * f:g}%" for f in FRACTIONS) + " |")
    print("| --- |" + " --- |" * len(FRACTIONS))
    for name, values in rows.items():
        print(f"| {name} | " + " | ".join(f"{v:.3f}" for v in values) + " |")
    if plot is not None:
        from matplotlib import colormaps
        from matplotlib.figure import Figure

        fig = Figure(figsize=(9.5, 4.8), layout="constrained")
        ax = fig.subplots()
        colours = colormaps["tab20"].colors  # 20 distinct: one per line, none reused
        for i, (name, values) in enumerate(rows.items()):
            style = "--" if name.startswith("bound") else "-"
            ax.plot([100 * f for f in FRACTIONS], values, style, marker="o", label=name,
                    color=colours[i % len(colours)])  # fmt: skip
        title = f"Detection curve ({read_manifest(directory)['dataset']})"
        ax.set(xscale="log", xlabel="subhalo mass fraction (%)", ylim=(0.45, 1.01),
               ylabel="ROC-AUC sub vs no_sub", title=title)  # fmt: skip
        ax.axhline(0.5, color="grey", linewidth=0.7)
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
        plot.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(plot, dpi=110)
        print(f"\nwrote {plot}")


def main() -> int:
    # The whole docstring: its first line alone stops mid-sentence.
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("data", type=Path, help="a simulated dataset folder (simulator 2.x)")
    parser.add_argument("--n", type=int, default=300, help="test images per class")
    parser.add_argument("--no-refit", action="store_true", help="skip the (slow) refit bound")
    parser.add_argument("--curve", action="store_true", help="also the detection curve")
    parser.add_argument("--flexible", action="store_true",
                        help="also the flexible smooth lens's refit bound (slow)")  # fmt: skip
    parser.add_argument("--shapelet-order", type=int, default=FlexibleConfig.shapelet_order,
                        help="the flexible source's shapelet order")  # fmt: skip
    parser.add_argument("--source-scales", type=float, nargs="+",
                        default=list(FlexibleConfig.source_scales),
                        help="one shapelet set per scale (x the fitted beta)")  # fmt: skip
    parser.add_argument("--source", choices=("shapelet", "pixel"), default="shapelet",
                        help="pixel: also a pixelated-source bound (with --flexible)")  # fmt: skip
    parser.add_argument("--source-pixels", type=int, default=PixelSourceConfig.source_pixels,
                        help="the pixelated source's pixels per side")  # fmt: skip
    parser.add_argument("--source-half-width", type=float,
                        default=PixelSourceConfig.half_width,
                        help="its grid's half side (arcsec) about the source centre")  # fmt: skip
    parser.add_argument("--regularisation", choices=REGULARISATIONS, default="curvature")
    parser.add_argument("--source-core", type=float, default=PixelSourceConfig.core,
                        help="its grid's core scale (arcsec): regular in asinh(offset / "
                        "core); default a regular grid")  # fmt: skip
    parser.add_argument("--pixel-mass", choices=("truth", "refit"), default="truth",
                        help="its lens: the truth, or the shapelet refit's")  # fmt: skip
    parser.add_argument("--mass-prior-width", type=float, default=None,
                        help="a Gaussian prior on the flexible refit's mass: this many "
                        "population standard deviations (default: no prior)")  # fmt: skip
    parser.add_argument("--mass-prior-centre", choices=("truth", "population"),
                        default="truth", help="centre the prior at each image's true lens "
                        "or the population mean")  # fmt: skip
    parser.add_argument("--mass-prior-population", type=Path,
                        default=REPO / "data" / "model_r", help="the dataset whose train "
                        "split (val if empty) gives the spread")  # fmt: skip
    parser.add_argument(
        "--checkpoints", type=Path, action="append", default=[],
        help="checkpoint root to add to the curve (repeatable)",
    )  # fmt: skip
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "bounds",
                        help="where test sets at other mass fractions are simulated")  # fmt: skip
    parser.add_argument("--plot", type=Path, default=None, help="PNG of the detection curve")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --plot")
    args = parser.parse_args()
    if args.plot is not None and args.plot.exists() and not args.overwrite:
        print(f"error: {args.plot} exists; pass --overwrite to replace it", file=sys.stderr)
        return 2
    refit = not args.no_refit
    flexible = None
    if args.flexible:
        config = sim_config(args.data)
        flexible = FlexibleConfig(
            image_size=config.image_size, pixel_scale=config.pixel_scale,
            shapelet_order=args.shapelet_order, source_scales=tuple(args.source_scales),
        )  # fmt: skip
    prior = None
    if args.mass_prior_width is not None:
        if flexible is None:
            print("error: --mass-prior-width needs --flexible", file=sys.stderr)
            return 2
        prior, split = mass_prior(
            args.mass_prior_population, args.mass_prior_centre, args.mass_prior_width
        )
        print(
            f"mass prior: centre {prior.centre}, width {prior.width:g} x the spread of "
            f"{args.mass_prior_population}'s {split} split; std "
            + ", ".join(
                f"{name} {prior.width * prior.population_std[INDEX[name]]:.3g}" for name in MASS
            )
            + "\n"
        )
    pixel = None
    if args.source == "pixel":
        if flexible is None:
            print("error: --source pixel needs --flexible", file=sys.stderr)
            return 2
        pixel = PixelSourceConfig(
            flexible, args.source_pixels, args.source_half_width, args.regularisation,
            args.source_core,
        )  # fmt: skip
        print(
            f"pixelated source: {args.source_pixels}^2 pixels, half width "
            f'{args.source_half_width:g}", core {args.source_core}, {args.regularisation}, '
            f"lens: {args.pixel_mass}\n"
        )
    table(args.data, args.n, refit, flexible, prior, pixel, args.pixel_mass)
    if args.curve:
        curve(args.data, args.n, refit, args.checkpoints, args.work, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())

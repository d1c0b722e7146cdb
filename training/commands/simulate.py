"""`python -m training simulate`: write a simulated Model A / Model B dataset folder."""

import argparse
import math
import os
from pathlib import Path

from deeplense.instrument import STUDY_PSF_SIGMA_ARCSEC
from training.commands.calibrate import fraction

# training.simulate's DATASETS, SUBSTRUCTURES and DEPARTURES, written out so that --help
# need not import torch (tests/training/test_cli.py and test_simulate_model_r.py check they
# agree).
DATASETS = ("model_a", "model_b", "model_r")
SUBSTRUCTURES = ("stated", "study")
DEPARTURES = (
    "elliptical_mass",
    "lens_light",
    "wide_psf",
    "knotty_source",
    "galaxy_source",
    "all",
)


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _grid_size(text: str) -> int:
    value = _positive(text)
    if value < 2:
        raise argparse.ArgumentTypeError(
            f"a grid needs at least 2 values per parameter, got {value}"
        )
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "simulate",
        help="simulate a lensing dataset (train no_sub, val and test no_sub/sphere/vort)",
        description="Simulate DIR/train/no_sub.npy, DIR/val/{no_sub,sphere,vort}.npy, "
        "DIR/test/{no_sub,sphere,vort}.npy (N, 1, H, W) float32 in [0, 1], with "
        "DIR/manifest.json (including each image's arc S/N) and per-image parameters.",
    )
    p.add_argument(
        "--dataset",
        required=True,
        choices=sorted(DATASETS),
        help="parameter set: model_a, model_b, or model_r (realistic: elliptical power-law "
        "mass, varied lens light, per-image Gaussian/Moffat PSF, clumpy/disc/irregular "
        "sources; docs/model_r.md)",
    )
    p.add_argument(
        "--departure",
        choices=DEPARTURES,
        default=None,
        help="the mismatch suite: one of Model R's departures on top of --dataset model_a "
        "(or model_b), or all of them; the same seed gives the base set's lenses, image by "
        "image (docs/model_r.md)",
    )
    p.add_argument("--out", required=True, type=Path, help="output folder DIR (must not exist)")
    p.add_argument("--n-train", type=_count, default=25000, help="train no_sub images (25000)")
    p.add_argument("--n-val", type=_count, default=2500, help="validation no_sub images (2500)")
    p.add_argument(
        "--n-val-sub",
        type=_count,
        default=None,
        help="validation sphere and vort images each (default: a quarter of --n-val, 625 "
        "for 2500): a labelled split for choosing thresholds and models, never the test split",
    )
    p.add_argument(
        "--substructure",
        choices=SUBSTRUCTURES,
        default="stated",
        help="subhalo masses: stated (docs/reference.md: 25 equal masses, 1%% of the lens; "
        "the default) or study (the study's code: sphere masses from dN/dm ~ m^-0.9 on "
        '1e6-1e10 Msun, 3.8%% on average; vort U[3%%, 5.5%%] on a line U[0.5", 2"] long)',
    )
    p.add_argument(
        "--subhalo-mass-fraction",
        type=fraction,
        default=None,
        help="stated substructure only: all subhalos together, as a fraction of the lens "
        "mass (0.01); refused with --substructure study, which draws its own masses",
    )
    p.add_argument(
        "--parameter-grid",
        type=_grid_size,
        default=None,
        metavar="K",
        help="the study's sampler (docs/study_sampler.md): every uniform lens and source "
        "parameter takes one of K values drawn per class (the study: 5); model_a and model_b "
        "only. Default: every image drawn independently",
    )
    p.add_argument(
        "--shared-grid",
        action="store_true",
        help="with --parameter-grid: every class on the no_sub class's grid (the study drew "
        "each class's own), so that only the substructure differs between classes",
    )
    p.add_argument("--n-test", type=_count, default=1250, help="test images per class (1250)")
    p.add_argument("--seed", type=_count, default=0, help="random seed (0)")
    p.add_argument(
        "--workers", type=_positive, default=os.cpu_count() or 1, help="processes (all cores)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing DIR")
    p.add_argument("--image-size", type=_positive, default=150, help="pixels per side (150)")
    p.add_argument(
        "--pixel-scale",
        type=positive_float,
        default=None,
        help="arcsec per pixel (default: the study's 7.5\" field over --image-size, 0.05 at 150)",
    )
    p.add_argument(
        "--psf-sigma",
        type=positive_float,
        default=STUDY_PSF_SIGMA_ARCSEC,
        help="Gaussian PSF sigma in arcsec (%(default)s; FWHM = 2.355 sigma)",
    )
    p.add_argument(
        "--supersampling", type=_positive, default=2, help="sub-pixels per pixel per axis (2)"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from training.lensing.render import SimConfig
    from training.simulate import simulate_dataset

    config = SimConfig(
        image_size=args.image_size,
        supersampling=args.supersampling,
        psf_sigma=args.psf_sigma,
        pixel_scale_arcsec=args.pixel_scale,
    )
    simulate_dataset(
        args.dataset,
        args.out,
        n_train=args.n_train,
        n_val=args.n_val,
        n_test=args.n_test,
        seed=args.seed,
        workers=args.workers,
        overwrite=args.overwrite,
        config=config,
        n_val_sub=args.n_val // 4 if args.n_val_sub is None else args.n_val_sub,
        subhalo_mass_fraction=args.subhalo_mass_fraction,
        substructure=args.substructure,
        departure=args.departure,
        parameter_grid=args.parameter_grid,
        shared_grid=args.shared_grid,
    )
    return 0

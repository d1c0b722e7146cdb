"""Each simulated image's own PSF, read back from its dataset: where one image's PSF is.

Model R (and any dataset whose manifest records `"psf": "per-image"`) draws a PSF per
image: a Gaussian or a Moffat of its own FWHM, written to parameters.csv (columns psf,
psf_fwhm in arcsec, psf_beta). A model scored on such an image with the dataset's nominal
PSF is told the wrong instrument, as an upload without its PSF would be. So calibration and
evaluation read each image's kernel here and hand it to the one preparation
(`deeplense.observation`), exactly as a FITS upload with a PSF extension is prepared, and the
benches that refit from the truth (`training.flexible_bound`, `training.pixel_bound`) draw
with the same kernel.

A dataset with one PSF for all images (its manifest's instrument) whose PSF differs from
the checkpoint's (the mismatch suite's wide_psf and all) is told that PSF the
same way, for every image: a model is never scored with its own card's PSF on images drawn
with another one that the dataset records.
"""

import math
from pathlib import Path

import numpy as np
import torch

from deeplense.errors import DatasetError
from deeplense.instrument import FWHM_PER_SIGMA, Instrument, gaussian_kernel
from deeplense.lensing.psf import moffat_kernel
from deeplense.vocabulary import MANIFEST_FILE, dataset_instrument, read_manifest
from training.simulate import PARAMETERS_FILE, PER_IMAGE_PSF, read_rows

GAUSSIAN_TRUNCATE = 5.0  # sigmas: the simulator's Gaussian PSF is cut there
SAME_INSTRUMENT_RTOL = 1e-6  # a manifest's float against a card's: the same instrument


def psf_kernel(row: dict[str, str], pixel_scale: float, nominal_sigma: float) -> torch.Tensor:
    """The image's true PSF on its pixel grid (k, k) float64: the simulator's Gaussian (cut at
    5 sigma) or Moffat; `nominal_sigma` (arcsec) where parameters.csv records none.
    `pixel_scale` in arcsec per pixel."""
    text = row.get("psf_fwhm", "")
    fwhm = (float(text) if text not in ("", None) else 0.0) or nominal_sigma * FWHM_PER_SIGMA
    if row.get("psf", "gaussian") == "moffat":
        return moffat_kernel(fwhm / pixel_scale, float(row["psf_beta"]))
    sigma = fwhm / FWHM_PER_SIGMA / pixel_scale  # pixels
    return torch.from_numpy(gaussian_kernel(sigma, truncate=GAUSSIAN_TRUNCATE))


def has_per_image_psf(data_dir: Path) -> bool:
    """Whether DIR's manifest says each image has its own PSF (False without a simulator
    manifest)."""
    if not (Path(data_dir) / MANIFEST_FILE).is_file():
        return False
    try:
        instrument = read_manifest(Path(data_dir)).get("instrument")
    except DatasetError:  # not a simulator manifest: nothing is recorded per image
        return False
    return isinstance(instrument, dict) and instrument.get("psf") == PER_IMAGE_PSF


def recorded_psf_differs(data_dir: Path, card: Instrument) -> bool:
    """Whether DIR records one Gaussian PSF for all images whose width (arcsec) is not
    `card`'s (a checkpoint's instrument); False for per-image PSFs (`has_per_image_psf`) and
    without a record. A dataset of another pixel scale but the card's PSF is resized to the
    model's grid, as training reads it."""
    if has_per_image_psf(data_dir):
        return False
    recorded = dataset_instrument(data_dir)
    if recorded is None:
        return False
    return not math.isclose(
        recorded.psf_sigma_arcsec, card.psf_sigma_arcsec, rel_tol=SAME_INSTRUMENT_RTOL
    )


def tells_own_psf(data_dir: Path, card: Instrument) -> bool:
    """Whether a model trained through `card` must be told DIR's own PSF rather than its
    card's: each image's own, or the dataset's one PSF where it differs."""
    return has_per_image_psf(data_dir) or recorded_psf_differs(data_dir, card)


def split_psfs(
    data_dir: Path, split: str, counts: dict[str, int], card: Instrument | None = None
) -> dict[str, list[np.ndarray]] | None:
    """Class -> the first counts[class] images' PSF kernels (k, k) float64 in index order, on
    the data's own pixels: each image's own (parameters.csv), or the dataset's one PSF for
    every image where it differs from `card`'s (`recorded_psf_differs`); None when the
    dataset has one PSF for all that is the card's, or no card is given. A missing
    parameters.csv or row is a DatasetError naming it."""
    data_dir = Path(data_dir)
    if not has_per_image_psf(data_dir):
        if card is None or not recorded_psf_differs(data_dir, card):
            return None
        recorded = dataset_instrument(data_dir)
        assert recorded is not None  # recorded_psf_differs read it
        kernel = psf_kernel({}, recorded.pixel_scale, recorded.psf_sigma_arcsec).numpy()
        return {cls: [kernel] * n for cls, n in counts.items()}
    record = read_manifest(data_dir)["instrument"]
    pixel_scale = float(record["pixel_scale_arcsec"])
    nominal_sigma = float(record["psf_sigma_arcsec"])
    path = data_dir / PARAMETERS_FILE
    try:
        rows = read_rows(data_dir, split, max(counts.values(), default=0))
    except (OSError, KeyError, ValueError) as exc:
        raise DatasetError(f"{path}: cannot read each image's PSF ({exc})") from exc
    kernels: dict[str, list[np.ndarray]] = {}
    for cls, n in counts.items():
        missing = [i for i in range(n) if (cls, i) not in rows]
        if missing:
            raise DatasetError(
                f"{path}: no row for {split}/{cls} image {missing[0]}; the manifest says each "
                "image has its own PSF"
            )
        kernels[cls] = [
            psf_kernel(rows[(cls, i)], pixel_scale, nominal_sigma).numpy() for i in range(n)
        ]
    return kernels

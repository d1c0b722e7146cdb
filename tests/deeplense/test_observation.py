"""The one preparation of an image for a model (deeplense.observation)."""

import math

import numpy as np
import pytest

from deeplense.fits_layout import ImageExtras
from deeplense.instrument import STUDY_INSTRUMENT, gaussian_kernel
from deeplense.observation import prepare_observation


def _lens(n: int) -> np.ndarray:
    yy, xx = np.mgrid[:n, :n] - (n - 1) / 2
    ring = np.exp(-((np.hypot(xx, yy) - n / 4) ** 2) / 8.0)
    return ring + 0.01 * np.random.default_rng(0).standard_normal((n, n))


def test_an_image_on_the_models_grid_keeps_its_psf_width() -> None:
    obs = prepare_observation(_lens(150), 150, STUDY_INSTRUMENT, "a")
    assert obs.psf_sigma_pixels == pytest.approx(2.0) and not obs.resized


def test_an_enlarged_image_adds_the_resamplings_blur_to_its_psf() -> None:
    # 0.1" pixels (a Euclid-like cutout) onto the 0.05" model grid: bilinear interpolation
    # (s^2 / 6) and the larger pixel box ((s^2 - c^2) / 12) widen the PSF the model must draw.
    extras = ImageExtras(psf=gaussian_kernel(0.68), pixel_scale=0.1)
    obs = prepare_observation(_lens(100), 150, STUDY_INSTRUMENT, "e", extras)
    s, c, sigma = 0.1, 0.05, 0.068
    expected = math.sqrt(sigma**2 + s**2 / 6 + (s**2 - c**2) / 12) / c
    assert obs.resized and obs.psf_sigma_pixels == pytest.approx(expected, rel=0.02)
    assert obs.instrument["psf"]["fwhm_arcsec"] == pytest.approx(2.3548 * sigma, rel=0.02)


def test_a_shrunk_image_keeps_the_psfs_arcsec_width() -> None:
    extras = ImageExtras(pixel_scale=0.04)  # finer pixels than the model's: area-averaged
    obs = prepare_observation(_lens(150), 150, STUDY_INSTRUMENT, "h", extras)
    assert obs.psf_sigma_pixels == pytest.approx(0.1 / 0.05)


@pytest.mark.parametrize(("sigma_pixels", "warned"), [(2.0, False), (2.06, False), (2.4, True)])
def test_a_psf_unlike_the_checkpoints_says_the_score_is_not_calibrated(
    sigma_pixels: float, warned: bool
) -> None:
    extras = ImageExtras(psf=gaussian_kernel(sigma_pixels))  # the card: 2 pixels (0.1")
    obs = prepare_observation(_lens(150), 150, STUDY_INSTRUMENT, "p", extras)
    notes = [w for w in obs.warnings if w.startswith("PSF FWHM")]
    assert bool(notes) == warned
    if warned:
        assert "+20%" in notes[0] and "not calibrated" in notes[0]

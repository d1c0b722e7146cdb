"""The one preparation of an image for a model (deeplense.observation)."""

import math

import numpy as np
import pytest
import torch

from deeplense.fits_layout import ImageExtras
from deeplense.instrument import STUDY_INSTRUMENT, gaussian_kernel
from deeplense.observation import model_grid_view, prepare_observation


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


def test_a_model_that_draws_on_any_grid_gets_the_image_on_its_own_pixels() -> None:
    # A Euclid-like 100 x 100 cutout of 0.1" (10"): the model's field is 7.5", 75 own pixels,
    # 76 so that the crop stays centred (an even margin).
    extras = ImageExtras(psf=gaussian_kernel(0.68), pixel_scale=0.1)
    image = _lens(100)
    own = prepare_observation(image, 150, STUDY_INSTRUMENT, "e", extras, own_grid=True)
    resampled = prepare_observation(image, 150, STUDY_INSTRUMENT, "e", extras)
    assert own.x.shape == (1, 76, 76) and resampled.x.shape == (1, 150, 150)
    assert own.pixel_scale == 0.1 and resampled.pixel_scale is None
    assert own.psf_sigma_pixels == pytest.approx(0.68, rel=0.02)  # no resampling blur
    centre = image[12:88, 12:88]  # the crop, min-max scaled: no pixel interpolated
    np.testing.assert_allclose(
        own.x[0], (centre - centre.min()) / (centre.max() - centre.min()), atol=1e-6
    )
    # Its noise estimated on its own (uncorrelated) pixels: nothing widened.
    assert not any("widened" in w for w in own.warnings)
    assert any("own grid" in w and "not calibrated" in w for w in own.warnings)
    assert own.sigma is not None and own.sigma.shape == (1, 76, 76)


def test_own_grid_changes_nothing_at_the_checkpoints_scale_or_an_unknown_one() -> None:
    for extras in (None, ImageExtras(pixel_scale=0.05)):
        a = prepare_observation(_lens(150), 150, STUDY_INSTRUMENT, "a", extras, own_grid=True)
        b = prepare_observation(_lens(150), 150, STUDY_INSTRUMENT, "a", extras)
        assert a.pixel_scale is None and np.array_equal(a.x, b.x)
        assert a.psf_sigma_pixels == b.psf_sigma_pixels


def test_an_image_smaller_than_the_models_field_keeps_its_size_on_its_own_grid() -> None:
    extras = ImageExtras(pixel_scale=0.1)  # 60 x 60 of 0.1" = 6": inside the 7.5" field
    obs = prepare_observation(_lens(60), 150, STUDY_INSTRUMENT, "s", extras, own_grid=True)
    assert obs.x.shape == (1, 60, 60) and not obs.resized
    assert not any("cropped" in w for w in obs.warnings)


def test_the_encoders_view_of_an_own_grid_image_matches_the_resampled_preparation() -> None:
    extras = ImageExtras(pixel_scale=0.1)
    image = _lens(100)
    own = prepare_observation(image, 150, STUDY_INSTRUMENT, "e", extras, own_grid=True)
    resampled = prepare_observation(image, 150, STUDY_INSTRUMENT, "e", extras)
    view = model_grid_view(torch.from_numpy(own.x)[None], 0.1, 0.05, 150)[0]
    assert view.shape == (1, 150, 150)
    # The same sky on the same grid; they differ only where the crop's edge meets the
    # bilinear interpolation (the preparation resampled the full image first).
    inner = slice(4, 146)
    np.testing.assert_allclose(
        view[0, inner, inner].numpy(), resampled.x[0, inner, inner], atol=0.02
    )


def test_the_encoders_view_pads_a_small_field_with_the_median() -> None:
    x = torch.zeros(1, 1, 10, 10)
    x[..., 3:7, 3:7] = 1.0
    view = model_grid_view(x, 0.1, 0.1, 20)  # 1" inside a 2" field: padded, not stretched
    assert view.shape == (1, 1, 20, 20)
    assert float(view[..., :5, :].abs().max()) == 0.0 and float(view[..., 8:12, 8:12].min()) == 1.0

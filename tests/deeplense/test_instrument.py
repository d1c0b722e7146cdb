"""The Instrument: pixel scale and PSF, checked, summarised and recorded."""

import math

import numpy as np
import pytest

from deeplense.errors import InvalidInstrumentError
from deeplense.instrument import (
    FWHM_PER_SIGMA,
    STUDY_INSTRUMENT,
    Instrument,
    check_pixel_scale,
    check_psf_kernel,
    gaussian_kernel,
    kernel_sigma_pixels,
)


def test_the_study_instrument_is_0_05_arcsec_pixels_and_a_0_1_arcsec_psf() -> None:
    assert STUDY_INSTRUMENT.pixel_scale == 0.05
    assert STUDY_INSTRUMENT.psf_sigma_pixels == pytest.approx(2.0)
    assert STUDY_INSTRUMENT.psf_fwhm_arcsec == pytest.approx(0.1 * 2.3548, rel=1e-4)


def test_a_sampled_gaussian_kernel_has_its_sigma_back() -> None:
    for sigma in (1.0, 2.0, 3.5):
        assert kernel_sigma_pixels(gaussian_kernel(sigma)) == pytest.approx(sigma, rel=2e-3)


def test_a_kernel_instrument_reports_the_kernel_width_in_arcsec() -> None:
    kernel = gaussian_kernel(1.5)
    instrument = Instrument(pixel_scale=0.1, psf_sigma=None, psf_kernel=kernel * 7.0)
    assert instrument.psf_kernel is not None
    assert instrument.psf_kernel.sum() == pytest.approx(1.0)  # normalised
    assert instrument.psf_fwhm_arcsec == pytest.approx(FWHM_PER_SIGMA * 0.15, rel=2e-3)
    assert instrument.record()["psf"] == "kernel"


@pytest.mark.parametrize(
    ("kernel", "problem"),
    [
        (np.ones(5), "2-D"),
        (np.ones((4, 4)), "odd side"),
        (np.ones((3, 5)), "odd side"),
        (np.full((3, 3), np.nan), "NaN"),
        (-np.ones((3, 3)), "negative"),
        (np.zeros((3, 3)), "sums to zero"),
        (np.ones((257, 257)), "larger than"),
        (np.array([["a"] * 3] * 3), "real numbers"),
    ],
)
def test_bad_psf_kernels_are_refused_saying_why(kernel: np.ndarray, problem: str) -> None:
    with pytest.raises(InvalidInstrumentError, match=problem):
        check_psf_kernel(kernel, "psf.npy")


@pytest.mark.parametrize("value", [0, -0.1, math.nan, math.inf, "wide"])
def test_bad_pixel_scales_are_refused(value: object) -> None:
    with pytest.raises(InvalidInstrumentError, match="pixel_scale"):
        check_pixel_scale(value)

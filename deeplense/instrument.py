"""The instrument an image was taken with: pixel scale, PSF and image size, in one place.

The study's data (150 x 150 pixels of 0.05", a Gaussian PSF of sigma 0.1") are the default;
`simulate` records a dataset's instrument in its manifest, `fit` stores it in the checkpoint's
card, and every consumer (the noise-aware scores' matched filter, the noise estimate,
LensFit's renderer) reads it from there. A real image brings its own (FITS header, PSF
extension, request parameters): `Instrument` is the one description of all of them.

Conventions: angles in arcsec; a PSF kernel is a 2-D array on the image's own pixel grid,
odd-sized, non-negative, normalised to unit sum, centred on its middle pixel.
"""

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from deeplense.errors import InvalidInstrumentError

STUDY_PIXEL_SCALE_ARCSEC = 0.05  # arcsec per pixel: 150 pixels over a 7.5" field
STUDY_PSF_SIGMA_ARCSEC = 0.1  # Gaussian PSF sigma, arcsec
STUDY_IMAGE_SIZE = 150  # pixels per side
# The study's PSF on its pixels: the matched filter's width when a checkpoint records none.
DEFAULT_PSF_SIGMA_PIXELS = STUDY_PSF_SIGMA_ARCSEC / STUDY_PIXEL_SCALE_ARCSEC  # 2.0
FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))  # a Gaussian's FWHM / sigma, 2.3548
MAX_PSF_SIDE = 255  # pixels: larger kernels are refused (cost grows with the side squared)


def check_psf_kernel(kernel: Any, what: str = "PSF") -> np.ndarray:
    """A PSF kernel, checked and normalised: float64 (k, k) summing to 1.

    Raises InvalidInstrumentError (naming `what`) for a kernel that is not 2-D, not square
    or of even side, larger than MAX_PSF_SIDE, with NaN, infinite or negative values, or
    without positive total.
    """
    array = np.asarray(kernel)
    if array.ndim != 2:
        raise InvalidInstrumentError(f"{what}: must be a 2-D kernel, got shape {array.shape}")
    h, w = array.shape
    if h != w or h % 2 == 0:
        raise InvalidInstrumentError(
            f"{what}: must be square with an odd side (centred on its middle pixel), got {h}x{w}"
        )
    if h > MAX_PSF_SIDE:
        raise InvalidInstrumentError(f"{what}: {h}x{w} is larger than {MAX_PSF_SIDE} pixels")
    if not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
        raise InvalidInstrumentError(f"{what}: must hold real numbers, got {array.dtype}")
    values = array.astype(np.float64)
    if not np.isfinite(values).all():
        raise InvalidInstrumentError(f"{what}: has NaN or infinite values")
    if (values < 0).any():
        raise InvalidInstrumentError(f"{what}: has negative values (min {values.min():.3g})")
    total = float(values.sum())
    if not total > 0:
        raise InvalidInstrumentError(f"{what}: sums to zero; a PSF needs positive values")
    return values / total


def check_pixel_scale(value: Any, what: str = "pixel_scale") -> float:
    """A pixel scale in arcsec: finite and positive, else InvalidInstrumentError."""
    try:
        scale = float(value)
    except (TypeError, ValueError):
        raise InvalidInstrumentError(f"{what}: not a number: {value!r}") from None
    if not math.isfinite(scale) or scale <= 0:
        raise InvalidInstrumentError(f"{what}: must be a positive number of arcsec, got {scale:g}")
    return scale


def kernel_sigma_pixels(kernel: np.ndarray) -> float:
    """The sigma (pixels) of the Gaussian with the same second moment as `kernel` (k, k)
    about its centre: sqrt of the mean of the x and y variances."""
    k = kernel.shape[0]
    offsets = np.arange(k) - (k - 1) / 2
    var_x = float((kernel.sum(axis=0) * offsets**2).sum())
    var_y = float((kernel.sum(axis=1) * offsets**2).sum())
    return math.sqrt(max((var_x + var_y) / 2.0, 0.0))


def gaussian_kernel(sigma_pixels: float, truncate: float = 4.0) -> np.ndarray:
    """A normalised Gaussian kernel of `sigma_pixels`, side 2 ceil(truncate sigma) + 1."""
    radius = max(int(math.ceil(truncate * sigma_pixels)), 1)
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    g = np.exp(-0.5 * (offsets / max(sigma_pixels, 1e-12)) ** 2)
    kernel = np.outer(g, g)
    return kernel / kernel.sum()


@dataclass(frozen=True)
class Instrument:
    """Pixel scale (arcsec), PSF (a Gaussian sigma in arcsec, or a kernel on this grid)."""

    pixel_scale: float = STUDY_PIXEL_SCALE_ARCSEC
    psf_sigma: float | None = STUDY_PSF_SIGMA_ARCSEC  # arcsec; None when psf_kernel is given
    psf_kernel: np.ndarray | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        check_pixel_scale(self.pixel_scale)
        if self.psf_kernel is not None:
            object.__setattr__(self, "psf_kernel", check_psf_kernel(self.psf_kernel))
        elif self.psf_sigma is None or not math.isfinite(self.psf_sigma) or self.psf_sigma < 0:
            raise InvalidInstrumentError(
                f"psf_sigma: must be a non-negative number of arcsec, got {self.psf_sigma}"
            )

    @property
    def psf_sigma_pixels(self) -> float:
        """The PSF's width in pixels: the Gaussian's sigma, or a kernel's equivalent sigma
        (same second moment). What the matched filter and the noise estimate use."""
        if self.psf_kernel is not None:
            return kernel_sigma_pixels(self.psf_kernel)
        assert self.psf_sigma is not None
        return self.psf_sigma / self.pixel_scale

    @property
    def psf_sigma_arcsec(self) -> float:
        """The PSF's width in arcsec: the Gaussian's sigma, or a kernel's equivalent sigma."""
        return self.psf_sigma_pixels * self.pixel_scale

    @property
    def psf_fwhm_arcsec(self) -> float:
        """The PSF's full width at half maximum, arcsec (a kernel's: of its equivalent
        Gaussian)."""
        return FWHM_PER_SIGMA * self.psf_sigma_pixels * self.pixel_scale

    def kernel(self) -> np.ndarray:
        """The PSF as a normalised kernel on this grid (the Gaussian sampled, or the kernel)."""
        if self.psf_kernel is not None:
            return self.psf_kernel
        return gaussian_kernel(self.psf_sigma_pixels)

    def record(self) -> dict[str, Any]:
        """A JSON summary (manifest, card, results): scale, the PSF's kind, sigma and FWHM."""
        return {
            "pixel_scale_arcsec": self.pixel_scale,
            "psf": "kernel" if self.psf_kernel is not None else "gaussian",
            "psf_sigma_arcsec": self.psf_sigma_arcsec,
            "psf_fwhm_arcsec": self.psf_fwhm_arcsec,
        }


STUDY_INSTRUMENT = Instrument()

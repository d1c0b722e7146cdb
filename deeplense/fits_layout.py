"""How astronomers store an image with its instrument in one FITS file, and how we read it.

- The image: the HDU named SCI, else the first HDU with image data.
- The noise: an HDU found by EXTNAME: ERR (sigma), VAR or VARIANCE (sigma squared), WHT or
  IVM (inverse variance). A zero weight (infinite sigma) marks a pixel to leave out.
- The PSF: an HDU named PSF, an odd-sized kernel (normalised when it is used).
- The pixel scale, in arcsec: from the image HDU's header (else the primary's): PIXSCALE
  (arcsec), else the CD matrix (degrees: sqrt |det CD|), else CDELT1/CDELT2 (degrees).

Everything read here comes back in stored units; `deeplense.observation` checks and uses it.
"""

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

# EXTNAME (upper case) -> how the noise HDU's values relate to the noise sigma.
NOISE_EXTENSIONS = {
    "ERR": "sigma",
    "VAR": "variance",
    "VARIANCE": "variance",
    "WHT": "inverse_variance",
    "IVM": "inverse_variance",
}
SCIENCE_EXTENSION = "SCI"
PSF_EXTENSION = "PSF"
ARCSEC_PER_DEGREE = 3600.0


@dataclass(frozen=True)
class ImageExtras:
    """What a file holds besides the image, each None when absent."""

    noise: np.ndarray | None = None  # (H, W) float64 sigma in the image's units; inf = no weight
    noise_extension: str | None = None  # the EXTNAME it came from (ERR, VAR, WHT, ...)
    psf: np.ndarray | None = None  # (k, k) float64 as stored (checked when used)
    pixel_scale: float | None = None  # arcsec per pixel, from the header
    pixel_scale_keyword: str | None = None  # PIXSCALE, CD or CDELT

    @property
    def empty(self) -> bool:
        return self.noise is None and self.psf is None and self.pixel_scale is None


def extname(hdu: Any) -> str:
    """An HDU's EXTNAME, upper case ('' when it has none)."""
    return str(hdu.header.get("EXTNAME", "") or "").strip().upper()


def noise_sigma(values: np.ndarray, kind: str) -> np.ndarray:
    """An ERR / VAR / WHT array as sigma (float64): variance -> sqrt, inverse variance ->
    1 / sqrt (a zero weight gives infinity, a pixel to leave out). Negative or NaN values
    stay NaN, for the caller to refuse outside the image's mask."""
    v = np.asarray(values, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        if kind == "sigma":
            return np.where(v > 0, v, np.where(np.isposinf(v), np.inf, np.nan))
        if kind == "variance":
            return np.where(v > 0, np.sqrt(v), np.where(np.isposinf(v), np.inf, np.nan))
        return np.where(v > 0, 1.0 / np.sqrt(v), np.where(v == 0, np.inf, np.nan))


def header_pixel_scale(header: Any) -> tuple[float, str] | None:
    """(arcsec per pixel, the keyword it came from) from a FITS header, or None."""
    if "PIXSCALE" in header:
        value = _number(header["PIXSCALE"])
        if value is not None:
            return value, "PIXSCALE"  # a zero or negative value is refused by the caller
    cd = [_number(header.get(k)) for k in ("CD1_1", "CD1_2", "CD2_1", "CD2_2")]
    if all(c is not None for c in cd):
        a, b, c, d = (float(x) for x in cd)  # type: ignore[arg-type]
        det = abs(a * d - b * c)
        if det > 0:
            return math.sqrt(det) * ARCSEC_PER_DEGREE, "CD"
    d1, d2 = _number(header.get("CDELT1")), _number(header.get("CDELT2"))
    if d1 is not None and d2 is not None and d1 != 0 and d2 != 0:
        return math.sqrt(abs(d1 * d2)) * ARCSEC_PER_DEGREE, "CDELT"
    return None


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None

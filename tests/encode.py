"""Arrays encoded as the bytes of an image file, for tests that read or upload images."""

import io
from typing import Any

import numpy as np
import tifffile
from astropy.io import fits
from PIL import Image


def npy_bytes(array: np.ndarray) -> bytes:
    """A .npy file (never pickled)."""
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def fits_bytes(array: np.ndarray | None, extension: bool = False) -> bytes:
    """A FITS file: the image in the primary HDU, or in the first extension."""
    buf = io.BytesIO()
    if extension:  # empty primary HDU, image in the first extension
        fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(array)]).writeto(buf)
    else:
        fits.PrimaryHDU(array).writeto(buf)
    return buf.getvalue()


def png_bytes(array: np.ndarray) -> bytes:
    """An 8-bit grayscale PNG of a float image in [0, 1]."""
    buf = io.BytesIO()
    Image.fromarray(np.round(array * 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def tiff_bytes(array: np.ndarray, **kwargs: Any) -> bytes:
    """A TIFF file of `array` as it is (any dtype tifffile writes)."""
    buf = io.BytesIO()
    tifffile.imwrite(buf, array, **kwargs)
    return buf.getvalue()

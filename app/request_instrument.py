"""A request's own instrument: the `psf` file part and the `pixel_scale` parameter, which
apply to every uploaded image that carries none of its own."""

import numpy as np

from app.decode_pool import NPY_MAGIC, DecodePool
from app.imaging import Upload
from deeplense.errors import InvalidImageError, InvalidInstrumentError
from deeplense.imaging import decode_stack
from deeplense.instrument import check_pixel_scale, check_psf_kernel
from deeplense.observation import RequestInstrument


def request_instrument(
    decoder: DecodePool, psf: Upload | None, pixel_scale: float | None, max_pixels: int
) -> RequestInstrument:
    """The request's PSF (decoded in the pool: a FITS file's PSF extension, else its image;
    or a .npy array) and pixel scale (arcsec), checked; InvalidInstrumentError (a 422) says
    what is wrong with them."""
    kernel = None
    if psf is not None:
        kernel = check_psf_kernel(_stored_psf(decoder, psf, max_pixels), f"psf ({psf.filename})")
    if pixel_scale is not None:
        pixel_scale = check_pixel_scale(pixel_scale, "pixel_scale")
    return RequestInstrument(psf=kernel, pixel_scale=pixel_scale)


def _stored_psf(decoder: DecodePool, psf: Upload, max_pixels: int) -> np.ndarray:
    """The kernel as stored: a .npy array read here (our own bounded reader, no value checks:
    a top-hat kernel is constant), or a FITS file's PSF extension, else its image, decoded in
    the pool."""
    try:
        if psf.data.startswith(NPY_MAGIC):
            stack = decode_stack(psf.data, psf.filename, max_pixels, check_values=False)
            if len(stack.pixels) != 1:
                raise InvalidInstrumentError(f"psf: {len(stack.pixels)} arrays; expected one")
            return np.asarray(stack.pixels[0])
        decoded = decoder.decode_all([psf], max_pixels)[0]
    except InvalidImageError as exc:
        raise InvalidInstrumentError(f"psf: {exc.problem}") from None
    if isinstance(decoded, InvalidImageError):
        raise InvalidInstrumentError(f"psf: {decoded.problem}")
    extras = decoded.extras
    return extras.psf if extras is not None and extras.psf is not None else decoded.pixels

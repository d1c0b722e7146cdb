"""A request's own instrument: the `psf` file part and the `pixel_scale` parameter, which
apply to every uploaded image that carries none of its own."""

from app.decode_pool import DecodePool
from app.imaging import Upload
from deeplense.errors import InvalidImageError, InvalidInstrumentError
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
        decoded = decoder.decode_all([psf], max_pixels)[0]
        if isinstance(decoded, InvalidImageError):
            raise InvalidInstrumentError(f"psf: {decoded.problem}")
        extras = decoded.extras
        stored = extras.psf if extras is not None and extras.psf is not None else decoded.pixels
        kernel = check_psf_kernel(stored, f"psf ({psf.filename})")
    if pixel_scale is not None:
        pixel_scale = check_pixel_scale(pixel_scale, "pixel_scale")
    return RequestInstrument(psf=kernel, pixel_scale=pixel_scale)

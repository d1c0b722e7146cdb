"""Read a user's image, or a stack of images, from any supported file format.

One reader for the service, the training package and the `score` CLI. The format is found
from the content (magic bytes), the extension only sharpens the error message. Pixels come
back as float32 in their stored units (no scaling; `deeplense.preprocess` scales), y first:
`(H, W)` for one image, `(N, H, W)` for a stack.

Every bad input raises `InvalidImageError(filename, problem)` (or its subclass
`ImageTooLargeError`): no raw decoder exception escapes, and messages carry no object reprs.
Decoding is bounded before it starts:
- the pixel cap (H * W per image) and the decoded size (at most `BYTES_PER_PIXEL_CAP` bytes
  per pixel, samples and bit depth included) are checked from the header (NumPy header,
  FITS NAXISn and BITPIX, PNG/JPEG header, TIFF series shape and dtype) before any pixel
  is decoded;
- gzip (.fits.gz) is inflated here with a byte cap derived from the pixel cap (see
  `inflate_limit`), and the FITS reader gets plain bytes; GZIP_1/2 tiles of compressed FITS
  (.fz) inflate to at most the largest image allowed; TIFF deflate and PackBits segments
  inflate to their declared size and no further (`deeplense.bounded`); other TIFF
  compressions are refused;
- warnings are silenced before any parser runs (astropy's card checks cost CPU per card);
- TIFFs are read without following references to other files (OME, NDTiff, MMStack).
NumPy files are read with `allow_pickle=False` only; pickled or object arrays are refused.

Colour images (RGB, RGBA, palette, CMYK) become luminance Y = 0.299 R + 0.587 G + 0.114 B
(ITU-R BT.601, Pillow's own weights) and the conversion is reported in `warnings`; an RGB
file whose three channels are equal is grey already and is read exactly, without a warning.
"""

import io
import logging
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import tifffile
from astropy.io import fits
from numpy.lib import format as npy_format
from PIL import Image

from deeplense.bounded import (
    InflateError,
    InflateLimitError,
    bounded_decoding,
    clean_message,
    inflate_gzip,
    install_fits_tile_codecs,
    install_tiff_codecs,
)
from deeplense.errors import (
    DeepLenseError,
    ImageTooLargeError,
    InvalidImageError,
)
from deeplense.fits_layout import (
    NOISE_EXTENSIONS,
    PSF_EXTENSION,
    SCIENCE_EXTENSION,
    ImageExtras,
    extname,
    header_pixel_scale,
    noise_sigma,
)
from deeplense.printable import printable

logger = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 4096 * 4096
"""Largest accepted image, in pixels per image (H * W); checked before decoding."""

BYTES_PER_PIXEL_CAP = 8
"""Largest decoded size per pixel, in bytes (a float64 grey pixel, or 4 samples of 16 bits):
an image over `max_pixels * BYTES_PER_PIXEL_CAP` decoded bytes is refused from its header."""

HEADER_ALLOWANCE_BYTES = 1 << 20
"""Bytes allowed besides the pixels in an inflated .fits.gz (headers, other HDUs)."""

MAX_INFLATED_STACK_BYTES = 4 << 30
"""Inflate cap of a .fits.gz read as a stack (the `score` CLI), whatever `max_pixels` says."""

SUPPORTED_EXTENSIONS = (
    ".npy",
    ".fits",
    ".fit",
    ".fits.gz",
    ".fit.gz",
    ".png",
    ".tif",
    ".tiff",
    ".jpg",
    ".jpeg",
)
"""File name endings `find_image_files` and the service accept (case-insensitive)."""

SUPPORTED_FORMATS = (
    "NumPy .npy (2-D, (1, H, W) or stacks), FITS (.fits, .fit, .fits.gz), "
    "PNG and TIFF (8/16-bit grey, float TIFF, colour), JPEG"
)
"""Human-readable list used in 'unknown format' messages when stacks are accepted."""

SINGLE_IMAGE_FORMATS = (
    "NumPy .npy (2-D or (1, H, W)), FITS (.fits, .fit, .fits.gz), "
    "PNG and TIFF (8/16-bit grey, float TIFF, colour), JPEG"
)
"""The same for readers of one image (the service): no stacks."""

LUMINANCE_WEIGHTS = (0.299, 0.587, 0.114)
"""ITU-R BT.601 weights of R, G, B in the luminance of a colour image."""

_FORMAT_NAMES = {"npy": ".npy", "fits": "FITS", "png": "PNG", "tiff": "TIFF", "jpeg": "JPEG"}
_EXTENSION_FORMATS = {
    ".npy": "npy",
    ".fits": "fits",
    ".fit": "fits",
    ".fits.gz": "fits",
    ".fit.gz": "fits",
    ".png": "png",
    ".tif": "tiff",
    ".tiff": "tiff",
    ".jpg": "jpeg",
    ".jpeg": "jpeg",
}
_PILLOW_GREY_MODES = {"1", "L", "I", "F", "I;16", "I;16L", "I;16B", "I;16N"}
_STACK_SHAPES = "(H, W), (1, H, W), (N, H, W) or (N, 1, H, W)"
_FLOAT32_HIGH, _FLOAT32_LOW = 2.0**100, 2.0**-100  # float64 magnitudes kept as they are
_TIFF_PAGES_COUNTED = 1000  # pages counted, at most, in a TIFF refused for holding several
_VALUE_CHUNK = 256  # images per chunk when checking the values of a (memory-mapped) stack
_TIFF_COMPRESSIONS = install_tiff_codecs()  # codes safe to decode: none, deflate, PackBits
_FITS_GZIP_TILES = install_fits_tile_codecs()  # GZIP_1/2 tiles inflate within a cap

ImageSource = Path | str | bytes
"""A file path, or the file's bytes (an upload)."""


@dataclass(frozen=True)
class DecodedImage:
    """One image: pixels (H, W) float32 in stored units, the format read, and conversion notes."""

    pixels: np.ndarray  # (H, W) float32; NaN marks a pixel to leave out (masked)
    format: str  # "npy", "fits", "png", "tiff" or "jpeg"
    warnings: tuple[str, ...] = ()
    extras: ImageExtras | None = None  # a FITS file's noise map, PSF and pixel scale


@dataclass(frozen=True)
class DecodedStack:
    """N images (N, H, W) float32 (may be read-only: a memmap, or a view of the bytes)."""

    pixels: np.ndarray  # (N, H, W) float32
    format: str
    warnings: tuple[str, ...] = ()
    extras: ImageExtras | None = None  # single images only (decode_image)


def is_supported_filename(name: str | Path) -> bool:
    """Whether a file name ends with one of SUPPORTED_EXTENSIONS (case-insensitive)."""
    return _extension(str(name)) in _EXTENSION_FORMATS


def read_image(
    source: ImageSource, filename: str | None = None, max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """Read one 2-D image from a path or bytes: (H, W) float32, finite and not constant."""
    return decode_image(source, filename, max_pixels).pixels


def read_stack(
    source: ImageSource,
    filename: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    check_values: bool = True,
) -> np.ndarray:
    """Read a stack (N, H, W) float32 from a path or bytes; a single image gives N = 1.

    A float32 .npy file on disk comes back as a read-only memmap (not read into RAM), a
    float32 .npy in bytes as a read-only view of them; other inputs are float32 copies.
    `max_pixels` caps each image (H * W). With `check_values`, every image is checked (in
    chunks) to be finite and not constant; the error names the first bad image's index.
    """
    return decode_stack(source, filename, max_pixels, check_values).pixels


def decode_image(
    source: ImageSource, filename: str | None = None, max_pixels: int = DEFAULT_MAX_PIXELS
) -> DecodedImage:
    """Like `read_image`, also returning the format and any conversion warnings."""
    stack = _decode(_Request.of(source, filename, max_pixels, single=True))
    pixels = np.array(stack.pixels[0], dtype=np.float32)  # (H, W), an in-memory copy
    check_pixels(pixels, _name(source, filename))
    return DecodedImage(pixels, stack.format, stack.warnings, stack.extras)


def decode_stack(
    source: ImageSource,
    filename: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    check_values: bool = True,
) -> DecodedStack:
    """Like `read_stack`, also returning the format and any conversion warnings."""
    stack = _decode(_Request.of(source, filename, max_pixels, single=False))
    if check_values:
        _check_stack_values(stack.pixels, _name(source, filename))
    return stack


def inflate_limit(max_pixels: int, single: bool) -> int:
    """Most bytes a .fits.gz may inflate to: the largest image's pixels at
    BYTES_PER_PIXEL_CAP plus HEADER_ALLOWANCE_BYTES; for stacks MAX_INFLATED_STACK_BYTES
    (or that, when larger)."""
    one = max_pixels * BYTES_PER_PIXEL_CAP + HEADER_ALLOWANCE_BYTES
    return one if single else max(one, MAX_INFLATED_STACK_BYTES)


def check_pixels(pixels: np.ndarray, filename: str) -> None:
    """Raise InvalidImageError unless `pixels` is a non-empty 2-D image whose pixels are
    finite or NaN (NaN: masked, left out of every score) and whose unmasked pixels are not
    all equal. Infinite pixels are refused: they are no measurement and no mask."""
    if pixels.ndim != 2:
        raise InvalidImageError(filename, f"not a 2-D image: shape {tuple(pixels.shape)}")
    if pixels.size == 0:
        raise InvalidImageError(filename, f"empty image: shape {tuple(pixels.shape)}")
    infinite = int(np.count_nonzero(np.isinf(pixels)))
    if infinite:
        raise InvalidImageError(
            filename, f"has infinite pixels ({infinite} of {pixels.size}); mask them with NaN"
        )
    valid = pixels[~np.isnan(pixels)]
    if valid.size == 0:
        raise InvalidImageError(filename, "has only NaN (masked) pixels: nothing to score")
    low, high = float(valid.min()), float(valid.max())
    if low == high:
        raise InvalidImageError(
            filename, f"constant image (every pixel is {low:g}): it cannot be min-max scaled"
        )


# --- internals -------------------------------------------------------------------------------


def _name(source: ImageSource, filename: str | None) -> str:
    if filename is not None:
        return filename
    return "image" if isinstance(source, bytes) else str(source)


def _extension(name: str) -> str:
    lower = name.lower()
    for double in (".fits.gz", ".fit.gz"):
        if lower.endswith(double):
            return double
    return Path(lower).suffix


@dataclass(frozen=True)
class _Request:
    """What to read and the limits to apply while reading it."""

    name: str
    path: Path | None
    data: bytes | None
    max_pixels: int
    single: bool

    @classmethod
    def of(
        cls, source: ImageSource, filename: str | None, max_pixels: int, single: bool
    ) -> "_Request":
        name = _name(source, filename)
        if isinstance(source, bytes):
            return cls(name, None, source, max_pixels, single)
        return cls(name, Path(source), None, max_pixels, single)

    def open(self) -> IO[bytes]:
        """A binary file object over the source (caller closes it)."""
        if self.data is not None:
            return io.BytesIO(self.data)
        assert self.path is not None
        return self.path.open("rb")

    def size(self) -> int:
        """Size of the source in bytes."""
        if self.data is not None:
            return len(self.data)
        assert self.path is not None
        return self.path.stat().st_size

    def fail(self, problem: str) -> InvalidImageError:
        return InvalidImageError(self.name, problem)

    def formats(self) -> str:
        """The supported formats, as this reader (one image or stacks) accepts them."""
        return SINGLE_IMAGE_FORMATS if self.single else SUPPORTED_FORMATS

    def check_bytes(self, per_image: int, h: int, w: int, what: str) -> None:
        """ImageTooLargeError when one image decodes to more than the byte cap."""
        cap = self.max_pixels * BYTES_PER_PIXEL_CAP
        if per_image > cap:
            raise ImageTooLargeError(
                self.name,
                f"{h} x {w} pixels of {what} decode to {per_image} bytes, more than the "
                f"limit of {cap} bytes ({BYTES_PER_PIXEL_CAP} bytes per pixel of the "
                "pixel limit)",
            )

    def layout(self, shape: tuple[int, ...]) -> tuple[int, int, int]:
        """Interpret an array shape as (N, H, W); raise if it is not an image or too large."""
        if len(shape) < 2:
            raise self.fail(f"not a 2-D image: shape {shape}; expected {_STACK_SHAPES}")
        leading = [d for d in shape[:-2] if d != 1]
        if len(leading) > 1:
            raise self.fail(f"not a 2-D image or stack: shape {shape}; expected {_STACK_SHAPES}")
        if 0 in shape:
            raise self.fail(f"empty image: shape {shape}")
        n, (h, w) = math.prod(shape[:-2]), shape[-2:]
        if self.single and n > 1:
            raise self.fail(
                f"holds {n} images (shape {shape}); expected a single 2-D image "
                "(score stacks with `python -m training score`)"
            )
        if h * w > self.max_pixels:
            raise ImageTooLargeError(
                self.name,
                f"{h} x {w} = {h * w} pixels is more than the limit of {self.max_pixels} pixels",
            )
        return n, h, w


# (N, H, W) float32 pixels, conversion notes[, what a FITS file holds beside the image]
_Decoded = tuple[np.ndarray, list[str]] | tuple[np.ndarray, list[str], ImageExtras | None]
_Decoder = Callable[[_Request], _Decoded]


def _decode(request: _Request) -> DecodedStack:
    """Sniff the format, decode with the matching decoder, wrap any decoder failure."""
    fmt = _detect_format(request)
    if fmt == "gzip":
        request, fmt = _inflated(request), "fits"
        if not (request.data or b"").startswith(b"SIMPLE  ="):
            raise request.fail(
                f"gzip-compressed file that is not FITS; supported formats: {request.formats()}"
            )
    try:
        # Before any parser runs: astropy checks (and warns about) every header card.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            decoded = _DECODERS[fmt](request)
    except DeepLenseError:
        raise
    except MemoryError as exc:
        raise ImageTooLargeError(request.name, "not enough memory to decode it") from exc
    except Exception as exc:  # any decoder failure is a bad file, named with its cause
        raise request.fail(
            f"corrupt or truncated {_FORMAT_NAMES[fmt]} file "
            f"({type(exc).__name__}: {clean_message(exc)})"
        ) from None
    pixels, notes = decoded[0], decoded[1]
    extras = decoded[2] if len(decoded) > 2 else None
    for note in notes:
        logger.warning("%s: %s", printable(request.name), note)
    return DecodedStack(pixels, fmt, tuple(notes), extras)


def _detect_format(request: _Request) -> str:
    """Format name from the first bytes of the content; the extension only words the error."""
    try:
        size = request.size()
        with request.open() as fh:
            head = fh.read(16)
    except OSError as exc:
        raise request.fail(f"cannot read file: {exc.strerror or clean_message(exc)}") from exc
    expected = _EXTENSION_FORMATS.get(_extension(request.name))
    if size == 0:
        raise request.fail("empty file (0 bytes)")
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if head.startswith(b"SIMPLE  ="):
        return "fits"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if expected == "npy" and head[:1] == b"\x80":  # pickle protocol >= 2
        raise request.fail("pickled .npy files are refused (save a plain array with np.save)")
    if expected is not None:
        raise request.fail(f"corrupt or not a {_FORMAT_NAMES[expected]} file (unrecognised header)")
    raise request.fail(f"unknown format; supported formats: {request.formats()}")


def _inflated(request: _Request) -> _Request:
    """The request over the inflated content of its gzip file, inflated within the cap."""
    try:
        with request.open() as fh:
            compressed = fh.read()
    except OSError as exc:
        raise request.fail(f"cannot read file: {exc.strerror or clean_message(exc)}") from exc
    limit = inflate_limit(request.max_pixels, request.single)
    try:
        data = inflate_gzip(compressed, limit)
    except InflateLimitError as exc:
        raise ImageTooLargeError(
            request.name, f"gzip content {exc}, the limit for {request.max_pixels} pixels"
        ) from None
    except InflateError as exc:
        raise request.fail(str(exc)) from None
    return _Request(request.name, None, data, request.max_pixels, request.single)


def _decode_npy(request: _Request) -> _Decoded:
    with request.open() as fh:
        try:
            version = npy_format.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = npy_format.read_array_header_1_0(fh)
            else:  # 2.0 and 3.0 share the header layout
                shape, fortran, dtype = npy_format.read_array_header_2_0(fh)
        except ValueError as exc:
            raise request.fail(f"corrupt .npy header ({exc})") from exc
        offset = fh.tell()
    if dtype.hasobject:
        raise request.fail("pickled .npy files are refused (the array holds Python objects)")
    if dtype.names is not None or dtype.kind not in "biuf":
        raise request.fail(f"unsupported pixel type {dtype}; expected integers or floats")
    n, h, w = request.layout(tuple(shape))
    request.check_bytes(h * w * dtype.itemsize, h, w, str(dtype))
    expected_bytes = offset + math.prod(shape) * dtype.itemsize
    if request.size() < expected_bytes:
        raise request.fail(
            f"truncated .npy file: {request.size()} bytes, the header promises {expected_bytes}"
        )
    if request.path is not None:
        array = np.load(request.path, mmap_mode="r", allow_pickle=False)
    else:
        assert request.data is not None
        count = math.prod(shape)
        flat = np.frombuffer(request.data, dtype=dtype, count=count, offset=offset)
        array = flat.reshape(shape, order="F" if fortran else "C")
    array = array.reshape(n, h, w)
    if array.dtype == np.dtype(np.float32) and array.flags.c_contiguous:
        return array, []  # a memmap stays a memmap: no copy of a big stack
    factor, notes = _float32_factor(array)
    return _as_float32(array, factor), notes


def _decode_fits(request: _Request) -> _Decoded:
    # Plain bytes only: a .fits.gz was inflated (within its cap) by _inflated.
    with request.open() as raw, fits.open(raw, memmap=False, lazy_load_hdus=True) as hdul:
        images = [hdu for hdu in hdul if _is_image_hdu(hdu)]
        if not images:
            raise request.fail("no image data in any FITS HDU")
        named = [hdu for hdu in images if extname(hdu) == SCIENCE_EXTENSION]
        science = named[0] if named else images[0]
        stored = _fits_raw(request, science)  # (N, H, W) as stored
        factor, notes = _float32_factor(stored)  # also applied to a noise map: the same units
        data = _as_float32(stored, factor)
        extras = _fits_extras(request, hdul, science, factor) if data.shape[0] == 1 else None
        return data, notes, extras


def _is_image_hdu(hdu: Any) -> bool:
    if isinstance(hdu, fits.GroupsHDU) or not isinstance(
        hdu, fits.PrimaryHDU | fits.ImageHDU | fits.CompImageHDU
    ):
        return False
    return int(hdu.header.get("NAXIS", 0)) > 0


def _fits_data(request: _Request, hdu: Any, role: str = "") -> np.ndarray:
    """One HDU's data as (N, H, W) float32, its header checked before any data is read."""
    return _as_float32(_fits_raw(request, hdu, role))


def _fits_raw(request: _Request, hdu: Any, role: str = "") -> np.ndarray:
    """One HDU's data as (N, H, W) in its stored type, its header checked first."""
    naxis = int(hdu.header.get("NAXIS", 0))
    shape = tuple(int(hdu.header[f"NAXIS{i}"]) for i in range(naxis, 0, -1))
    n, h, w = request.layout(shape)  # before .data: no bomb is decoded
    bitpix = int(hdu.header.get("BITPIX", 0))
    if bitpix not in (8, 16, 32, 64, -32, -64):
        raise request.fail(f"invalid FITS BITPIX {bitpix}{role}")
    declared = n * h * w * abs(bitpix) // 8
    if not isinstance(hdu, fits.CompImageHDU) and declared > request.size():
        raise request.fail(
            f"truncated FITS file: the header declares {declared} bytes of data "
            f"({shape}, BITPIX {bitpix}){role}, the file has {request.size()} bytes"
        )
    if isinstance(hdu, fits.CompImageHDU):
        kind = str(hdu.compression_type).upper()
        if kind.startswith("GZIP") and not _FITS_GZIP_TILES:
            raise request.fail(f"unsupported FITS tile compression {kind}")
    # A compressed tile never inflates past the largest image allowed.
    with bounded_decoding(request.max_pixels * BYTES_PER_PIXEL_CAP):
        data = hdu.data  # big-endian, BSCALE/BZERO applied
    if data is None or tuple(data.shape) != shape:
        raise request.fail(f"FITS data do not match the header shape {shape}{role}")
    return np.asarray(data).reshape(n, h, w)


def _fits_extras(
    request: _Request, hdul: Any, science: Any, factor: float = 1.0
) -> ImageExtras | None:
    """The noise map, PSF and pixel scale stored beside the science image (fits_layout); the
    noise sigma multiplied by the science image's `factor` (`_float32_factor`): one unit."""
    by_name = {extname(hdu): hdu for hdu in hdul if _is_image_hdu(hdu) and hdu is not science}
    noise = noise_name = psf = None
    for name, kind in NOISE_EXTENSIONS.items():
        if name in by_name:
            stored = _fits_raw(request, by_name[name], f" in the {name} extension")
            if stored.shape[0] != 1:
                raise request.fail(
                    f"the {name} extension holds {stored.shape[0]} images; expected one noise map"
                )
            # Read as float32, as always, unless the image needed a factor: then in float64,
            # scaled to sigma first (a variance of 1e300-sized pixels is no float32).
            values = _as_float32(stored[0]) if factor == 1.0 else stored[0]
            noise, noise_name = noise_sigma(values, kind) * factor, name
            break
    if PSF_EXTENSION in by_name:
        psf = _fits_data(request, by_name[PSF_EXTENSION], " in the PSF extension")[0]
    scale = header_pixel_scale(science.header) or header_pixel_scale(hdul[0].header)
    extras = ImageExtras(
        noise=noise,
        noise_extension=noise_name,
        psf=None if psf is None else psf.astype(np.float64),
        pixel_scale=None if scale is None else scale[0],
        pixel_scale_keyword=None if scale is None else scale[1],
    )
    return None if extras.empty else extras


def _decode_pillow(request: _Request, formats: list[str]) -> _Decoded:
    with request.open() as fh:
        try:
            img = Image.open(fh, formats=formats)
        except Image.DecompressionBombError as exc:
            problem = f"too many pixels to decode safely ({exc})"
            raise ImageTooLargeError(request.name, problem) from exc
        with img:
            w, h = img.size  # from the header; nothing decoded yet
            frames = int(getattr(img, "n_frames", 1))
            request.layout((frames, h, w))
            if frames > 1:
                raise request.fail(f"animated or multi-frame image ({frames} frames): unsupported")
            img.load()
            notes: list[str] = []
            if img.mode in _PILLOW_GREY_MODES:
                pixels = np.asarray(img, dtype=np.float32)
            elif img.mode in ("LA", "La"):
                pixels = np.asarray(img.getchannel(0), dtype=np.float32)
                notes += _alpha_note(np.asarray(img.getchannel("A")))
            else:
                if "A" in img.getbands():
                    notes += _alpha_note(np.asarray(img.getchannel("A")))
                pixels, more = _luminance(np.asarray(img.convert("RGB")))
                notes += more
    return pixels[None], notes


def _decode_tiff(request: _Request) -> _Decoded:
    with (
        request.open() as fh,
        # OME, NDTiff and MMStack series open other files next to the TIFF: not those.
        tifffile.TiffFile(
            fh, _multifile=False, is_ome=False, is_ndtiff=False, is_mmstack=False
        ) as tif,
    ):
        _check_tiff_pages(tif, request)  # before tif.series, which is quadratic in pages
        if not tif.series:
            raise request.fail("no image in the TIFF file")
        if len(tif.series) > 1:
            raise request.fail(
                f"holds {len(tif.series)} images of different shapes; expected one image or "
                "a stack of images of one shape"
            )
        series = tif.series[0]
        axes, shape = series.axes, tuple(series.shape)
        if "Y" not in axes or "X" not in axes:
            raise request.fail(f"TIFF axes {axes!r} lack Y or X")
        # Order as (stack axes..., Y, X[, S]) where S holds colour samples.
        order = [i for i, a in enumerate(axes) if a not in "YXS"]
        order += [axes.index("Y"), axes.index("X")] + ([axes.index("S")] if "S" in axes else [])
        n, h, w = request.layout(tuple(shape[i] for i in order if axes[i] != "S"))
        samples = shape[axes.index("S")] if "S" in axes else 1
        request.check_bytes(
            h * w * samples * series.dtype.itemsize, h, w, f"{samples} x {series.dtype}"
        )
        for page in series.pages:  # a TiffFrame decodes with its keyframe's compression
            if page is None:
                continue
            if page.keyframe is None:
                raise request.fail("TIFF page without a key frame")
            compression = int(page.keyframe.compression)
            if compression not in _TIFF_COMPRESSIONS:
                name = _tiff_compression_name(compression)
                raise request.fail(
                    f"unsupported TIFF compression {name}; supported: none, deflate, PackBits"
                )
        photometric = int(series.keyframe.photometric)
        colormap = series.keyframe.colormap
        # Decoded only after the checks, in this thread (maxworkers=1): the caps of
        # bounded_decoding hold in this context only, not in tifffile's worker threads.
        with bounded_decoding(request.max_pixels * BYTES_PER_PIXEL_CAP):
            data = np.transpose(series.asarray(maxworkers=1), order)
    notes: list[str] = []
    if photometric == tifffile.PHOTOMETRIC.PALETTE and colormap is not None:
        rgb = np.moveaxis(np.asarray(colormap)[:, data], 0, -1)  # (..., 3)
        pixels, notes = _luminance(rgb)
    elif "S" in axes and photometric in (tifffile.PHOTOMETRIC.RGB, tifffile.PHOTOMETRIC.YCBCR):
        if data.shape[-1] > 3:
            notes += _alpha_note(data[..., 3])
        pixels, more = _luminance(data[..., :3])
        notes += more
    elif photometric in (tifffile.PHOTOMETRIC.MINISBLACK, tifffile.PHOTOMETRIC.MINISWHITE):
        if "S" in axes:
            notes.append(f"{data.shape[-1] - 1} extra channel(s) ignored; read the first")
            data = data[..., 0]
        pixels = _as_float32(data)
        if photometric == tifffile.PHOTOMETRIC.MINISWHITE:
            pixels = -pixels  # white is zero: negate so brighter is larger
    else:
        name = tifffile.PHOTOMETRIC(photometric).name
        raise request.fail(f"unsupported TIFF colour model {name}; expected grey or RGB")
    return pixels.reshape(n, h, w), notes


def _check_tiff_pages(tif: tifffile.TiffFile, request: _Request) -> None:
    """Refuse, from each page's tags and before any series is built, a TIFF whose full-size
    pages differ in shape or type, or (one image wanted) that holds more than one: tifffile
    builds the series of pages of alternating shapes in time quadratic in their number.
    Stops at the first such page: linear in the pages read."""
    pages = tif.pages
    useframes, pages.useframes = pages.useframes, False  # full tags for every page
    try:
        first: tuple[tuple[int, ...], Any] | None = None
        count = 0
        for page in pages:
            if not isinstance(page, tifffile.TiffPage) or page.is_reduced:
                continue  # thumbnails and other reduced-resolution pages are not images here
            count += 1
            if first is None:
                first = (page.shape, page.dtype)
            elif (page.shape, page.dtype) != first:
                raise request.fail(
                    f"TIFF pages of different shapes or types ({_shape(first[0])} "
                    f"{first[1]}, then {_shape(page.shape)} {page.dtype} at page {count}); "
                    "expected one image or a stack of images of one shape"
                )
            if request.single and count > _TIFF_PAGES_COUNTED:
                break
    finally:
        pages.useframes = useframes
    if request.single and count > 1:
        shown = f"more than {_TIFF_PAGES_COUNTED}" if count > _TIFF_PAGES_COUNTED else count
        raise request.fail(
            f"holds {shown} images (TIFF pages); expected a single 2-D image "
            "(score stacks with `python -m training score`)"
        )


def _shape(shape: tuple[int, ...]) -> str:
    return " x ".join(str(d) for d in shape)


def _tiff_compression_name(code: int) -> str:
    try:
        return tifffile.COMPRESSION(code).name
    except ValueError:
        return str(code)


def _as_float32(array: np.ndarray, factor: float = 1.0) -> np.ndarray:
    """C-contiguous float32 copy of `array` times `factor` (a power of two from
    `_float32_factor`, so exact); values still beyond float32 become inf (refused)."""
    with np.errstate(over="ignore", invalid="ignore"):
        if factor != 1.0:
            array = np.multiply(array, factor, dtype=np.float64)
        return np.ascontiguousarray(array, dtype=np.float32)


def _float32_factor(array: np.ndarray) -> tuple[float, list[str]]:
    """A power of two that brings the largest finite magnitude of a float64 `array` into
    float32's range (1e300 would become inf, 1e-300 zero), and the note saying so; (1.0,
    []) when it fits already. Min-max scaling makes the factor vanish from every score."""
    if array.dtype.kind != "f" or array.dtype.itemsize <= 4:
        return 1.0, []
    flat = array.reshape(len(array), -1) if array.ndim > 1 else array.reshape(1, -1)
    peak = 0.0
    for start in range(0, len(flat), _VALUE_CHUNK):  # bounded temporaries for big stacks
        chunk = np.asarray(flat[start : start + _VALUE_CHUNK])
        finite = np.isfinite(chunk)
        peak = max(peak, float(np.max(np.abs(chunk), where=finite, initial=0.0)))
    if peak == 0.0 or _FLOAT32_LOW <= peak <= _FLOAT32_HIGH:
        return 1.0, []
    exponent = math.frexp(peak)[1]  # peak = m * 2**exponent, 0.5 <= m < 1
    note = f"values up to {peak:.3g} multiplied by 2^{-exponent} to fit float32 pixels"
    return math.ldexp(1.0, -exponent), [note]


def _luminance(rgb: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """(..., 3) colour -> (...) float32 luminance, and the warning (none if already grey)."""
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    if np.array_equal(red, green) and np.array_equal(red, blue):
        return np.asarray(red, dtype=np.float32), []
    wr, wg, wb = LUMINANCE_WEIGHTS
    lum = wr * red.astype(np.float64) + wg * green + wb * blue
    note = f"colour image converted to luminance ({wr} R + {wg} G + {wb} B)"
    return lum.astype(np.float32), [note]


def _alpha_note(alpha: np.ndarray) -> list[str]:
    """A warning when an alpha channel is not fully opaque (it is ignored)."""
    if alpha.size and alpha.min() < alpha.max():
        return ["transparency (alpha channel) ignored"]
    return []


def _check_stack_values(stack: np.ndarray, name: str) -> None:
    """Check each image of (N, H, W) is finite and not constant, chunk by chunk."""
    n = len(stack)
    for start in range(0, n, _VALUE_CHUNK):
        chunk = np.asarray(stack[start : start + _VALUE_CHUNK])  # (B, H, W), paged in
        finite = np.isfinite(chunk).all(axis=(1, 2))
        if not finite.all():
            index = start + int(np.argmin(finite))
            raise InvalidImageError(name, f"image {index} of {n} has NaN or infinite pixels")
        constant = chunk.min(axis=(1, 2)) == chunk.max(axis=(1, 2))
        if constant.any():
            index = start + int(np.argmax(constant))
            raise InvalidImageError(
                name, f"image {index} of {n} is constant: it cannot be min-max scaled"
            )


def _pillow_decoder(formats: list[str]) -> _Decoder:
    def decode(request: _Request) -> _Decoded:
        return _decode_pillow(request, formats)

    return decode


_DECODERS: dict[str, _Decoder] = {
    "npy": _decode_npy,
    "fits": _decode_fits,
    "png": _pillow_decoder(["PNG"]),
    "jpeg": _pillow_decoder(["JPEG", "MPO"]),
    "tiff": _decode_tiff,
}

"""The one image reader: every format and bit depth, and every bad input, from real files."""

import gzip
import io
import logging
import pickle
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from astropy.io import fits
from numpy.lib import format as npy_format
from PIL import Image

from deeplense.errors import ImageTooLargeError, InvalidImageError
from deeplense.imaging import (
    DEFAULT_MAX_PIXELS,
    SUPPORTED_EXTENSIONS,
    decode_image,
    decode_stack,
    is_supported_filename,
    read_image,
    read_stack,
)
from tests.encode import fits_bytes, npy_bytes, tiff_bytes

H, W = 12, 20  # not square, so a swapped axis shows


def ramp(dtype: type = np.float32, high: float = 1.0) -> np.ndarray:
    """(H, W) values 0..high in raster order."""
    return (np.arange(H * W).reshape(H, W) * (high / (H * W - 1))).astype(dtype)


def noisy(seed: int = 0) -> np.ndarray:
    """(64, 64) uint8 noise: compresses badly, so a cut file really lacks pixel data."""
    return np.random.default_rng(seed).integers(0, 256, (64, 64), dtype=np.uint8)


def pil_bytes(array: np.ndarray, fmt: str, **kwargs: Any) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt, **kwargs)
    return buf.getvalue()


@pytest.fixture(params=["path", "bytes"])
def read(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[..., np.ndarray]:
    """read(name, data, **kw): read_image on a file written to disk, or on the bytes."""

    def _read(name: str, data: bytes, **kwargs: Any) -> np.ndarray:
        if request.param == "path":
            path = tmp_path / name
            path.write_bytes(data)
            return read_image(path, **kwargs)
        return read_image(data, filename=name, **kwargs)

    return _read


def assert_refused(read: Callable[..., np.ndarray], name: str, data: bytes, *words: str) -> None:
    """Reading must raise InvalidImageError naming the file and containing `words`."""
    with pytest.raises(InvalidImageError) as info:
        read(name, data)
    message = str(info.value)
    assert name in message
    for word in words:
        assert word in message, message


# --- happy paths -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "array",
    [
        ramp(),
        ramp()[None],  # (1, H, W)
        ramp(np.float64),
        ramp().astype(">f4"),  # big-endian
        np.asfortranarray(ramp()),
        ramp(np.int16, 1000),
        ramp(np.uint8, 255),
    ],
    ids=["2d", "1hw", "float64", "big-endian", "fortran", "int16", "uint8"],
)
def test_npy_is_read_exactly(read: Callable[..., np.ndarray], array: np.ndarray) -> None:
    image = read("img.npy", npy_bytes(array))
    assert image.dtype == np.float32 and image.shape == (H, W)
    np.testing.assert_array_equal(image, np.asarray(array, dtype=np.float32).reshape(H, W))


@pytest.mark.parametrize("name", ["img.fits", "img.fit", "img.fits.gz"])
def test_fits_big_endian_is_converted(read: Callable[..., np.ndarray], name: str) -> None:
    data = fits_bytes(ramp())
    assert fits.getdata(io.BytesIO(data)).dtype.byteorder == ">"  # FITS stores big-endian
    image = read(name, gzip.compress(data) if name.endswith(".gz") else data)
    assert image.dtype == np.dtype(np.float32) and image.dtype.byteorder in "=|<"
    np.testing.assert_array_equal(image, ramp())


def test_fits_image_in_an_extension_and_leading_axis(read: Callable[..., np.ndarray]) -> None:
    np.testing.assert_array_equal(read("ext.fits", fits_bytes(ramp(), extension=True)), ramp())
    np.testing.assert_array_equal(read("cube1.fits", fits_bytes(ramp()[None])), ramp())


def test_fits_integer_data_with_bzero(read: Callable[..., np.ndarray]) -> None:
    unsigned = ramp(np.uint16, 60000)  # astropy stores uint16 as int16 with BZERO = 32768
    np.testing.assert_array_equal(read("u16.fits", fits_bytes(unsigned)), unsigned)


@pytest.mark.parametrize(
    "array", [ramp(np.uint8, 255), ramp(np.uint16, 65535)], ids=["8-bit", "16-bit"]
)
def test_png_grey_bit_depths(read: Callable[..., np.ndarray], array: np.ndarray) -> None:
    image = read("img.png", pil_bytes(array, "PNG"))
    assert image.dtype == np.float32
    np.testing.assert_array_equal(image, array.astype(np.float32))


@pytest.mark.parametrize(
    "array",
    [ramp(np.uint8, 255), ramp(np.uint16, 65535), ramp(np.float32, 3.5)],
    ids=["8-bit", "16-bit", "float"],
)
@pytest.mark.parametrize("name", ["img.tif", "img.tiff"])
def test_tiff_grey_and_float(read: Callable[..., np.ndarray], array: np.ndarray, name: str) -> None:
    np.testing.assert_array_equal(read(name, tiff_bytes(array)), array.astype(np.float32))


def test_jpeg_grey_is_close(read: Callable[..., np.ndarray]) -> None:
    array = ramp(np.uint8, 255)
    image = read("img.jpg", pil_bytes(array, "JPEG", quality=95))
    assert image.shape == (H, W) and image.dtype == np.float32
    assert np.abs(image - array).mean() < 3.0  # lossy, but the same picture


def test_rgb_png_becomes_luminance_with_a_warning(
    read: Callable[..., np.ndarray], caplog: pytest.LogCaptureFixture
) -> None:
    rgb = np.random.default_rng(1).integers(0, 256, (H, W, 3), dtype=np.uint8)
    with caplog.at_level(logging.WARNING, logger="deeplense.imaging"):
        image = read("colour.png", pil_bytes(rgb, "PNG"))
    expected = 0.299 * rgb[..., 0].astype(np.float64) + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
    np.testing.assert_array_equal(image, expected.astype(np.float32))
    assert "colour.png" in caplog.text and "luminance" in caplog.text


def test_decode_image_reports_the_colour_warning_to_the_caller() -> None:
    rgb = np.random.default_rng(2).integers(0, 256, (H, W, 3), dtype=np.uint8)
    decoded = decode_image(pil_bytes(rgb, "PNG"), filename="c.png")
    assert decoded.format == "png"
    assert any("luminance" in w for w in decoded.warnings)
    grey = decode_image(pil_bytes(ramp(np.uint8, 255), "PNG"), filename="g.png")
    assert grey.warnings == ()


def test_grey_saved_as_rgb_is_exact_without_warning() -> None:
    grey = ramp(np.uint8, 255)
    decoded = decode_image(pil_bytes(np.stack([grey] * 3, axis=-1), "PNG"), filename="g.png")
    assert decoded.warnings == ()
    np.testing.assert_array_equal(decoded.pixels, grey)


def test_rgba_png_warns_about_transparency() -> None:
    rgba = np.random.default_rng(3).integers(0, 256, (H, W, 4), dtype=np.uint8)
    decoded = decode_image(pil_bytes(rgba, "PNG"), filename="a.png")
    assert any("luminance" in w for w in decoded.warnings)
    assert any("alpha" in w for w in decoded.warnings)


@pytest.mark.parametrize("fmt", ["rgb.tif", "rgb.jpg", "palette.png"])
def test_other_colour_files_become_luminance(fmt: str) -> None:
    rgb = np.random.default_rng(4).integers(0, 256, (H, W, 3), dtype=np.uint8)
    if fmt == "rgb.tif":
        data = tiff_bytes(rgb, photometric="rgb")
    elif fmt == "rgb.jpg":
        data = pil_bytes(rgb, "JPEG")
    else:
        buf = io.BytesIO()
        Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE).save(buf, "PNG")
        data = buf.getvalue()
    decoded = decode_image(data, filename=fmt)
    assert decoded.pixels.shape == (H, W)
    assert any("luminance" in w for w in decoded.warnings)


def test_content_wins_over_a_wrong_extension() -> None:
    np.testing.assert_array_equal(read_image(npy_bytes(ramp()), filename="really.png"), ramp())


def test_supported_extensions() -> None:
    assert {".npy", ".fits", ".fit", ".fits.gz", ".png", ".tif", ".tiff", ".jpg"} <= set(
        SUPPORTED_EXTENSIONS
    )
    assert is_supported_filename("A.FITS.GZ") and is_supported_filename("x.Png")
    assert not is_supported_filename("x.gz") and not is_supported_filename("x.txt")


# --- stacks ----------------------------------------------------------------------------------


def test_npy_stack_on_disk_is_memory_mapped(tmp_path: Path) -> None:
    stack = np.stack([ramp() * (i + 1) for i in range(3)])  # (3, H, W)
    for shape in [(3, H, W), (3, 1, H, W)]:
        path = tmp_path / f"stack{len(shape)}.npy"
        np.save(path, stack.reshape(shape))
        out = read_stack(path)
        assert isinstance(out, np.memmap) and out.shape == (3, H, W)
        np.testing.assert_array_equal(out, stack)


def test_read_stack_converts_other_dtypes_and_single_images(tmp_path: Path) -> None:
    stack = np.stack([ramp(np.float64) + i for i in range(2)])
    out = read_stack(npy_bytes(stack), filename="s.npy")
    assert out.dtype == np.float32 and out.shape == (2, H, W)
    assert read_stack(npy_bytes(ramp()), filename="one.npy").shape == (1, H, W)
    assert read_stack(pil_bytes(ramp(np.uint8, 255), "PNG"), filename="one.png").shape == (1, H, W)


def test_fits_cube_and_multipage_tiff_are_stacks() -> None:
    stack = np.stack([ramp() + i for i in range(4)])
    np.testing.assert_array_equal(read_stack(fits_bytes(stack), filename="c.fits"), stack)
    tiff = tiff_bytes(stack, photometric="minisblack")
    np.testing.assert_array_equal(read_stack(tiff, filename="c.tif"), stack)
    assert decode_stack(tiff, filename="c.tif").format == "tiff"


def test_read_stack_names_the_bad_image() -> None:
    stack = np.stack([ramp() + i for i in range(4)])
    stack[2, 3, 4] = np.nan
    with pytest.raises(InvalidImageError, match="image 2 of 4 has NaN"):
        read_stack(npy_bytes(stack), filename="s.npy")
    stack[2] = 5.0
    with pytest.raises(InvalidImageError, match="image 2 of 4 is constant"):
        read_stack(npy_bytes(stack), filename="s.npy")
    assert read_stack(npy_bytes(stack), filename="s.npy", check_values=False).shape == (4, H, W)


def test_read_stack_caps_pixels_per_image() -> None:
    stack = np.stack([ramp() + i for i in range(4)])
    with pytest.raises(ImageTooLargeError):
        read_stack(npy_bytes(stack), filename="s.npy", max_pixels=H * W - 1)
    assert read_stack(npy_bytes(stack), filename="s.npy", max_pixels=H * W).shape == (4, H, W)


# --- bad inputs: one test (or case) per problem ----------------------------------------------


def test_unknown_format_lists_supported_formats(read: Callable[..., np.ndarray]) -> None:
    assert_refused(read, "notes.txt", b"hello, world\n", "unknown format", "FITS", "PNG", ".npy")
    bmp = pil_bytes(ramp(np.uint8, 255), "BMP")
    assert_refused(read, "image.bmp", bmp, "unknown format")
    assert_refused(read, "data.npz.gz", gzip.compress(b"not fits at all"), "not FITS")


@pytest.mark.parametrize("name", ["garbage.png", "garbage.npy", "garbage.fits", "garbage.tif"])
def test_garbage_with_a_known_extension_is_corrupt(
    read: Callable[..., np.ndarray], name: str
) -> None:
    assert_refused(read, name, b"\x00\x01 definitely not an image " * 4, "corrupt")


def test_corrupt_fits_header(read: Callable[..., np.ndarray]) -> None:
    assert_refused(read, "bad.fits", b"SIMPLE  = garbage" * 10, "corrupt", "FITS")


TRUNCATED = {
    "cut.npy": lambda: npy_bytes(noisy().astype(np.float32)),
    "cut.fits": lambda: fits_bytes(noisy().astype(np.float32)),
    "cut.fits.gz": lambda: gzip.compress(fits_bytes(noisy().astype(np.float32))),
    "cut.png": lambda: pil_bytes(noisy(), "PNG"),
    "cut.jpg": lambda: pil_bytes(noisy(), "JPEG"),
    "cut.tif": lambda: tiff_bytes(noisy()),
    "cut_zlib.tif": lambda: tiff_bytes(noisy(), compression="zlib"),
}


@pytest.mark.filterwarnings("ignore:File may have been truncated")
@pytest.mark.parametrize("name", sorted(TRUNCATED))
def test_truncated_file_is_refused(read: Callable[..., np.ndarray], name: str) -> None:
    data = TRUNCATED[name]()
    read(name, data)  # the whole file reads
    assert_refused(read, name, data[: len(data) // 2], "truncated")


def test_pickled_npy_is_refused(read: Callable[..., np.ndarray]) -> None:
    buf = io.BytesIO()
    np.save(buf, np.array([ramp(), 1], dtype=object), allow_pickle=True)  # DeepLense-style
    assert_refused(read, "objects.npy", buf.getvalue(), "pickled .npy files are refused")
    raw_pickle = pickle.dumps(ramp())
    assert_refused(read, "raw.npy", raw_pickle, "pickled .npy files are refused")


@pytest.mark.parametrize(
    "array",
    [np.arange(5.0), np.float32(3.0), np.zeros((2, 3, H, W), np.float32)],
    ids=["1-d", "0-d", "4-d"],
)
def test_not_2d_is_refused(read: Callable[..., np.ndarray], array: np.ndarray) -> None:
    assert_refused(read, "shape.npy", npy_bytes(np.asarray(array)), "not a 2-D image")


def test_stack_in_a_single_read_says_how_many(read: Callable[..., np.ndarray]) -> None:
    stack = np.stack([ramp() + i for i in range(3)])
    assert_refused(read, "s.npy", npy_bytes(stack), "holds 3 images")
    assert_refused(read, "s.npy", npy_bytes(stack[:, None]), "holds 3 images")
    assert_refused(read, "s.fits", fits_bytes(stack), "holds 3 images")
    assert_refused(read, "s.tif", tiff_bytes(stack, photometric="minisblack"), "holds 3 images")


def test_empty_is_refused(read: Callable[..., np.ndarray]) -> None:
    assert_refused(read, "empty.npy", npy_bytes(np.zeros((0, 5), np.float32)), "empty image")
    assert_refused(read, "zero.png", b"", "empty file")
    assert_refused(read, "nodata.fits", fits_bytes(None), "no image data")


FORMATS = [
    ("a.npy", lambda a: npy_bytes(a)),
    ("a.fits", lambda a: fits_bytes(a)),
    ("a.tif", lambda a: tiff_bytes(a)),
]


@pytest.mark.parametrize(("name", "make"), FORMATS)
@pytest.mark.parametrize("bad", [np.inf, -np.inf])
def test_infinite_pixels_are_refused(
    read: Callable[..., np.ndarray], name: str, make: Callable[[np.ndarray], bytes], bad: float
) -> None:
    array = ramp()
    array[3, 7] = bad
    assert_refused(read, name, make(array), "infinite pixels")


@pytest.mark.parametrize(("name", "make"), FORMATS)
def test_nan_pixels_are_kept_as_a_mask(
    read: Callable[..., np.ndarray], name: str, make: Callable[[np.ndarray], bytes]
) -> None:
    array = ramp()
    array[:, 7] = np.nan  # a masked column, as a real cutout has
    pixels = read(name, make(array))
    assert np.isnan(pixels[:, 7]).all() and np.isfinite(np.delete(pixels, 7, axis=1)).all()


def test_an_image_with_only_nan_pixels_is_refused(read: Callable[..., np.ndarray]) -> None:
    array = np.full((H, W), np.nan, np.float32)
    assert_refused(read, "void.npy", npy_bytes(array), "only NaN")


def test_float64_beyond_float32_is_scaled_to_fit(read: Callable[..., np.ndarray]) -> None:
    # Issue 20 (low): 1e300 is finite; it was cast to an infinite float32 and refused.
    array = ramp(np.float64)
    array[0, 0] = 1e300
    pixels = read("huge.npy", npy_bytes(array))
    assert np.all(np.isfinite(pixels)) and float(pixels[0, 0]) == float(pixels.max())


def test_constant_image_is_refused(read: Callable[..., np.ndarray]) -> None:
    assert_refused(read, "flat.npy", npy_bytes(np.full((H, W), 0.5, np.float32)), "constant")
    assert_refused(read, "flat.png", pil_bytes(np.full((H, W), 7, np.uint8), "PNG"), "constant")


def test_complex_pixels_are_refused(read: Callable[..., np.ndarray]) -> None:
    complex_image = npy_bytes(ramp().astype(np.complex64))
    assert_refused(read, "c.npy", complex_image, "unsupported pixel type")


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("big.npy", npy_bytes(ramp())),
        ("big.fits", fits_bytes(ramp())),
        ("big.png", pil_bytes(ramp(np.uint8, 255), "PNG")),
        ("big.jpg", pil_bytes(ramp(np.uint8, 255), "JPEG")),
        ("big.tif", tiff_bytes(ramp())),
    ],
    ids=["npy", "fits", "png", "jpeg", "tiff"],
)
def test_more_pixels_than_the_cap_is_refused(
    read: Callable[..., np.ndarray], name: str, data: bytes
) -> None:
    with pytest.raises(ImageTooLargeError, match=f"{name}.*more than the limit of {H * W - 1}"):
        read(name, data, max_pixels=H * W - 1)
    assert read(name, data, max_pixels=H * W).shape == (H, W)


def npy_header_only(shape: tuple[int, ...]) -> bytes:
    """A .npy header promising `shape` float32 pixels, followed by no data at all."""
    buf = io.BytesIO()
    header = {"descr": "<f4", "fortran_order": False, "shape": shape}
    npy_format.write_array_header_1_0(buf, header)
    return buf.getvalue()


def fits_header_only(width: int, height: int) -> bytes:
    header = fits.Header([("SIMPLE", True), ("BITPIX", -32), ("NAXIS", 2)])
    header["NAXIS1"], header["NAXIS2"] = width, height
    return header.tostring().encode("ascii")


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height and whose IDAT holds a few bytes."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.mark.filterwarnings("ignore:File may have been truncated")
@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("bomb.npy", npy_header_only((100_000, 100_000))),
        ("bomb.fits", fits_header_only(100_000, 100_000)),
        ("bomb.png", png_header_only(5_000, 5_000)),  # under Pillow's own limit, over ours
    ],
    ids=["npy", "fits", "png"],
)
def test_size_is_checked_from_the_header_before_decoding(
    read: Callable[..., np.ndarray], name: str, data: bytes
) -> None:
    """The files hold (almost) no pixel data: only a header check can call them too large."""
    with pytest.raises(ImageTooLargeError, match=f"{name}.*limit of {DEFAULT_MAX_PIXELS}"):
        read(name, data)


def test_header_only_npy_under_the_cap_is_truncated(read: Callable[..., np.ndarray]) -> None:
    assert_refused(read, "short.npy", npy_header_only((H, W)), "truncated")


def test_pillow_decompression_bomb_error_maps_to_our_error(
    read: Callable[..., np.ndarray],
) -> None:
    """With our cap raised above Pillow's own limit, Pillow's error still becomes ours."""
    with pytest.raises(ImageTooLargeError, match="bomb.png"):
        read("bomb.png", png_header_only(100_000, 100_000), max_pixels=10**12)


def test_missing_file_and_folder_are_refused(tmp_path: Path) -> None:
    for path in [tmp_path / "nope.fits", tmp_path]:
        with pytest.raises(InvalidImageError, match="cannot read file") as info:
            read_image(path)
        assert str(path) in str(info.value)

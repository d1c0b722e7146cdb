"""Regression tests for the decoder defects of issue 12 (D1-D5 and the smaller findings),
each from a file made here. Every case must end quickly with our one error naming the file."""

import gzip
import io
import re
import time
import tracemalloc
import warnings
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import tifffile
from astropy.io import fits

from deeplense.bounded import (
    InflateLimitError,
    _bounded_packbits_decode,
    bounded_decoding,
    inflate_gzip,
)
from deeplense.errors import ImageTooLargeError, InvalidImageError
from deeplense.imaging import decode_image, decode_stack, inflate_limit, read_image
from tests.encode import fits_bytes, npy_bytes, tiff_bytes

CARD = 80  # bytes per FITS header card
BLOCK = 2880  # bytes per FITS block


def card(text: str) -> bytes:
    return text.ljust(CARD).encode("ascii")


def ramp(h: int = 16, w: int = 16) -> np.ndarray:
    return np.arange(h * w, dtype=np.float32).reshape(h, w)


def refused(data: bytes, name: str, **kwargs: object) -> InvalidImageError:
    """The error of decoding `data` as `name`; it must come within a few seconds."""
    start = time.perf_counter()
    with pytest.raises(InvalidImageError) as info:
        decode_image(data, filename=name, **kwargs)  # type: ignore[arg-type]
    assert time.perf_counter() - start < 5.0
    message = str(info.value)
    assert message.startswith(f"{name}: ")
    assert not re.search(r"0x[0-9a-f]{6,}", message), message  # no object reprs
    return info.value


def test_d1_gzipped_fits_whose_first_card_is_not_simple_t_ends(tmp_path: Path) -> None:
    # SIMPLE = F on a real image, gzipped: astropy's gzip reader looped forever on it.
    real = fits_bytes(ramp(64, 64))
    data = gzip.compress(card("SIMPLE  =                    F") + real[CARD:])
    refused(data, "d1.fits.gz")
    path = tmp_path / "d1.fits.gz"  # the `score` CLI reads paths
    path.write_bytes(data)
    with pytest.raises(InvalidImageError):
        decode_stack(path)


def test_d1_bit_flipped_gzipped_fits_ends() -> None:
    real = bytearray(fits_bytes(ramp(64, 64)))
    for i in range(0, 4 * CARD, 7):  # flip bits all over the first cards
        real[i] ^= 0x20
    real[:9] = b"SIMPLE  ="  # still sniffed as FITS
    refused(gzip.compress(bytes(real)), "flipped.fits.gz")


def test_d2_corrupt_deflate_stream_is_our_error_not_zlib_error() -> None:
    compressed = bytearray(gzip.compress(fits_bytes(ramp(64, 64))))
    compressed[20:60] = b"\xff" * 40  # the deflate stream, after the 10-byte gzip header
    error = refused(bytes(compressed), "d2.fits.gz")
    assert "gzip" in error.problem


def test_d2_truncated_gzip_is_our_error() -> None:
    compressed = gzip.compress(fits_bytes(ramp(64, 64)))
    assert "truncated" in refused(compressed[: len(compressed) // 2], "cut.fits.gz").problem


def _tiff_with_tags(tmp_path: Path, **tags: int) -> bytes:
    path = tmp_path / "t.tif"
    tifffile.imwrite(path, np.zeros((8, 8, 3), np.uint8), photometric="rgb")
    with tifffile.TiffFile(path, mode="r+") as tif:
        for name, value in tags.items():
            tif.pages[0].tags[name].overwrite(value)
    return path.read_bytes()


def test_d3_tiff_declaring_65535_samples_per_pixel_is_refused(tmp_path: Path) -> None:
    data = _tiff_with_tags(tmp_path, SamplesPerPixel=65535, ImageWidth=4096, ImageLength=4096)
    assert len(data) < 16 * 1024
    refused(data, "d3.tif")


def test_d3_decoded_size_counts_samples_per_pixel() -> None:
    # 64 x 64 pixels of 64 uint8 samples: 256 KiB decoded, over 8 bytes per pixel of the cap.
    data = tiff_bytes(
        np.ones((64, 64, 64), np.uint8), photometric="minisblack", planarconfig="contig"
    )
    error = refused(data, "samples.tif", max_pixels=64 * 64)
    assert isinstance(error, ImageTooLargeError)
    assert "bytes" in error.problem


def test_d4_gzip_bomb_stops_at_the_cap() -> None:
    # A valid 4 x 4 header, then 64 MiB of zeros: about 64 KB compressed.
    header = fits_bytes(ramp(4, 4))[:BLOCK]
    bomb = gzip.compress(header + bytes(64 << 20), 9)
    assert len(bomb) < 100_000
    error = refused(bomb, "d4.fits.gz", max_pixels=64 * 64)
    assert isinstance(error, ImageTooLargeError)
    assert str(inflate_limit(64 * 64, single=True)) in error.problem


def test_inflate_never_returns_more_than_the_cap() -> None:
    data = gzip.compress(bytes(10_000))
    assert len(inflate_gzip(data, 10_000)) == 10_000
    with pytest.raises(ValueError, match="more than 9999 bytes"):
        inflate_gzip(data, 9_999)
    two_members = data + gzip.compress(b"abc")
    assert inflate_gzip(two_members, 20_000) == bytes(10_000) + b"abc"


def test_d5_header_of_many_invalid_cards_is_cheap() -> None:
    # 2,000 cards with lower-case keywords (160 KB of header): astropy warned about each
    # before our filter was set, 8 CPU-s on the machine where it was measured.
    cards = b"".join(card(f"bad{i:05d} = 1") for i in range(2_000))
    header = b"".join(
        card(c)
        for c in (
            "SIMPLE  =                    T",
            "BITPIX  =                  -32",
            "NAXIS   =                    2",
            "NAXIS1  =                    4",
            "NAXIS2  =                    4",
        )
    )
    header += cards + card("END")
    header = header.ljust(-(-len(header) // BLOCK) * BLOCK)
    data = header + ramp(4, 4).astype(">f4").tobytes().ljust(BLOCK, b"\0")
    start = time.process_time()
    with no_warnings():
        pixels = read_image(data, filename="d5.fits")
    assert time.process_time() - start < 2.0  # measured 0.02 s, 8 s before the fix
    np.testing.assert_array_equal(pixels, ramp(4, 4))


@contextmanager
def no_warnings() -> Iterator[None]:
    """Fail when a warning escapes the block."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    assert not caught, [str(w.message) for w in caught]


def test_tiff_deflate_bomb_inflates_no_further_than_the_page() -> None:
    # A deflate strip that inflates to 64 MiB while the page declares 64 x 64 bytes.
    data = bytearray(tiff_bytes(np.ones((64, 64), np.uint8), compression="zlib"))
    with tifffile.TiffFile(io.BytesIO(bytes(data))) as tif:
        page = tif.pages.first
        offset, count = page.dataoffsets[0], page.databytecounts[0]
    bomb = zlib.compress(bytes(64 << 20), 9)
    patched = bytes(data[:offset]) + bomb + bytes(data[offset + count :])
    buf = io.BytesIO(patched)
    with tifffile.TiffFile(buf) as tif:
        tif.pages.first.tags["StripByteCounts"].overwrite(len(bomb))
    tracemalloc.start()
    try:
        error = refused(buf.getvalue(), "bomb.tif")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "constant image" in error.problem  # the page's 4096 bytes, all zero
    assert peak < 8 << 20, peak  # never the 64 MiB the strip inflates to


def test_tiff_compressions_outside_the_bounded_set_are_refused() -> None:
    data = tiff_bytes(
        np.ones((16, 16), np.uint8) * np.arange(16, dtype=np.uint8), compression="lzma"
    )
    assert "unsupported TIFF compression LZMA" in refused(data, "lzma.tif").problem


def test_tiff_deflate_still_reads_exactly() -> None:
    image = (np.arange(64 * 64) % 251).astype(np.uint8).reshape(64, 64)
    data = tiff_bytes(image, compression="zlib")
    np.testing.assert_array_equal(read_image(data, filename="ok.tif"), image)


def test_bounded_packbits_decodes_the_tiff_spec_example_and_stops_at_the_size() -> None:
    # TIFF 6.0 section 9's example (tifffile writes no PackBits without imagecodecs).
    encoded = b"\xfe\xaa\x02\x80\x00\x2a\xfd\xaa\x03\x80\x00\x2a\x22\xf7\xaa"
    expected = b"\xaa\xaa\xaa\x80\x00\x2a\xaa\xaa\xaa\xaa\x80\x00\x2a\x22" + b"\xaa" * 10
    assert _bounded_packbits_decode(encoded, out=24) == expected
    assert _bounded_packbits_decode(b"\x81\x00" * 1000, out=100) == bytes(100)  # 128 per pair


OME = """<?xml version="1.0" encoding="UTF-8"?>
<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06" UUID="urn:uuid:{own}">
<Image ID="Image:0"><Pixels ID="Pixels:0" DimensionOrder="XYCZT" Type="uint8"
 SizeX="8" SizeY="8" SizeC="1" SizeZ="2" SizeT="1">
<Channel ID="Channel:0:0" SamplesPerPixel="1"/>
<TiffData IFD="0" FirstZ="0" PlaneCount="1"><UUID FileName="main.ome.tif">urn:uuid:1</UUID>
</TiffData>
<TiffData IFD="0" FirstZ="1" PlaneCount="1"><UUID FileName="other.ome.tif">urn:uuid:2</UUID>
</TiffData>
</Pixels></Image></OME>"""


def test_ome_tiff_references_to_other_files_are_not_followed(tmp_path: Path) -> None:
    image = np.arange(64, dtype=np.uint8).reshape(8, 8)
    for name, own, pixels in (("main", 1, image), ("other", 2, image[::-1].copy())):
        tifffile.imwrite(
            tmp_path / f"{name}.ome.tif", pixels, description=OME.format(own=own), metadata=None
        )
    # Followed, the series would be 2 planes (this file and other.ome.tif): "holds 2 images".
    np.testing.assert_array_equal(read_image(tmp_path / "main.ome.tif"), image)


def test_library_messages_carry_no_object_reprs() -> None:
    # A TIFF header with an IFD offset past the end: tifffile names the stream object.
    data = b"II*\x00" + (10_000).to_bytes(4, "little") + bytes(8)
    refused(data, "ifd.tif")


def test_gzip_tiles_of_compressed_fits_inflate_within_the_cap() -> None:
    from astropy.io.fits.hdu.compressed._codecs import Gzip1, Gzip2

    bomb = gzip.compress(bytes(4 << 20), 9)  # a 4 MiB tile in about 4 KB
    for codec in (Gzip1(), Gzip2(itemsize=4)):
        with bounded_decoding(64 * 64 * 8), pytest.raises(ValueError, match="more than"):
            codec.decode(bomb)


def test_outside_our_decoding_other_readers_use_the_libraries_codecs_unchanged() -> None:
    # Importing deeplense.imaging must not change how another reader in the same process
    # decodes: outside bounded_decoding a large gzip FITS tile and a deflate TIFF inflate.
    from astropy.io.fits.hdu.compressed._codecs import Gzip1

    import deeplense.imaging  # noqa: F401  (installs the hooks)

    tile = gzip.compress(bytes(4 << 20), 9)
    assert len(Gzip1().decode(tile)) == 4 << 20
    image = np.arange(256 * 256, dtype=np.uint16).reshape(256, 256)
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, image, compression="zlib")
    np.testing.assert_array_equal(tifffile.imread(io.BytesIO(buffer.getvalue())), image)


@pytest.mark.parametrize("compression", ["GZIP_1", "GZIP_2", "RICE_1"])
def test_tile_compressed_fits_still_reads(compression: str) -> None:
    image = np.random.default_rng(0).random((64, 80)).astype(np.float32)
    levels = {"RICE_1": 16}  # RICE quantises floats; the GZIPs keep them exactly
    hdu = fits.CompImageHDU(
        image, compression_type=compression, quantize_level=levels.get(compression, 0)
    )
    buf = io.BytesIO()
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(buf)
    pixels = read_image(buf.getvalue(), filename="a.fz")
    np.testing.assert_allclose(pixels, image, atol=0.02 if compression == "RICE_1" else 0)


def test_many_gzip_members_inflate_in_order_with_what_follows() -> None:
    # A .fits.gz made of thousands of empty members, then the content, then junk (ignored,
    # as gzip does). Read in place, member after member (issue 20, D4: it was quadratic).
    members = gzip.compress(b"") * 5000 + gzip.compress(b"abc" * 10) + gzip.compress(b"!")
    assert inflate_gzip(members + b"junk", 1000) == b"abc" * 10 + b"!"
    with pytest.raises(InflateLimitError):
        inflate_gzip(members, 30)


def alternating_tiff(n_pages: int) -> bytes:
    """A TIFF whose `n_pages` pages alternate between 2 x 2 and 3 x 2 (issue 20, D4)."""
    buffer = io.BytesIO()
    with tifffile.TiffWriter(buffer) as writer:
        for i in range(n_pages):
            writer.write(np.zeros((2, 2) if i % 2 == 0 else (3, 2), np.uint8), contiguous=False)
    return buffer.getvalue()


def test_tiff_pages_of_alternating_shapes_are_refused_from_their_tags(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # tifffile builds the series of such pages in time quadratic in their number: the
    # refusal must come from the page tags, before any series is built.
    def no_series(self: tifffile.TiffFile) -> list[object]:
        raise AssertionError("series built for a TIFF of mixed page shapes")

    monkeypatch.setattr(tifffile.TiffFile, "series", property(no_series))
    data = alternating_tiff(2000)
    for decode in (decode_image, decode_stack):
        with pytest.raises(InvalidImageError, match="pages of different shapes"):
            decode(data, filename="alt.tif")


def test_a_single_image_reader_refuses_a_many_page_tiff_before_its_series(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    buffer = io.BytesIO()
    with tifffile.TiffWriter(buffer) as writer:
        for _ in range(3000):  # each page its own series: quadratic to assemble
            writer.write(np.zeros((2, 2), np.uint8), contiguous=False)

    def no_series(self: tifffile.TiffFile) -> list[object]:
        raise AssertionError("series built")

    monkeypatch.setattr(tifffile.TiffFile, "series", property(no_series))
    with pytest.raises(InvalidImageError, match="holds more than 1000 images"):
        decode_image(buffer.getvalue(), filename="many.tif")


def test_finite_float64_beyond_float32_is_scaled_not_refused() -> None:
    # Issue 20 (low): 1e300 is finite; casting it to float32 made it infinite and refused.
    image = ramp().astype(np.float64) * 1e298  # up to 2.55e300
    for name, data in (("big.npy", npy_bytes(image)), ("big.fits", fits_bytes(image))):
        decoded = decode_image(data, filename=name)
        assert np.all(np.isfinite(decoded.pixels)) and decoded.pixels.max() > 0
        assert any("to fit float32" in w for w in decoded.warnings)
        scaled = (decoded.pixels - decoded.pixels.min()) / np.ptp(decoded.pixels)
        np.testing.assert_allclose(scaled, ramp() / ramp().max(), atol=1e-6)
    tiny = ramp().astype(np.float64) * 1e-300  # would flush to zero: a "constant" image
    assert np.ptp(decode_image(npy_bytes(tiny), filename="tiny.npy").pixels) > 0
    usual = decode_image(npy_bytes(ramp().astype(np.float64)), filename="usual.npy")
    assert usual.warnings == ()  # ordinary float64 images are read as before


def test_a_scaled_fits_image_scales_its_noise_map_alike() -> None:
    image = ramp().astype(np.float64) * 1e298
    hdus = fits.HDUList(
        [
            fits.PrimaryHDU(image),
            fits.ImageHDU(np.full_like(image, 2e297), name="ERR"),
        ]
    )
    buffer = io.BytesIO()
    hdus.writeto(buffer)
    decoded = decode_image(buffer.getvalue(), filename="noisy.fits")
    assert decoded.extras is not None and decoded.extras.noise is not None
    ratio = decoded.extras.noise / 2e297
    factor = float(decoded.pixels.max()) / float(image.max())
    np.testing.assert_allclose(ratio, factor, rtol=1e-6)

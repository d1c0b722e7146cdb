"""Decompression with a byte cap: no compressed input expands past the size we allow.

Used by `deeplense.imaging` for gzip-compressed FITS (inflated here, the decoder gets plain
bytes), through tifffile's codec table for deflate and PackBits TIFF strips and tiles, and
through astropy's tile codecs for GZIP_1 and GZIP_2 tile-compressed FITS (.fz).
A stream that would inflate past its cap stops at the cap, so a decompression bomb costs at
most the cap in memory and the time to inflate it.
"""

import re
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import tifffile

_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 20  # compressed bytes fed to zlib at a time, at most
_FIRST_CHUNK = 1 << 12  # a member's first feed; each next one doubles up to _CHUNK
_OBJECT_REPR = re.compile(r"<[^<>]*? at 0x[0-9a-fA-F]+>")
_MAX_MESSAGE = 200  # characters of a library's message kept in ours


class InflateError(ValueError):
    """A compressed stream is corrupt or truncated (message without object reprs)."""


class InflateLimitError(InflateError):
    """A compressed stream inflates to more than its cap."""


def inflate_gzip(data: bytes, limit: int) -> bytes:
    """The content of a gzip file (one or more members), at most `limit` bytes.

    Raises InflateLimitError when the content is longer than `limit` (found after inflating
    `limit + 1` bytes, never more), InflateError when the stream is corrupt or truncated.
    Bytes after the last member that do not start another member are ignored, as gzip does.
    """
    out = bytearray()
    view = memoryview(data)
    start = 0  # where the current member begins; members are read in place (no copies of
    # the rest of the file per member: a file of many empty members stays linear)
    while bytes(view[start : start + 2]) == _GZIP_MAGIC:
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)  # gzip header and trailer
        pos, size = start, _FIRST_CHUNK
        while not inflater.eof:
            feed: bytes | memoryview
            if inflater.unconsumed_tail:
                feed = inflater.unconsumed_tail
            elif pos < len(view):
                # Growing feeds: a small member leaves at most a small unused rest to copy.
                feed, pos, size = view[pos : pos + size], pos + size, min(2 * size, _CHUNK)
            else:
                raise InflateError("truncated gzip stream (it ends before its last block)")
            try:
                out += inflater.decompress(feed, limit + 1 - len(out))
            except zlib.error as exc:
                raise InflateError(f"corrupt gzip stream ({clean_message(exc)})") from None
            if len(out) > limit:
                raise InflateLimitError(f"inflates to more than {limit} bytes")
        # Every byte before `pos` went to this member's inflater; what it did not use is the
        # start of the next member.
        start = min(pos, len(view)) - len(inflater.unused_data) - len(inflater.unconsumed_tail)
    return bytes(out)


def clean_message(exc: BaseException) -> str:
    """A library exception's message for users: object reprs removed, length capped."""
    text = _OBJECT_REPR.sub("the file", str(exc)).strip() or type(exc).__name__
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."


def _bounded_zlib_decode(data: bytes, /, *, out: Any = None) -> bytes:
    # tifffile passes the segment's decoded size in bytes as `out`: inflate no more.
    if not isinstance(out, int):
        raise ValueError("deflate TIFF segment without a known decoded size")
    try:
        return zlib.decompressobj().decompress(bytes(data), out)
    except zlib.error as exc:
        raise ValueError(f"corrupt deflate data ({clean_message(exc)})") from None


def _bounded_packbits_decode(encoded: bytes, /, *, out: Any = None) -> bytes:
    # PackBits (TIFF 6.0, section 9): header byte n; 0..127 copy n + 1 bytes, 129..255
    # repeat the next byte 257 - n times, 128 no-op. Stops at the segment's decoded size.
    if not isinstance(out, int):
        raise ValueError("PackBits TIFF segment without a known decoded size")
    data = bytes(encoded)
    result = bytearray()
    i = 0
    while i < len(data) and len(result) < out:
        n = data[i]
        i += 1
        if n < 128:
            result += data[i : i + n + 1]
            i += n + 1
        elif n > 128:
            result += data[i : i + 1] * (257 - n)
            i += 1
    return bytes(result[:out])


_TIFF_BOUNDED: dict[int, Callable[..., bytes]] = {
    8: _bounded_zlib_decode,  # ADOBE_DEFLATE
    32946: _bounded_zlib_decode,  # DEFLATE
    32773: _bounded_packbits_decode,  # PACKBITS
}

# The inflate cap of the decode running in this context (thread or task), set by
# `bounded_decoding`; None outside it, where the libraries' own codecs run unchanged.
_LIMIT: ContextVar[int | None] = ContextVar("bounded_decoding_limit", default=None)


@contextmanager
def bounded_decoding(limit: int) -> Iterator[None]:
    """Within the block (this thread or task only), TIFF segments inflate to no more than
    their declared size and gzip-compressed FITS tiles to at most `limit` bytes. Outside it,
    tifffile and astropy decode as they always do: other readers in the process are
    untouched."""
    token = _LIMIT.set(limit)
    try:
        yield
    finally:
        _LIMIT.reset(token)


def _dispatching(
    bounded: Callable[..., bytes], original: Callable[..., bytes]
) -> Callable[..., bytes]:
    def decode(data: bytes, /, *args: Any, **kwargs: Any) -> bytes:
        if _LIMIT.get() is None:
            return original(data, *args, **kwargs)
        return bounded(data, *args, **kwargs)

    return decode


def install_tiff_codecs() -> frozenset[int]:
    """Route tifffile's deflate and PackBits decoding through the caps above inside
    `bounded_decoding`; the TIFF compression codes that are safe to decode there (always
    NONE = 1).

    tifffile's own fallbacks (without the imagecodecs package) inflate without a bound.
    Its codec table caches decoders in `_codecs`; when that ever changes, only uncompressed
    TIFFs stay accepted (fail closed).
    """
    table = tifffile.TIFF.DECOMPRESSORS
    codecs = getattr(table, "_codecs", None)
    if not isinstance(codecs, dict):
        return frozenset({1})
    for code, bounded in _TIFF_BOUNDED.items():
        try:
            original = table[code]
        except (KeyError, ValueError, ImportError):
            original = bounded
        if getattr(original, "__wrapped_bounded__", False):  # installed already
            continue
        hook = _dispatching(bounded, original)
        hook.__wrapped_bounded__ = True  # type: ignore[attr-defined]
        codecs[code] = hook
    return frozenset({1, *_TIFF_BOUNDED})


def _bounded_tile_gunzip(data: bytes) -> bytes:
    # Stands in for gzip.decompress inside astropy's GZIP_1 / GZIP_2 tile codecs.
    limit = _LIMIT.get()
    assert limit is not None  # only called inside bounded_decoding (_dispatching)
    try:
        return inflate_gzip(data, limit)
    except InflateError as exc:
        raise ValueError(f"compressed FITS tile: {exc}") from None


def install_fits_tile_codecs() -> bool:
    """Route astropy's GZIP_1 / GZIP_2 FITS tile inflation through `inflate_gzip` inside
    `bounded_decoding`; whether that took (False: the caller must refuse those tiles,
    failing closed).

    astropy's codecs call the module's `gzip_decompress` (gzip.decompress, no bound).
    """
    try:
        from astropy.io.fits.hdu.compressed import _codecs
    except ImportError:
        return False
    original = getattr(_codecs, "gzip_decompress", None)
    if not callable(original):
        return False
    if not getattr(original, "__wrapped_bounded__", False):
        hook = _dispatching(_bounded_tile_gunzip, original)
        hook.__wrapped_bounded__ = True  # type: ignore[attr-defined]
        _codecs.gzip_decompress = hook
    return True

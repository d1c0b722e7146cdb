"""A seeded, bounded mutation fuzzer over real image files, for the decoder fuzz tests.

Seeds are the example files (examples/*.fits, .npy, .png) plus TIFF, JPEG and .fits.gz
versions of one of them. Each case applies one to three mutations: bit flips, byte
overwrites, truncation, appended junk, FITS card edits (huge NAXISn, odd BITPIX, SIMPLE = F,
lower-case keys), .npy header edits (huge shapes, odd dtypes), PNG IHDR and TIFF tag edits
(huge sizes, samples per pixel), gzip compression of the result, and a wrong extension.
The same seed always gives the same cases; `python -m tests.fuzzing N SEED OUT` writes them
out to reproduce a failure.
"""

import gzip
import io
import re
import struct
import sys
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = REPO_ROOT / "examples"
EXTENSIONS = [".fits", ".fits.gz", ".npy", ".png", ".tif", ".jpg", ".txt", ""]
HUGE = [0, 1, 2**15, 2**16 - 1, 2**31 - 1, 2**32 - 1, 10**9, 2**63 - 1]

Mutation = Callable[[bytes, np.random.Generator], bytes]


def seeds() -> list[tuple[str, bytes]]:
    """(name, bytes) of the example files and TIFF/JPEG/gzip versions of one of them."""
    found = [
        (p.name, p.read_bytes())
        for p in sorted(EXAMPLES.rglob("*"))
        if p.is_file() and p.suffix != ".py"
    ]
    image = np.load(EXAMPLES / "no_sub_0.npy", allow_pickle=False)
    grey = np.clip(image.reshape(image.shape[-2:]) * 255, 0, 255).astype(np.uint8)
    for name, fmt, kwargs in (
        ("grey.tif", "TIFF", {}),
        ("deflate.tif", "TIFF", {"compression": "tiff_adobe_deflate"}),
        ("grey.jpg", "JPEG", {"quality": 90}),
        ("rgb.png", "PNG", {}),
    ):
        pixels = np.stack([grey, grey[::-1], grey.T], axis=-1) if name == "rgb.png" else grey
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format=fmt, **kwargs)
        found.append((name, buf.getvalue()))
    buf = io.BytesIO()
    stack = np.stack([image.reshape(grey.shape)] * 3).astype(np.float32)
    tifffile.imwrite(buf, stack, photometric="minisblack")
    found.append(("stack.tif", buf.getvalue()))
    fits = (EXAMPLES / "no_sub_0.fits").read_bytes()
    found.append(("no_sub_0.fits.gz", gzip.compress(fits, mtime=0)))
    return found


def _flip_bits(data: bytes, rng: np.random.Generator) -> bytes:
    out = bytearray(data)
    for _ in range(int(rng.integers(1, 9))):
        # Mostly in the first 4 KB, where the headers are.
        pos = int(rng.integers(0, min(len(out), 4096 if rng.random() < 0.8 else len(out))))
        out[pos] ^= 1 << int(rng.integers(0, 8))
    return bytes(out)


def _overwrite(data: bytes, rng: np.random.Generator) -> bytes:
    out = bytearray(data)
    pos = int(rng.integers(0, min(len(out), 2048)))
    value = bytes([int(rng.choice([0x00, 0xFF, 0x7F, 0x80, 0x20]))]) * int(rng.integers(1, 16))
    out[pos : pos + len(value)] = value
    return bytes(out)


def _truncate(data: bytes, rng: np.random.Generator) -> bytes:
    return data[: int(rng.integers(0, len(data)))]


def _append(data: bytes, rng: np.random.Generator) -> bytes:
    return data + rng.bytes(int(rng.integers(1, 4096)))


def _fits_card(data: bytes, rng: np.random.Generator) -> bytes:
    if not data.startswith(b"SIMPLE"):
        return _flip_bits(data, rng)
    edits = [
        (rb"NAXIS1  = +\d+", f"NAXIS1  = {int(rng.choice(HUGE)):20d}"),
        (rb"NAXIS2  = +\d+", f"NAXIS2  = {int(rng.choice(HUGE)):20d}"),
        (rb"NAXIS   = +\d+", f"NAXIS   = {int(rng.integers(0, 1000)):20d}"),
        (rb"BITPIX  = +-?\d+", f"BITPIX  = {int(rng.choice([-64, -32, 0, 7, 8, 16, 128])):20d}"),
        (rb"SIMPLE  = +T", "SIMPLE  =                    F"),
        (rb"END {77}", "bad_key = 'x'".ljust(80)),
    ]
    pattern, replacement = edits[int(rng.integers(0, len(edits)))]
    return re.sub(pattern, replacement.encode()[:80], data, count=1)


def _npy_header(data: bytes, rng: np.random.Generator) -> bytes:
    if not data.startswith(b"\x93NUMPY"):
        return _flip_bits(data, rng)
    shapes = ["(0,)", "()", f"({int(rng.choice(HUGE))}, 150)", "(150, 150, 150, 150)"]
    dtypes = ["'<c16'", "'|O'", "'<f16'", "'>i8'", "'|b1'", "'<U4'", "[('a', '<f4')]", "'<f2'"]
    if rng.random() < 0.5:
        shape = shapes[int(rng.integers(0, len(shapes)))]
        return re.sub(rb"'shape': \([^)]*\)", f"'shape': {shape}".encode(), data, count=1)
    descr = dtypes[int(rng.integers(0, len(dtypes)))]
    return re.sub(rb"'descr': '[^']*'", f"'descr': {descr}".encode(), data, count=1)


def _png_size(data: bytes, rng: np.random.Generator) -> bytes:
    if not data.startswith(b"\x89PNG"):
        return _flip_bits(data, rng)
    out = bytearray(data)
    field = int(rng.integers(0, 4))
    if field < 2:  # width or height
        out[16 + 4 * field : 20 + 4 * field] = struct.pack(">I", int(rng.choice(HUGE)) % 2**32)
    else:  # bit depth or colour type
        out[24 + field - 2] = int(rng.integers(0, 256))
    crc = zlib.crc32(bytes(out[12:29]))
    out[29:33] = struct.pack(">I", crc)  # a valid CRC, so the header is believed
    return bytes(out)


def _tiff_tag(data: bytes, rng: np.random.Generator) -> bytes:
    if data[:4] not in (b"II*\x00", b"MM\x00*"):
        return _flip_bits(data, rng)
    buf = io.BytesIO(data)
    try:
        with tifffile.TiffFile(buf, mode="r+") as tif:
            tags = tif.pages.first.tags
            name = str(
                rng.choice(["ImageWidth", "ImageLength", "SamplesPerPixel", "BitsPerSample"])
            )
            if name in tags:
                tags[name].overwrite(int(rng.choice([0, 3, 64, 255, 4096, 65535])))
    except Exception:  # a tag tifffile cannot rewrite: flip bits instead
        return _flip_bits(data, rng)
    return buf.getvalue()


def _gzip(data: bytes, rng: np.random.Generator) -> bytes:
    return gzip.compress(data, int(rng.integers(1, 10)), mtime=0)


MUTATIONS: list[Mutation] = [
    _flip_bits,
    _flip_bits,
    _overwrite,
    _truncate,
    _append,
    _fits_card,
    _fits_card,
    _npy_header,
    _png_size,
    _tiff_tag,
    _gzip,
]


def cases(n: int, seed: int = 0) -> Iterator[tuple[str, bytes]]:
    """`n` mutated files (name, bytes), deterministic for a seed."""
    rng = np.random.default_rng(seed)
    base = seeds()
    for i in range(n):
        name, data = base[int(rng.integers(0, len(base)))]
        for _ in range(int(rng.integers(1, 4))):
            data = MUTATIONS[int(rng.integers(0, len(MUTATIONS)))](data, rng)
        if rng.random() < 0.15:  # a wrong (or no) extension
            name = Path(name).stem.split(".")[0] + str(rng.choice(EXTENSIONS))
        yield f"case{i:05d}-{name}", data


def main() -> None:
    """Write cases to a folder: python -m tests.fuzzing N SEED OUT."""
    n, seed, out = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
    out.mkdir(parents=True, exist_ok=True)
    for name, data in cases(n, seed):
        (out / name).write_bytes(data)


if __name__ == "__main__":
    main()

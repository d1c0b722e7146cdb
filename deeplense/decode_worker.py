"""A decoding worker process: `python -m deeplense.decode_worker [--memory-bytes N]`.

Started by `app.decode_pool`, which can kill it at any moment. It lives in `deeplense`, not
`app`, so that it imports only the decoders (numpy, astropy, tifffile, Pillow), never
FastAPI or torch. It speaks a small framed protocol on stdin/stdout, with no pickle, so a
worker subverted by a hostile file cannot make the server run code by what it answers:

- once its imports are done it writes one byte, READY;
- a job is a frame (4-byte big-endian length, JSON `{"filename", "max_pixels"}`, and
  `"stack": true` and `"path"` from the `score` CLI) followed by a frame holding the file's
  bytes (empty when the job names a path);
- the answer is a JSON frame `{"kind", "problem", "warnings", "format", "shape", "retire"}`
  (kind: ok, invalid or too_large) followed, when ok, by a frame of float32 pixels (C order).
"""

import argparse
import json
import logging
import os
import resource
import struct
import sys
import threading
import time
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from deeplense.errors import ImageTooLargeError, InvalidImageError
from deeplense.fits_layout import ImageExtras
from deeplense.imaging import DecodedImage, DecodedStack, decode_image, decode_stack

READY = b"R"
PARENT_CHECK_S = 0.5
"""How often a worker checks that its server is still alive, seconds."""
RETIRE_RSS_BYTES = 512 << 20
"""A worker whose resident size is above this after a job exits; a fresh one replaces it."""

_LENGTH = struct.Struct(">I")


def write_frame(out: BinaryIO, payload: bytes) -> None:
    """One frame: 4-byte big-endian length, then the payload."""
    out.write(_LENGTH.pack(len(payload)))
    out.write(payload)


def read_frame(inp: BinaryIO) -> bytes | None:
    """The next frame's payload; None at a clean end of input."""
    head = inp.read(_LENGTH.size)
    if len(head) < _LENGTH.size:
        return None
    (length,) = _LENGTH.unpack(head)
    payload = inp.read(length)
    return payload if len(payload) == length else None


def rss_bytes() -> int:
    """This process's resident size in bytes (Linux /proc)."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize()


def answer(
    data: bytes | Path, filename: str, max_pixels: int, stack: bool = False
) -> tuple[dict[str, object], list[bytes]]:
    """Decode one file (its bytes, or its path): the answer's header and its data frames
    (none unless ok): the pixels (float32; (N, H, W) with `stack`, values unchecked, as the
    `score` CLI reads them), then the noise map and the PSF (float64) when the file holds
    them."""
    header: dict[str, object] = {"kind": "ok", "problem": "", "warnings": [], "format": ""}
    frames: list[bytes] = []
    try:
        decoded: DecodedImage | DecodedStack = (
            decode_stack(data, filename=filename, max_pixels=max_pixels, check_values=False)
            if stack
            else decode_image(data, filename=filename, max_pixels=max_pixels)
        )
        array = np.ascontiguousarray(decoded.pixels, dtype=np.float32)
        header |= {"warnings": list(decoded.warnings), "format": decoded.format}
        header["shape"] = list(array.shape)
        frames = [array.tobytes()]
        extras = decoded.extras
        if extras is not None:
            header["extras"] = {
                "noise_extension": extras.noise_extension,
                "pixel_scale": extras.pixel_scale,
                "pixel_scale_keyword": extras.pixel_scale_keyword,
                "noise": None if extras.noise is None else list(extras.noise.shape),
                "psf": None if extras.psf is None else list(extras.psf.shape),
            }  # the frames follow in this order: extras_from reads them back
            for part in (extras.noise, extras.psf):
                if part is not None:
                    frames.append(np.ascontiguousarray(part, dtype=np.float64).tobytes())
    except InvalidImageError as exc:
        kind = "too_large" if isinstance(exc, ImageTooLargeError) else "invalid"
        header |= {"kind": kind, "problem": exc.problem}
        frames = []
    except MemoryError:
        frames = []
        header |= {"kind": "too_large", "problem": "not enough memory to decode it"}
        header["retire"] = True
    return header, frames


def serve(inp: BinaryIO, out: BinaryIO) -> None:
    """Answer jobs from `inp` on `out` until the end of input or a reason to retire."""
    out.write(READY)
    out.flush()
    while True:
        job = read_frame(inp)
        data = read_frame(inp) if job is not None else None
        if job is None or data is None:
            return
        request = json.loads(job)
        source = Path(request["path"]) if request.get("path") else data  # the CLI sends paths
        header, frames = answer(
            source, str(request["filename"]), int(request["max_pixels"]), bool(request.get("stack"))
        )
        del data
        retire = bool(header.get("retire")) or rss_bytes() > RETIRE_RSS_BYTES
        header["retire"] = retire
        write_frame(out, json.dumps(header).encode())
        for frame in frames:
            write_frame(out, frame)
        out.flush()
        if retire:
            return


def watch_parent(parent: int, every_s: float = PARENT_CHECK_S) -> threading.Thread:
    """A daemon thread that ends this process as soon as its parent `parent` is gone (the
    server killed with SIGKILL, say): a worker mid-decode must not burn CPU as an orphan.

    Polling, not PR_SET_PDEATHSIG: that signal fires when the parent *thread* that started
    the worker exits, and the server starts workers from pool threads that come and go.
    """

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every_s)
        os._exit(1)

    thread = threading.Thread(target=watch, name="watch-parent", daemon=True)
    thread.start()
    return thread


def main() -> None:
    parser = argparse.ArgumentParser(description="decode image files sent on stdin")
    parser.add_argument("--memory-bytes", type=int, default=None, help="RLIMIT_AS cap")
    parser.add_argument("--parent-pid", type=int, default=None, help="exit when it is gone")
    args = parser.parse_args()
    watch_parent(os.getppid() if args.parent_pid is None else args.parent_pid)
    # tifffile logs a warning per malformed tag; the answer's error says what was wrong.
    logging.getLogger("tifffile").setLevel(logging.ERROR)
    if args.memory_bytes is not None:
        resource.setrlimit(resource.RLIMIT_AS, (args.memory_bytes, args.memory_bytes))
    # The protocol gets the real stdout; anything a library prints goes to stderr instead.
    protocol = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    serve(sys.stdin.buffer, protocol)


if __name__ == "__main__":
    main()


def extras_from(header: dict[str, Any], frames: list[bytes]) -> ImageExtras | None:
    """The noise map and PSF frames (float64) sent after the pixels, as ImageExtras."""
    described = header.get("extras")
    if not described:
        return None
    parts = iter(frames)
    arrays = {}
    for part in ("noise", "psf"):
        shape = described.get(part)
        arrays[part] = (
            None
            if shape is None
            else np.frombuffer(next(parts), dtype=np.float64).reshape(tuple(int(d) for d in shape))
        )
    return ImageExtras(
        noise=arrays["noise"],
        noise_extension=described.get("noise_extension"),
        psf=arrays["psf"],
        pixel_scale=described.get("pixel_scale"),
        pixel_scale_keyword=described.get("pixel_scale_keyword"),
    )


def frames_expected(header: dict[str, Any]) -> int:
    """How many data frames follow an ok answer: the pixels, and the noise map and PSF
    when the header announces them."""
    described = header.get("extras") or {}
    return 1 + sum(described.get(part) is not None for part in ("noise", "psf"))

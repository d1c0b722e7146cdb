"""The decoding pool: files decode in worker processes that a deadline kills and replaces."""

import io
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.decode_pool import DecodePool
from app.errors import RequestTimeoutError
from app.imaging import Upload, prepare
from app.settings import Settings
from deeplense.errors import InvalidImageError
from deeplense.instrument import STUDY_INSTRUMENT
from tests.app.conftest import make_settings
from tests.encode import fits_bytes, npy_bytes, png_bytes


@pytest.fixture
def pool(tmp_path: Path) -> DecodePool:
    return DecodePool(make_settings(tmp_path, decode_timeout_s=5.0))


def started(pool: DecodePool) -> DecodePool:
    pool.start()
    return pool


def test_files_decode_as_in_process_with_their_warnings(pool: DecodePool) -> None:
    rng = np.random.default_rng(0)
    image = rng.random((20, 30), dtype=np.float32)
    rgb = (rng.random((16, 16, 3)) * 255).astype(np.uint8)

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    uploads = [
        Upload("a.npy", npy_bytes(image)),
        Upload("b.fits", fits_bytes(image)),
        Upload("c.png", buf.getvalue()),
        Upload("d.txt", b"hello"),
    ]
    try:
        decoded = started(pool).decode_all(uploads, 10_000)
    finally:
        pool.close()
    a, b, c, d = (
        prepare(u.filename, one, 16, STUDY_INSTRUMENT)
        for u, one in zip(uploads, decoded, strict=True)
    )
    assert a.error is None and a.input_shape == (20, 30) and a.resized
    assert "not stretched" in a.warnings[0]
    assert a.warnings[1] == "resized from 20 x 30 to 16 x 16 pixels"
    np.testing.assert_array_equal(a.image, b.image)
    assert c.error is None and any("luminance" in w for w in c.warnings)
    assert not any("resized" in w for w in c.warnings)
    assert d.error is not None and d.error.startswith("d.txt: unknown format")


def test_a_file_over_the_decode_timeout_is_refused_and_its_worker_replaced(
    tmp_path: Path,
) -> None:
    pool = DecodePool(make_settings(tmp_path))
    big = fits_bytes(np.random.default_rng(0).random((2048, 2048)))  # 32 MB of float64
    small = fits_bytes(np.arange(16, dtype=np.float32).reshape(4, 4))
    try:
        started(pool).decode(small, "warm.fits", 10**8, time.monotonic() + 30)  # worker ready
        pool.settings = make_settings(tmp_path, decode_timeout_s=0.001)
        before = pool.pids()
        (slow,) = pool.decode_all([Upload("big.fits", big)], 10**8)
        assert isinstance(slow, InvalidImageError)
        assert "decoding took longer than 0.001 s" in str(slow)
        assert pool.killed == 1
        assert pool.pids() != before and len(pool.pids()) == 1
    finally:
        pool.close()


def test_the_request_deadline_ends_decoding(tmp_path: Path) -> None:
    pool = DecodePool(make_settings(tmp_path))
    big = fits_bytes(np.random.default_rng(0).random((2048, 2048)))
    try:
        started(pool).decode(png_bytes(np.eye(8)), "warm.png", 100, time.monotonic() + 30)
        with pytest.raises(RequestTimeoutError):
            pool.decode(big, "big.fits", 10**8, time.monotonic() + 0.001)
        assert pool.killed == 1
    finally:
        pool.close()


def test_npy_decodes_in_the_server_without_a_worker(tmp_path: Path) -> None:
    pool = DecodePool(make_settings(tmp_path))  # not started: no worker at all
    image = np.arange(12, dtype=np.float32).reshape(3, 4)
    decoded = pool.decode(npy_bytes(image), "a.npy", 100, time.monotonic() + 1)
    np.testing.assert_array_equal(decoded.pixels, image)


def test_settings_bound_the_pool() -> None:
    settings = Settings(decode_workers=3)
    pool = DecodePool(settings)
    pool.start()
    try:
        assert len(pool.pids()) == 3
    finally:
        pool.close()
    assert pool.pids() == []


# A stand-in server: starts a decode worker the way the pool does, hands the worker's stdin
# to a sleeping sibling too (so the pipe stays open and only the watchdog can end the
# worker, as when it is busy decoding), prints both pids, then waits to be killed.
_SERVER = """
import os, subprocess, sys, time
read, write = os.pipe()
worker = subprocess.Popen(
    [sys.executable, "-m", "deeplense.decode_worker", "--parent-pid", str(os.getpid())],
    stdin=read, stdout=subprocess.DEVNULL,
)
holder = subprocess.Popen(["sleep", "60"], pass_fds=(write,))
print(worker.pid, holder.pid, flush=True)
time.sleep(60)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; only its entry waits for its reaper


def test_a_worker_dies_with_its_killed_server() -> None:
    import os
    import signal
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    server = subprocess.Popen(
        [sys.executable, "-c", _SERVER], cwd=root, stdout=subprocess.PIPE, text=True
    )
    assert server.stdout is not None
    worker, holder = (int(p) for p in server.stdout.readline().split())
    try:
        assert _alive(worker)
        server.kill()  # SIGKILL: no clean-up runs in the server
        server.wait()
        for _ in range(200):  # the watchdog polls every 0.5 s; give it up to 20 s
            if not _alive(worker):
                break
            time.sleep(0.1)
        assert not _alive(worker)
    finally:
        server.stdout.close()
        os.kill(holder, signal.SIGKILL)
        if _alive(worker):
            os.kill(worker, signal.SIGKILL)

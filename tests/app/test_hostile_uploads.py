"""A real server under hostile uploads (issue 12): every answer is a 4xx with `detail` or a
200, and afterwards the server is idle again, near its starting resident size."""

import gzip
import io
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from tests.app.proc import find_by_argument, rss_bytes, tree, tree_cpu_seconds
from tests.app.serve_fixture import run_server
from tests.encode import fits_bytes

IDLE_CPU_S = 0.15  # CPU seconds the whole process tree may use in an idle second


def hang_file() -> bytes:
    """D1: a real FITS image whose first card says SIMPLE = F, gzipped (astropy looped)."""
    real = fits_bytes(np.random.default_rng(0).random((64, 64), dtype=np.float32))
    return gzip.compress(b"SIMPLE  =                    F".ljust(80) + real[80:])


def bomb_file() -> bytes:
    """D4: a valid 4 x 4 FITS header followed by 256 MiB of zeros, gzipped (about 250 KB)."""
    header = fits_bytes(np.ones((4, 4), np.float32))[:2880]
    return gzip.compress(header + bytes(256 << 20), 9)


def slow_png() -> bytes:
    """A 4096 x 4096 PNG that compresses to a few KB but takes a while to decode and scale."""
    ramp = np.tile(np.arange(4096, dtype=np.uint16) % 256, (4096, 1)).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(ramp).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def idle_cpu(pid: int, windows: int = 5) -> float:
    """The least CPU seconds the process tree of `pid` uses in one second, over up to
    `windows` seconds (stops at the first idle one): a worker replaced after a kill spends
    about a CPU-second importing its decoders, more on a loaded machine."""
    least = float("inf")
    for _ in range(windows):
        before = tree_cpu_seconds(pid)
        time.sleep(1.0)
        least = min(least, tree_cpu_seconds(pid) - before)
        if least < IDLE_CPU_S:
            break
    return least


def tree_rss(pid: int) -> int:
    total = 0
    for p in tree(pid):
        try:
            total += rss_bytes(p)
        except OSError:
            continue
    return total


def test_hang_and_bomb_leave_the_server_idle_near_its_start_rss(
    tiny_checkpoints: Path, tmp_path: Path
) -> None:
    files = {"d1.fits.gz": hang_file(), "d4.fits.gz": bomb_file()}
    with run_server(tiny_checkpoints, tmp_path / "server.log") as url:
        pid = find_by_argument(url.rsplit(":", 1)[1])
        ok = fits_bytes(np.random.default_rng(1).random((16, 16), dtype=np.float32))
        with httpx.Client(base_url=url, timeout=30) as client:
            assert client.post("/score", files={"files": ("ok.fits", ok)}).status_code == 200
            time.sleep(0.5)
            start_rss = tree_rss(pid)
            for _ in range(3):
                for name, data in files.items():
                    started = time.monotonic()
                    response = client.post("/score", files={"files": (name, data)})
                    assert time.monotonic() - started < 10
                    assert response.status_code in (413, 422), response.text
                    detail = response.json()["detail"]
                    assert name in str(detail)
        time.sleep(0.5)
        assert idle_cpu(pid) < IDLE_CPU_S
        assert tree_rss(pid) < start_rss + (64 << 20), (start_rss, tree_rss(pid))


def test_work_stops_at_the_deadline(tiny_checkpoints: Path, tmp_path: Path) -> None:
    # D6: 60 slow files (about 15 CPU-s of decoding and scaling), 2 s deadline. The thread
    # kept decoding long after the 504; now decoding stops at the deadline and the server
    # is idle once the killed worker's replacement has started.
    data = slow_png()
    settings = {"DEEPLENSE_REQUEST_TIMEOUT_S": "2", "DEEPLENSE_DECODE_TIMEOUT_S": "30"}
    with run_server(tiny_checkpoints, tmp_path / "server.log", settings=settings) as url:
        pid = find_by_argument(url.rsplit(":", 1)[1])
        uploads = [("files", (f"slow{i}.png", data)) for i in range(60)]
        started = time.monotonic()
        response = httpx.post(f"{url}/score", files=uploads, timeout=30)
        assert response.status_code == 504, response.text
        assert time.monotonic() - started < 5
        assert idle_cpu(pid) < IDLE_CPU_S

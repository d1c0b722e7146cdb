"""Shedding under overload: the scoring service's answers, latency, memory and idle time.

Starts `uvicorn app.main:app` on 127.0.0.1 (a free port) with the shipped Model A
checkpoints (`--checkpoints`), then, per phase, sends 150x150 .npy images to
`POST /score?model=M&include_images=false`:

  closed-8       8 clients, each sending its next request when the last is answered; its
                 goodput is the measured capacity C (images/s) of the open-loop phases;
  open-0.5x/1x/2x  requests arriving at random (Poisson) at that share of C, each on its own
                 connection, whoever answers;
  overload-32x16 32 clients at once, 16 images per request, closed loop; with `--model`
                 (LensFit by default) and with `--cnn` (the DCAE).

A closed-loop client pauses SHED_BACKOFF_S after a 503 or 429; open-loop requests are
never retried.

For each phase it prints: offered load (images/s), requests, answers by status (200, 503,
429, 504, other), goodput (images in 200s per second of the phase), p50 and p99 latency of
the 200s, the slowest shed (503/429), the server's RSS before and after (read RSS_SETTLE_S
after idle), and the seconds from the last answer until the server's CPU falls idle (below
10% of a core over 0.25 s).

    python bench/bench_load.py [--seconds 30] [--model lensfit] [--cnn dcae] [--files 4]

Every loop is bounded in time; the server is killed when the script ends, whatever happens.
"""

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_serve import (  # noqa: E402
    HEADERS,
    REPO,
    cpu_seconds,
    free_port,
    multipart,
    ring_images,
    wait_ready,
)

IDLE_CPU_SHARE = 0.10  # of one core: below this over IDLE_WINDOW_S the server is idle
IDLE_WINDOW_S = 0.25
IDLE_GIVE_UP_S = 120.0
RSS_SETTLE_S = 2.5  # after idle, before reading the RSS (the server trims within ~2 s)
SHED_BACKOFF_S = 0.25  # a closed-loop client's pause after a 503 or 429


@dataclass
class Phase:
    """One load phase's answers: (status, latency s, images) per request."""

    name: str
    offered: float  # images/s offered (nan for closed loops)
    answers: list[tuple[int, float, int]] = field(default_factory=list)
    seconds: float = 0.0
    rss_before: float = 0.0
    rss_after: float = 0.0
    idle_after: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, status: int, latency: float, images: int) -> None:
        with self.lock:
            self.answers.append((status, latency, images))

    def count(self, *statuses: int) -> int:
        return sum(1 for s, _, _ in self.answers if s in statuses)

    @property
    def goodput(self) -> float:
        return sum(n for s, _, n in self.answers if s == 200) / max(self.seconds, 1e-9)

    def row(self) -> str:
        ok = sorted(t for s, t, _ in self.answers if s == 200)
        shed = [t for s, t, _ in self.answers if s in (429, 503)]
        other = len(self.answers) - self.count(200, 503, 429, 504)
        p50 = statistics.median(ok) if ok else float("nan")
        p99 = ok[min(len(ok) - 1, int(0.99 * len(ok)))] if ok else float("nan")
        return (
            f"| {self.name} | {self.offered:.1f} | {len(self.answers)} | {self.count(200)} | "
            f"{self.count(503)} | {self.count(429)} | {self.count(504)} | {other} | "
            f"{self.goodput:.1f} | {p50:.2f} | {p99:.2f} | "
            f"{max(shed) if shed else float('nan'):.2f} | "
            f"{self.rss_before:.0f} -> {self.rss_after:.0f} | {self.idle_after:.1f} |"
        )


HEADER = (
    "| phase | offered img/s | requests | 200 | 503 | 429 | 504 | other | goodput img/s | "
    "p50 s | p99 s | slowest shed s | RSS MiB before -> after | idle after s |\n"
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
)


def rss_mib(pid: int) -> float:
    """Resident size of process `pid` in MiB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def seconds_until_idle(pid: int) -> float:
    """Seconds until process `pid` uses under IDLE_CPU_SHARE of a core over IDLE_WINDOW_S."""
    start = time.monotonic()
    while time.monotonic() - start < IDLE_GIVE_UP_S:
        before = cpu_seconds(pid)
        time.sleep(IDLE_WINDOW_S)
        if cpu_seconds(pid) - before < IDLE_CPU_SHARE * IDLE_WINDOW_S:
            return time.monotonic() - start - IDLE_WINDOW_S
    return float("inf")


def send(url: str, body: bytes, images: int, phase: Phase, timeout: float) -> None:
    start = time.perf_counter()
    try:
        status = httpx.post(url, content=body, headers=HEADERS, timeout=timeout).status_code
    except httpx.HTTPError:
        status = 0  # a connection error or a client timeout: counted as "other"
    phase.record(status, time.perf_counter() - start, images)


def closed_loop(url: str, body: bytes, images: int, clients: int, phase: Phase, s: float) -> None:
    stop = time.monotonic() + s

    def client() -> None:
        with httpx.Client(timeout=120) as http:
            while time.monotonic() < stop:
                start = time.perf_counter()
                try:
                    status = http.post(url, content=body, headers=HEADERS).status_code
                except httpx.HTTPError:
                    status = 0
                phase.record(status, time.perf_counter() - start, images)
                if status in (429, 503):
                    time.sleep(SHED_BACKOFF_S)  # a shed client backs off, then tries again

    run_threads([threading.Thread(target=client) for _ in range(clients)])


def open_loop(url: str, body: bytes, images: int, rate: float, phase: Phase, s: float) -> None:
    """Requests at Poisson times, `rate` per second, for `s` seconds; each on its own."""
    rng = random.Random(0)
    threads, t = [], rng.expovariate(rate)
    start = time.monotonic()
    while t < s:
        time.sleep(max(0.0, start + t - time.monotonic()))
        thread = threading.Thread(target=send, args=(url, body, images, phase, 120))
        thread.start()
        threads.append(thread)
        t += rng.expovariate(rate)
    for thread in threads:
        thread.join()


def run_threads(threads: list[threading.Thread]) -> None:
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def measure(pid: int, phase: Phase, load: Callable[[], None]) -> Phase:
    phase.rss_before = rss_mib(pid)
    start = time.monotonic()
    load()
    phase.seconds = time.monotonic() - start
    phase.idle_after = seconds_until_idle(pid)
    time.sleep(RSS_SETTLE_S)
    phase.rss_after = rss_mib(pid)
    print(phase.row(), flush=True)
    return phase


def start_server(root: Path, port: int, log: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEEPLENSE_")}
    env |= {"DEEPLENSE_CHECKPOINT_DIR": str(root), "DEEPLENSE_LOG_LEVEL": "WARNING"}
    env |= {k: v for k, v in os.environ.items() if k.startswith("DEEPLENSE_ADMISSION")}
    command = [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--log-level", "warning", "--no-access-log"]
    with log.open("wb") as out:
        return subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoints", type=Path, default=REPO / "checkpoints" / "model_a")
    parser.add_argument("--model", default="lensfit", help="the slow model (default lensfit)")
    parser.add_argument("--cnn", default="dcae", help="a CNN for the second overload ('' off)")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each phase")
    parser.add_argument("--files", type=int, default=4, help="images per request (not 32x16)")
    args = parser.parse_args()
    images = ring_images(16, seed=1)
    small, big = multipart(images[: args.files]), multipart(images)
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "server.log"
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        proc = start_server(args.checkpoints, port, log)
        try:
            wait_ready(base, proc, log)
            url = f"{base}/score?model={args.model}&include_images=false"
            httpx.post(url, content=small, headers=HEADERS, timeout=120)  # warm
            print(f"server pid {proc.pid}, model {args.model}, {args.files} images per request,"
                  f" {args.seconds:g} s per phase, {os.cpu_count()} CPUs")  # fmt: skip
            print(HEADER)
            nan = float("nan")
            closed = Phase("closed-8", nan)
            measure(proc.pid, closed, lambda: closed_loop(url, small, args.files, 8, closed,
                                                          args.seconds))  # fmt: skip
            capacity = closed.goodput
            for share in (0.5, 1.0, 2.0):
                phase = Phase(f"open-{share:g}x", share * capacity)
                rate = share * capacity / args.files
                measure(
                    proc.pid,
                    phase,
                    lambda p=phase, r=rate: open_loop(url, small, args.files, r, p, args.seconds),
                )
            for model in [args.model] + ([args.cnn] if args.cnn else []):
                phase = Phase(f"overload-32x16 {model}", nan)
                over = f"{base}/score?model={model}&include_images=false"
                measure(
                    proc.pid,
                    phase,
                    lambda p=phase, u=over: closed_loop(u, big, 16, 32, p, args.seconds),
                )
        finally:
            proc.kill()
            proc.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

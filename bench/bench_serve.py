"""Raw model vs HTTP throughput and latency of the scoring service, on loopback.

Starts `uvicorn app.main:app` on 127.0.0.1 (a free port) in a subprocess with one 150x150
checkpoint, the DCAE by default or `--model NAME` (checkpoints/model_a/NAME when present,
else a calibrated random-weight one made in a temporary folder), then measures:

  (a) the raw model: forward images/s at batch 1 and 32 in this process;
  (b) HTTP: images/s with --clients concurrent clients, --files files per request, with and
      without images in the response;
  (c) single-image request latency, p50 and p99, with and without images;

and prints a table with the ratio (b)/(a). (a) and (b) alternate over --rounds rounds and
the table gives each one's median, so a shared machine's changing load hits both alike.
Every loop is bounded by a time budget and a count; the server is killed when the script
ends, whatever happens.

    python bench/bench_serve.py [--seconds 3] [--rounds 3] [--clients 8] [--files 32]
    python bench/bench_serve.py --model lensfit --files 8      # the default model, refining
"""

import argparse
import io
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

# The service sets this before torch loads (see app/__init__.py); the raw model gets the same.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import models  # noqa: E402
from deeplense.calibration import calibration_from_scores  # noqa: E402
from deeplense.inference import score_array  # noqa: E402
from models.base import AnomalyModel  # noqa: E402
from models.card import config_for  # noqa: E402
from models.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from models.registry import create_model  # noqa: E402

SIZE = 150
SHIPPED_ROOT = REPO / "checkpoints" / "model_a"
BOUNDARY = "bench-serve-boundary"


def ring_images(n: int, seed: int = 0, size: int = SIZE) -> np.ndarray:
    """(n, size, size) float32 Einstein-ring-like images in [0, 1] with noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    r = np.hypot(xx, yy)
    out = np.empty((n, size, size), dtype=np.float32)
    for i in range(n):
        img = np.exp(-((r - size / 4 * rng.uniform(0.8, 1.2)) ** 2) / 8.0)
        img = img + 0.05 * rng.standard_normal((size, size))
        out[i] = (img - img.min()) / (img.max() - img.min())
    return out


def checkpoint_root(tmp: Path, name: str) -> tuple[Path, str]:
    """A checkpoint root holding only the `name` folder, and where that checkpoint came from."""
    root = tmp / "checkpoints"
    root.mkdir()
    shipped = SHIPPED_ROOT / name
    if (shipped / "config.json").is_file():
        (root / name).symlink_to(shipped, target_is_directory=True)
        return root, str(shipped.relative_to(REPO))
    torch.manual_seed(0)
    model = create_model(name, image_size=SIZE).eval()
    scores = score_array(model, ring_images(64, seed=1)[:, None]).loss
    calibration = calibration_from_scores(scores, fpr=0.05, dataset="bench rings")
    config = config_for(model, calibrations={"mse": calibration}, default_score="mse")
    save_checkpoint(model, config, root / name)
    return root, f"random weights (no shipped checkpoints/model_a/{name})"


def timed_loop(step: Callable[[], object], seconds: float, max_iters: int) -> tuple[int, float]:
    """Run `step` until `seconds` pass or `max_iters` runs; (iterations, elapsed seconds)."""
    start = time.perf_counter()
    n = 0
    while n < max_iters and time.perf_counter() - start < seconds:
        step()
        n += 1
    return n, time.perf_counter() - start


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` (Linux /proc), in seconds; nan elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Rate:
    """A measured throughput: images/s, and CPU milliseconds per image on each side."""

    def __init__(self, images: int, wall: float, server_cpu: float, client_cpu: float) -> None:
        self.per_s = images / wall
        self.server_ms = 1000 * server_cpu / images
        self.client_ms = 1000 * client_cpu / images


def raw_throughput(model: AnomalyModel, batch: int, seconds: float) -> Rate:
    """Forward passes (reconstruct) of the loaded model in this process at `batch`."""
    x = torch.from_numpy(ring_images(batch, seed=2)[:, None])  # (B, 1, 150, 150)
    with torch.inference_mode():
        for _ in range(3):
            model.reconstruct(x)
        cpu = time.process_time()
        n, elapsed = timed_loop(lambda: model.reconstruct(x), seconds, 100_000)
        cpu = time.process_time() - cpu
    return Rate(n * batch, elapsed, cpu, 0.0)


def npy_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, image, allow_pickle=False)
    return buffer.getvalue()


def multipart(images: np.ndarray) -> bytes:
    """A multipart/form-data body with each image as an .npy file in field `files`."""
    parts = [
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="files"; filename="img{i}.npy"\r\n'
        f"Content-Type: application/octet-stream\r\n\r\n".encode()
        + npy_bytes(img)
        + b"\r\n"
        for i, img in enumerate(images)
    ]
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


HEADERS = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}


def http_throughput(
    url: str,
    pid: int,
    body: bytes,
    files: int,
    clients: int,
    seconds: float,
    include_images: bool,
) -> Rate:
    """`clients` threads each posting `body` (`files` images) back to back for `seconds`."""
    params = {"include_images": str(include_images).lower()}
    counts = [0] * clients
    errors: list[str] = []
    barrier = threading.Barrier(clients + 1)
    stop = threading.Event()

    def client(k: int) -> None:
        with httpx.Client(timeout=120) as http:
            http.post(f"{url}/score", params=params, content=body, headers=HEADERS)  # warm
            barrier.wait()
            while not stop.is_set():
                response = http.post(f"{url}/score", params=params, content=body, headers=HEADERS)
                if response.status_code != 200:
                    errors.append(f"{response.status_code} {response.text[:200]}")
                    return
                counts[k] += 1

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    server_cpu, client_cpu = cpu_seconds(pid), time.process_time()
    time.sleep(seconds)
    stop.set()
    done_at = []
    for t in threads:
        t.join(timeout=120)
        done_at.append(time.perf_counter())
    elapsed = max(done_at) - start  # every counted request finished within this span
    server_cpu, client_cpu = cpu_seconds(pid) - server_cpu, time.process_time() - client_cpu
    if errors:
        raise RuntimeError(f"HTTP errors during the run: {errors[:3]}")
    return Rate(sum(counts) * files, elapsed, server_cpu, client_cpu)


def latencies(url: str, body: bytes, include_images: bool, seconds: float) -> list[float]:
    """Sequential single-image requests: each one's wall time in ms."""
    params = {"include_images": str(include_images).lower()}
    times: list[float] = []
    with httpx.Client(timeout=60) as http:
        for _ in range(10):
            http.post(f"{url}/score", params=params, content=body, headers=HEADERS)

        def one() -> None:
            start = time.perf_counter()
            response = http.post(f"{url}/score", params=params, content=body, headers=HEADERS)
            times.append((time.perf_counter() - start) * 1000)
            response.raise_for_status()

        timed_loop(one, seconds, 2000)
    return times


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(root: Path, port: int, log: Path, threads: int | None) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEEPLENSE_")}
    env |= {"DEEPLENSE_CHECKPOINT_DIR": str(root), "DEEPLENSE_LOG_LEVEL": "WARNING"}
    if threads is not None:
        env["DEEPLENSE_TORCH_THREADS"] = str(threads)
    command = [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--log-level", "warning", "--no-access-log"]
    with log.open("wb") as out:
        return subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=out)


def wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"uvicorn exited with {proc.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"server not ready after {timeout} s:\n{log.read_text()}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", default="dcae", choices=models.list_models(), help="what to serve (dcae)"
    )
    parser.add_argument("--seconds", type=float, default=3.0, help="time per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of (a), (b)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent HTTP clients")
    parser.add_argument("--files", type=int, default=32, help="files per request in (b)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (both sides)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    tmp = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    proc = None
    try:
        root, source = checkpoint_root(tmp, args.model)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log = tmp / "server.log"
        proc = start_server(root, port, log, args.threads)
        wait_ready(url, proc, log)

        model = load_checkpoint(root / args.model).model
        body = multipart(ring_images(args.files, seed=3))
        check = httpx.post(f"{url}/score", content=body, headers=HEADERS, timeout=60).json()
        assert len(check["results"]) == args.files and check["results"][0]["error"] is None
        runs: dict[str, list[Rate]] = {"raw1": [], "raw": [], "http_no": [], "http_img": []}
        for _ in range(args.rounds):
            # (a) the raw model in this process while the server idles, then (b) HTTP.
            runs["raw1"].append(raw_throughput(model, 1, args.seconds))
            runs["raw"].append(raw_throughput(model, args.files, args.seconds))
            for key, images in (("http_no", False), ("http_img", True)):
                runs[key].append(
                    http_throughput(
                        url, proc.pid, body, args.files, args.clients, args.seconds, images
                    )
                )
        raw1, raw32, http_no, http_img = (
            statistics.median([r.per_s for r in runs[k]]) for k in runs
        )
        cpu = {k: statistics.median([r.server_ms for r in v]) for k, v in runs.items()}
        client_cpu = {k: statistics.median([r.client_ms for r in v]) for k, v in runs.items()}
        # (c) single-image latency.
        single = multipart(ring_images(1, seed=4))
        lat_img = latencies(url, single, True, args.seconds)
        lat_no = latencies(url, single, False, args.seconds)
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)

    def pct(values: list[float], q: float) -> float:
        return float(np.percentile(values, q))

    print(f"\nbench-serve: {args.model} {SIZE}x{SIZE}, {source}")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
        f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}"
    )
    print(f"HTTP: {args.clients} clients x {args.files} .npy files per request, loopback")
    print(
        f"medians of {args.rounds} rounds of {args.seconds:g} s; load average now "
        f"{os.getloadavg()[0]:.1f}\n"
    )
    rows = [
        ("(a) raw forward, batch 1", f"{raw1:8.1f} img/s", ""),
        (f"(a) raw forward, batch {args.files}", f"{raw32:8.1f} img/s", "1.00"),
        ("(b) HTTP, no images", f"{http_no:8.1f} img/s", f"{http_no / raw32:.2f}"),
        ("(b) HTTP, with images", f"{http_img:8.1f} img/s", f"{http_img / raw32:.2f}"),
        (
            "(c) 1 image, with images",
            f"p50 {pct(lat_img, 50):5.1f} ms",
            f"p99 {pct(lat_img, 99):5.1f} ms (n={len(lat_img)})",
        ),
        (
            "(c) 1 image, no images",
            f"p50 {pct(lat_no, 50):5.1f} ms",
            f"p99 {pct(lat_no, 99):5.1f} ms (n={len(lat_no)})",
        ),
    ]
    print(f"{'measurement':<28} {'value':>16}  {'ratio to (a) batch ' + str(args.files)}")
    print("-" * 72)
    for name, value, ratio in rows:
        print(f"{name:<28} {value:>16}  {ratio}")
    pairs = zip(runs["http_no"], runs["raw"], strict=True)
    per_round = ", ".join(f"{h.per_s / r.per_s:.2f}" for h, r in pairs)
    print(f"\n(b)/(a) without images, round by round: {per_round}")
    print(
        "CPU ms per image (load-independent): raw batch "
        f"{args.files} {cpu['raw']:.2f}; server without images {cpu['http_no']:.2f} "
        f"(+ client {client_cpu['http_no']:.2f}); server with images {cpu['http_img']:.2f} "
        f"(+ client {client_cpu['http_img']:.2f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

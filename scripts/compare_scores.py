"""Score files with a running service (POST /score) and on this host (`deeplense score`), and
compare the numbers: `make docker-test` runs it against the container.

    python scripts/compare_scores.py --url http://127.0.0.1:8000 \
        --checkpoints checkpoints/model_a examples/*.fits examples/*.npy examples/*.png

Every model the service lists (GET /models, the ensemble aside) that also has a checkpoint
under --checkpoints is compared on every file: anomaly_score and reconstruction_loss, to a
relative tolerance of --rtol (1e-6: six significant digits). Exit status 1 on any
disagreement, a file scored on one side only, or a model missing on the host.
"""

import argparse
import csv
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

FIELDS = ("anomaly_score", "reconstruction_loss")


def wait_ready(url: str, timeout_s: float) -> float:
    """Seconds until GET /ready answers 200 (the models are loaded and warm)."""
    start = time.monotonic()
    while True:
        try:
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                return time.monotonic() - start
        except httpx.TransportError:
            pass
        if time.monotonic() - start > timeout_s:
            raise SystemExit(f"{url}/ready not 200 after {timeout_s:.0f} s")
        time.sleep(0.5)


def service_scores(url: str, model: str, files: list[Path]) -> dict[str, dict[str, float]]:
    """filename -> the numbers of FIELDS, from one POST /score of every file."""
    uploads = [("files", (path.name, path.read_bytes())) for path in files]
    response = httpx.post(
        f"{url}/score",
        params={"model": model, "include_images": "false"},
        files=uploads,
        timeout=300,
    )
    response.raise_for_status()
    return {r["filename"]: {f: r[f] for f in FIELDS} for r in response.json()["results"]}


def host_scores(checkpoints: Path, model: str, files: list[Path]) -> dict[str, dict[str, float]]:
    """filename -> the numbers of FIELDS, from `python -m training score` on this host."""
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "scores.csv"
        command = [sys.executable, "-m", "training", "score", "--checkpoints", str(checkpoints)]
        command += ["--model", model, "--device", "cpu", "--out", str(out), *map(str, files)]
        # One torch thread, as the service runs its forward passes (DEEPLENSE_TORCH_THREADS
        # defaults to 1): bit-for-bit the same arithmetic (README, "Score images").
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        subprocess.run(command, check=True, capture_output=True, text=True, env=env)
        with out.open() as handle:
            rows = list(csv.DictReader(handle))
    return {Path(r["filename"]).name: {f: float(r[f]) for f in FIELDS} for r in rows}


def relative_difference(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), abs(b), 1e-300)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="the service, e.g. http://127.0.0.1:8000")
    parser.add_argument("--checkpoints", type=Path, required=True, help="the host's checkpoints")
    parser.add_argument("--rtol", type=float, default=1e-6, help="relative tolerance")
    parser.add_argument("--ready-timeout", type=float, default=180, help="seconds to wait")
    parser.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args()

    ready_s = wait_ready(args.url, args.ready_timeout)
    print(f"service ready {ready_s:.1f} s after the first probe")
    listed = httpx.get(f"{args.url}/models", timeout=10).json()
    names = sorted(m["name"] for m in listed["models"] if m["name"] != "ensemble")
    problems, compared, worst = [], 0, 0.0
    print(f"{'model':<8} {'files':>5} {'numbers':>7} {'max rel diff':>12}  (container vs host)")
    for name in names:
        if not (args.checkpoints / name / "config.json").is_file():
            problems.append(f"{name}: served, but not under {args.checkpoints}")
            continue
        served = service_scores(args.url, name, args.files)
        local = host_scores(args.checkpoints, name, args.files)
        if served.keys() != local.keys():
            problems.append(f"{name}: files differ: {sorted(served.keys() ^ local.keys())}")
        model_worst = 0.0
        for filename in sorted(served.keys() & local.keys()):
            for field in FIELDS:
                a, b = served[filename][field], local[filename][field]
                diff = relative_difference(a, b) if math.isfinite(a) else math.inf
                model_worst = max(model_worst, diff)
                compared += 1
                if not diff <= args.rtol:
                    problems.append(f"{name} {filename} {field}: container {a!r}, host {b!r}")
        worst = max(worst, model_worst)
        print(f"{name:<8} {len(served):>5} {2 * len(served):>7} {model_worst:>12.2e}")
        example = "vort_0.fits" if "vort_0.fits" in served else min(served)
        ours, theirs = served[example]["anomaly_score"], local[example]["anomaly_score"]
        print(f"         e.g. {name} {example}: anomaly_score container {ours!r}, host {theirs!r}")
    print(f"{compared} numbers compared, max relative difference {worst:.2e} (rtol {args.rtol:g})")
    for problem in problems:
        print(f"MISMATCH {problem}")
    return 1 if problems or not compared else 0


if __name__ == "__main__":
    sys.exit(main())

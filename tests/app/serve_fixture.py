"""A real uvicorn on loopback and a headless Chromium, for the browser test and screenshots.

As a script it serves a checkpoint folder (default: tiny random-weight checkpoints made on
the spot), uploads the given files through the upload page and saves a screenshot:

    .venv/bin/python tests/app/serve_fixture.py --checkpoints checkpoints/model_a \\
        --model aae --out docs/upload_page.png lens1.npy lens2.fits [--overwrite]
"""

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from playwright.sync_api import Browser, Page, Playwright, sync_playwright

REPO_ROOT = Path(__file__).resolve().parents[2]
# Debian's Chromium in a container: no sandbox, no GPU, and nothing that phones home.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout_s: float) -> None:
    """Poll GET /ready until 200; RuntimeError with the server log if it dies or times out."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"uvicorn exited with {proc.returncode}:\n{log.read_text()}")
        try:
            response = httpx.get(f"{url}/ready", timeout=2.0)
            if response.status_code == 200:
                return
            last = f"{response.status_code} {response.text}"
        except httpx.TransportError as exc:
            last = repr(exc)
        time.sleep(0.2)
    raise RuntimeError(f"/ready not 200 after {timeout_s} s ({last}):\n{log.read_text()}")


@contextmanager
def run_server(
    checkpoint_dir: Path,
    log: Path,
    timeout_s: float = 60.0,
    settings: dict[str, str] | None = None,
) -> Iterator[str]:
    """`python -m uvicorn app.main:app` on a free loopback port serving `checkpoint_dir`,
    with extra `DEEPLENSE_*` `settings`; yields its base URL once /ready answers 200 and
    always stops the process afterwards."""
    with run_server_process(checkpoint_dir, log, timeout_s, settings) as (url, _):
        yield url


@contextmanager
def run_server_process(
    checkpoint_dir: Path,
    log: Path,
    timeout_s: float = 60.0,
    settings: dict[str, str] | None = None,
) -> Iterator[tuple[str, subprocess.Popen]]:
    """`run_server`, yielding the server process too (its pid, for CPU and memory)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # Only our settings: a DEEPLENSE_API_KEY from the caller's shell must not leak in.
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEEPLENSE_")}
    env |= {
        "DEEPLENSE_CHECKPOINT_DIR": str(checkpoint_dir),
        "DEEPLENSE_DEVICE": "cpu",
        "DEEPLENSE_TORCH_THREADS": "1",
    }
    env |= settings or {}
    command = [sys.executable, "-m", "uvicorn", "app.main:app"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    with log.open("wb") as out:
        proc = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=out, stderr=out)
    try:
        _wait_ready(url, proc, log, timeout_s)
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def launch_chromium(p: Playwright) -> Browser:
    """Headless Debian Chromium (never Playwright's own download); RuntimeError if missing."""
    executable = shutil.which("chromium")
    if executable is None:
        raise RuntimeError("chromium is missing: run `bash scripts/install-system-deps.sh`")
    return p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)


def submit(page: Page, files: list[Path], model: str, n_cards: int) -> None:
    """Choose `files` and `model` on the upload page, press the button, wait for `n_cards`
    result cards and for all their images."""
    page.set_input_files("#files", [str(f) for f in files])
    page.select_option("#model", model)
    page.click("#submit")
    page.wait_for_function(f"document.querySelectorAll('#results .result').length === {n_cards}")
    page.wait_for_function(
        "Array.from(document.querySelectorAll('#results img')).every(i => i.complete)"
    )


def _tiny_checkpoints(root: Path) -> Path:
    """Tiny random-weight checkpoints, the test suite's (tests/conftest.py)."""
    sys.path.insert(0, str(REPO_ROOT / "tests"))
    sys.path.insert(0, str(REPO_ROOT))
    from conftest import tiny_config, tiny_model

    import models
    from models.checkpoint import save_checkpoint

    for name in models.list_models():
        model = tiny_model(name)
        save_checkpoint(model, tiny_config(model), root / name)
    return root


def main() -> None:
    """Serve checkpoints, score files through the upload page, save a full-page screenshot."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path, help="images to upload")
    parser.add_argument("--checkpoints", type=Path, help="checkpoint root (default: tiny ones)")
    parser.add_argument("--model", default="dcae", help="model to choose on the page")
    parser.add_argument("--out", type=Path, required=True, help="screenshot PNG to write")
    parser.add_argument("--width", type=int, default=1180, help="viewport width, CSS pixels")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    args = parser.parse_args()
    if args.out.exists() and not args.overwrite:
        parser.error(f"{args.out} exists; pass --overwrite to replace it")
    with tempfile.TemporaryDirectory() as tmp:
        checkpoints = args.checkpoints or _tiny_checkpoints(Path(tmp) / "checkpoints")
        with (
            run_server(checkpoints, Path(tmp) / "server.log") as url,
            sync_playwright() as p,
        ):
            browser = launch_chromium(p)
            try:
                page = browser.new_page(
                    viewport={"width": args.width, "height": 800}, bypass_csp=True
                )  # submit() waits with wait_for_function, a string the page's CSP forbids
                page.goto(url + "/")
                page.wait_for_selector("#model[data-loaded]")
                submit(page, args.files, args.model, n_cards=len(args.files))
                partial = args.out.with_name(f".{args.out.name}.tmp.png")
                page.screenshot(path=str(partial), full_page=True)
                os.replace(partial, args.out)
            finally:
                browser.close()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

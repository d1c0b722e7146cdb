"""Start-up: a failure reaches the server as one line that names the file, not a traceback;
the server answers while the models load in the background, and a start-up that fails or
overruns there stops it with one line and a non-zero exit."""

import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from fastapi.testclient import TestClient

import app.loading as loading
import models
from app.main import create_app, wait_started
from app.settings import Settings
from deeplense.errors import CheckpointError, NotReadyError
from tests.app.conftest import image, make_settings, upload
from tests.app.serve_fixture import REPO_ROOT, free_port
from tests.encode import npy_bytes


async def _start(app: Any) -> list[dict[str, Any]]:
    """Drive the ASGI lifespan start-up as a server does; return what the app sent."""
    sent: list[dict[str, Any]] = []
    messages = iter([{"type": "lifespan.startup"}])

    async def receive() -> dict[str, Any]:
        return next(messages, {"type": "lifespan.shutdown"})

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    with pytest.raises(CheckpointError):
        await app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send)
    return sent


def test_a_bad_checkpoint_dir_fails_start_up_in_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    sent = anyio.run(_start, create_app(make_settings(missing)))
    failed = [m for m in sent if m["type"] == "lifespan.startup.failed"]
    assert len(failed) == 1
    message = failed[0]["message"]
    assert message == f"start-up failed: {missing}: checkpoint directory not found"
    assert "Traceback" not in message


# ---- the models load in the background: the server answers during start-up (issue 20) ----


@pytest.fixture
def held_loading(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """Model loading blocks until the yielded event is set (a slow start-up, on demand)."""
    release = threading.Event()
    real = loading.load_served

    def held(*args: Any) -> Any:
        release.wait(30)
        return real(*args)

    monkeypatch.setattr(loading, "load_served", held)
    yield release
    release.set()


def test_health_ready_and_score_answer_while_the_models_load(
    settings: Settings, held_loading: threading.Event
) -> None:
    app = create_app(settings)
    with TestClient(app) as client:  # the lifespan ran: only the fast checks are done
        assert client.get("/health").json()["state"] == "starting"
        ready = client.get("/ready")
        assert ready.status_code == 503 and int(ready.headers["Retry-After"]) > 0
        detail = ready.json()["detail"]
        assert detail.startswith("not ready: still loading (") and "aae (loading)" in detail
        assert f"0 of {len(models.list_models())} models ready" in detail
        scored = client.post("/score", files=[upload("a.npy", npy_bytes(image()))])
        assert scored.status_code == 503 and int(scored.headers["Retry-After"]) > 0
        assert scored.json()["detail"].startswith("not ready: still loading")
        assert client.get("/models").status_code == 503
        held_loading.set()
        wait_started(app)
        assert client.get("/health").json()["state"] == "ready"
        assert client.get("/ready").status_code == 200
        assert client.post("/score", files=[upload("a.npy", npy_bytes(image()))]).is_success


def test_a_start_up_that_overruns_its_timeout_says_what_it_was_doing(
    tiny_checkpoints: Path, held_loading: threading.Event, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(make_settings(tiny_checkpoints, startup_timeout_s=0.3))
    with caplog.at_level(logging.ERROR, logger="app"), TestClient(app) as client:
        with pytest.raises(NotReadyError, match="startup_timeout_s"):
            wait_started(app, timeout_s=10)
        lines = [r.getMessage() for r in caplog.records if "start-up" in r.getMessage()]
        assert lines == [
            "start-up still running after 0.3 s (startup_timeout_s, env "
            "DEEPLENSE_STARTUP_TIMEOUT_S): aae (loading), "
            + ", ".join(f"{n} (pending)" for n in models.list_models() if n != "aae")
            + f"; 0 of {len(models.list_models())} models ready"
        ]
        assert client.get("/health").json()["state"] == "failed"
        ready = client.get("/ready")
        assert ready.status_code == 503 and ready.json()["detail"] == f"not ready: {lines[0]}"
        held_loading.set()  # loading ends late: the service still does not claim to be ready
        time.sleep(1.0)
        assert client.get("/ready").status_code == 503


def test_bad_weights_found_in_the_background_leave_a_503_naming_the_file(
    checkpoint_copy: Path, caplog: pytest.LogCaptureFixture
) -> None:
    weights = checkpoint_copy / "vae" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    app = create_app(make_settings(checkpoint_copy))
    with caplog.at_level(logging.ERROR, logger="app"), TestClient(app) as client:
        with pytest.raises(CheckpointError, match=str(weights)):
            wait_started(app, timeout_s=30)
        failed = [r.getMessage() for r in caplog.records if "start-up failed" in r.getMessage()]
        assert len(failed) == 1 and str(weights) in failed[0] and "\n" not in failed[0]
        assert client.get("/health").json()["state"] == "failed"
        ready = client.get("/ready")
        assert ready.status_code == 503 and str(weights) in ready.json()["detail"]
        assert client.post("/score", files=[upload("a.npy", npy_bytes(image()))]).status_code == 503


# A real uvicorn whose model loading waits for a gate file: the test decides when it ends.
GATED_SERVER = """
import pathlib, sys, time
import app.loading as loading
gate, real = pathlib.Path(sys.argv.pop(1)), loading.load_served
def gated(*args):
    while not gate.exists():
        time.sleep(0.05)
    return real(*args)
loading.load_served = gated
import uvicorn
sys.exit(uvicorn.main())
"""


def _gated_server(root: Path, gate: Path, **settings: str) -> tuple[str, subprocess.Popen[str]]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEEPLENSE_")}
    env |= {"DEEPLENSE_CHECKPOINT_DIR": str(root), "DEEPLENSE_DEVICE": "cpu"}
    env |= {"DEEPLENSE_LOG_LEVEL": "WARNING"} | settings  # only the failure's line
    proc = subprocess.Popen(
        [sys.executable, "-c", GATED_SERVER, str(gate), "app.main:app", "--port", str(port),
         "--log-level", "warning"],
        cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    return f"http://127.0.0.1:{port}", proc


def _first_health(url: str, proc: subprocess.Popen[str], timeout_s: float = 60) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[0]
        try:
            return dict(httpx.get(f"{url}/health", timeout=2).json())
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError("/health never answered")


def test_a_real_server_answers_during_start_up_and_exits_non_zero_on_bad_weights(
    checkpoint_copy: Path, tmp_path: Path
) -> None:
    weights = checkpoint_copy / "vae" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    gate = tmp_path / "gate"
    url, proc = _gated_server(checkpoint_copy, gate)
    try:
        assert _first_health(url, proc)["state"] == "starting"  # no refused connections
        ready = httpx.get(f"{url}/ready")
        assert ready.status_code == 503 and "still loading" in ready.json()["detail"]
        assert "Retry-After" in ready.headers
        scored = httpx.post(f"{url}/score", files=[upload("a.npy", npy_bytes(image()))])
        assert scored.status_code == 503 and "Retry-After" in scored.headers
        gate.touch()  # now loading runs, and meets the truncated weights
        output, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode != 0, output
    lines = output.strip().splitlines()
    assert len(lines) == 1 and "start-up failed" in lines[0] and str(weights) in lines[0], output


def test_a_real_server_whose_start_up_overruns_exits_non_zero_in_one_line(
    tiny_checkpoints: Path, tmp_path: Path
) -> None:
    url, proc = _gated_server(tiny_checkpoints, tmp_path / "never", DEEPLENSE_STARTUP_TIMEOUT_S="2")
    try:
        assert _first_health(url, proc)["state"] == "starting"
        output, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode != 0, output
    lines = output.strip().splitlines()
    assert len(lines) == 1 and "start-up still running after 2 s" in lines[0], output
    assert "aae (loading)" in lines[0]

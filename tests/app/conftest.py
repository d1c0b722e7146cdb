"""Fixtures for the service tests: settings on the tiny checkpoints, a started client, and
uploads (the file encoders are in tests/encode.py)."""

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from playwright.sync_api import Browser, sync_playwright

from app.main import create_app, wait_started
from app.settings import Settings
from tests.app.serve_fixture import launch_chromium, run_server
from tests.conftest import TINY_SIZE, tiny_images


def make_settings(root: Path, **overrides: object) -> Settings:
    """Settings on checkpoint root `root` on the CPU, one decoding worker (each costs a
    process start per app); `overrides` win."""
    values: dict[str, object] = {"checkpoint_dir": root, "device": "cpu", "decode_workers": 1}
    return Settings(**(values | overrides))  # type: ignore[arg-type]


@pytest.fixture
def settings(tiny_checkpoints: Path) -> Settings:
    return make_settings(tiny_checkpoints)


@contextmanager
def started(app: FastAPI, **options: Any) -> Iterator[TestClient]:
    """A TestClient on `app` once start-up has loaded and warmed every model (the lifespan
    starts that in the background); re-raises the start-up's error (e.g. CheckpointError)."""
    with TestClient(app, **options) as client:
        wait_started(app)
        yield client


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    """A client on a started app (every tiny checkpoint loaded and warmed)."""
    with started(create_app(settings)) as client:
        yield client


@pytest.fixture
def checkpoint_copy(tiny_checkpoints: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny checkpoint root that a test may damage."""
    return Path(shutil.copytree(tiny_checkpoints, tmp_path / "checkpoints"))


def image(seed: int = 0, size: int = TINY_SIZE) -> np.ndarray:
    """(size, size) float32 ring image in [0, 1]."""
    return tiny_images(1, seed=seed, size=size)[0, 0]


def upload(name: str, data: bytes) -> tuple[str, tuple[str, bytes, str]]:
    """One multipart entry of the `files` field."""
    return ("files", (name, data, "application/octet-stream"))


# ---- the browser tests' server and Chromium (tests/app/test_browser.py, test_docs_browser.py)


@pytest.fixture(scope="module")
def server(tiny_checkpoints: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of `uvicorn app.main:app` serving the tiny checkpoints on a free port."""
    log = tmp_path_factory.mktemp("uvicorn") / "server.log"
    try:
        with run_server(tiny_checkpoints, log) as url:
            yield url
    except RuntimeError as exc:  # the server never became ready: its log says why
        pytest.fail(str(exc))


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Headless Debian Chromium driven by Playwright; a missing browser fails, never skips."""
    with sync_playwright() as p:
        try:
            chromium = launch_chromium(p)
        except RuntimeError as exc:
            pytest.fail(str(exc))
        try:
            yield chromium
        finally:
            chromium.close()

"""/health and /ready say which device serves, the torch version and whether CUDA is there."""

import logging

import pytest
import torch
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from deeplense.device import resolve_device
from tests.app.conftest import started


def test_health_and_ready_report_device_and_torch(settings: Settings) -> None:
    app = create_app(settings)
    early = TestClient(app).get("/health").json()  # before start-up: no device chosen yet
    assert early["device"] is None and early["device_setting"] == "cpu"
    assert early["torch_version"] == torch.__version__
    assert early["torch_cuda"] == torch.version.cuda
    assert early["cuda_available"] is torch.cuda.is_available()
    with started(app) as client:
        for path in ("/health", "/ready"):
            body = client.get(path).json()
            assert body["device"] == "cpu", path
            assert body["torch_version"] == torch.__version__, path
            assert body["cuda_available"] is torch.cuda.is_available(), path


def test_auto_on_a_cuda_build_without_gpu_warns_loudly(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with caplog.at_level(logging.WARNING, logger="deeplense.device"):
        assert resolve_device("auto") == torch.device("cpu")
    assert "built for CUDA 12.4 but sees no GPU" in caplog.text
    assert "RUNNING ON THE CPU" in caplog.text


def test_auto_on_a_cpu_build_is_quiet(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with caplog.at_level(logging.WARNING, logger="deeplense.device"):
        assert resolve_device("auto") == torch.device("cpu")
    assert caplog.text == ""

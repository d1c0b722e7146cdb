"""Upload limits, deadline and error mapping: clear 4xx/5xx bodies, the server stays up."""

import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.service import ModelService
from tests.app.conftest import image, make_settings, started, upload
from tests.encode import npy_bytes

BOUNDARY = "deeplense-test-boundary"


def multipart(files: list[tuple[str, bytes]]) -> bytes:
    """A multipart/form-data body with each (filename, data) in field `files`."""
    parts = [
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
        f"Content-Type: application/octet-stream\r\n\r\n".encode()
        + data
        + b"\r\n"
        for name, data in files
    ]
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def still_up(client: TestClient) -> bool:
    response = client.post("/score", files=[upload("a.npy", npy_bytes(image()))])
    return response.status_code == 200


def test_file_over_max_file_bytes_is_413_naming_the_limit(tiny_checkpoints: Path) -> None:
    data = npy_bytes(image())  # 32 x 32 float32: 4224 bytes
    settings = make_settings(tiny_checkpoints, max_file_bytes=4000)
    with started(create_app(settings)) as client:
        response = client.post("/score", files=[upload("big.npy", data)])
        assert response.status_code == 413
        detail = response.json()["detail"]
        assert "big.npy" in detail and "max_file_bytes" in detail and "4000" in detail


def test_request_over_max_request_bytes_is_413_from_content_length(
    tiny_checkpoints: Path,
) -> None:
    settings = make_settings(tiny_checkpoints, max_request_bytes=10_000)
    files = [upload(f"{i}.npy", npy_bytes(image(i))) for i in range(3)]  # about 13 kB
    with started(create_app(settings)) as client:
        response = client.post("/score", files=files)
        assert response.status_code == 413
        assert "max_request_bytes" in response.json()["detail"]
        assert still_up(client)


def test_request_bytes_are_counted_without_a_content_length(tiny_checkpoints: Path) -> None:
    # A chunked body announces no length: the limit must come from counting the bytes.
    settings = make_settings(tiny_checkpoints, max_request_bytes=10_000)
    body = multipart([(f"{i}.npy", npy_bytes(image(i))) for i in range(3)])
    chunks = [body[i : i + 1000] for i in range(0, len(body), 1000)]
    with started(create_app(settings)) as client:
        response = client.post(
            "/score",
            content=iter(chunks),
            headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
        )
        assert response.status_code == 413
        assert "max_request_bytes" in response.json()["detail"]
        small = multipart([("a.npy", npy_bytes(image()))])
        ok = client.post(
            "/score",
            content=iter([small[:500], small[500:]]),
            headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
        )
        assert ok.status_code == 200, ok.text


def test_too_many_files_is_413_naming_max_files(tiny_checkpoints: Path) -> None:
    settings = make_settings(tiny_checkpoints, max_files=2)
    files = [upload(f"{i}.npy", npy_bytes(image(i))) for i in range(3)]
    with started(create_app(settings)) as client:
        response = client.post("/score", files=files)
        assert response.status_code == 413
        assert "max_files" in response.json()["detail"]
        assert client.post("/score", files=files[:2]).status_code == 200


def test_image_over_max_pixels_is_refused_from_its_header(tiny_checkpoints: Path) -> None:
    settings = make_settings(tiny_checkpoints, max_pixels=32 * 32 - 1)
    with started(create_app(settings)) as client:
        response = client.post("/score", files=[upload("wide.npy", npy_bytes(image()))])
        assert response.status_code == 422
        (entry,) = response.json()["detail"]
        assert entry["filename"] == "wide.npy" and "1023" in entry["msg"]
        mixed = [upload("wide.npy", npy_bytes(image())), upload("s.npy", npy_bytes(image(size=16)))]
        results = client.post("/score", files=mixed).json()["results"]
        assert "pixels" in results[0]["error"] and results[1]["error"] is None


def test_request_over_the_deadline_is_504(
    tiny_checkpoints: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = ModelService.score
    finished = threading.Event()

    def slow_score(self: ModelService, *args: object, **kwargs: object) -> object:
        try:
            time.sleep(1.0)
            return original(self, *args, **kwargs)  # type: ignore[arg-type]
        finally:
            finished.set()

    monkeypatch.setattr(ModelService, "score", slow_score)
    settings = make_settings(tiny_checkpoints, request_timeout_s=0.2)
    with started(create_app(settings)) as client:
        start = time.perf_counter()
        response = client.post("/score", files=[upload("a.npy", npy_bytes(image()))])
        assert response.status_code == 504
        assert time.perf_counter() - start < 0.9  # answered at the deadline, not after the work
        assert "request_timeout_s" in response.json()["detail"]
        assert client.get("/health").status_code == 200
    assert finished.wait(10)  # the abandoned worker thread still completes its batch


def test_unexpected_error_is_a_safe_500(
    tiny_checkpoints: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: ModelService, *args: object, **kwargs: object) -> object:
        raise RuntimeError("secret internal state /etc/passwd")

    monkeypatch.setattr(ModelService, "score", broken)
    with started(create_app(make_settings(tiny_checkpoints)), raise_server_exceptions=False) as c:
        response = c.post("/score", files=[upload("a.npy", npy_bytes(image()))])
        assert response.status_code == 500
        assert response.json() == {
            "detail": "internal server error; the service logged the details"
        }
        assert "secret" not in response.text
        assert c.get("/health").status_code == 200


def test_missing_files_field_is_422(client: TestClient) -> None:
    response = client.post("/score", data={"other": "x"})
    assert response.status_code == 422
    assert "files" in str(response.json()["detail"])


def test_malformed_multipart_is_a_4xx(client: TestClient) -> None:
    response = client.post(
        "/score",
        content=b"--x\r\nContent-Disposition: broken\r\n\r\n",
        headers={"Content-Type": "multipart/form-data; boundary=x"},
    )
    assert 400 <= response.status_code < 500
    assert "detail" in response.json()

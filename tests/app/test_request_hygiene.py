"""The smaller findings of issue 12 and the API truths of issue 11 item 8, at the HTTP level."""

import io
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydantic import SecretStr

from app.main import create_app
from app.settings import Settings, SettingsError, get_settings
from deeplense.imaging import decode_image
from deeplense.printable import printable
from tests.app.conftest import image, upload
from tests.app.serve_fixture import REPO_ROOT
from tests.encode import npy_bytes


def test_validation_errors_echo_only_a_prefix_of_the_input(client: TestClient) -> None:
    # 95 text parts named `files`, 100 KB each: FastAPI echoed them all (194 MiB once).
    parts = {"files": ["x" * 100_000] * 95}
    response = client.post("/score", data=parts)
    assert response.status_code == 422
    assert len(response.content) < 5_000
    detail = response.json()["detail"]
    assert len(detail) <= 11 and "more errors not shown" in detail[-1]["msg"]
    assert all(len(e.get("input", "")) <= 67 for e in detail)


def test_files_is_declared_non_empty(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    body = schema["components"]["schemas"]["Body_score_score_post"]
    assert body["properties"]["files"]["minItems"] == 1
    response = client.post("/score", files={"other": ("a.npy", npy_bytes(image()))})
    assert response.status_code == 422


def test_api_key_scheme_only_when_a_key_is_set(settings: Settings) -> None:
    open_spec = TestClient(create_app(settings)).get("/openapi.json").json()
    assert "securitySchemes" not in open_spec.get("components", {})
    assert all("security" not in op for ops in open_spec["paths"].values() for op in ops.values())
    keyed = settings.model_copy(update={"api_key": SecretStr("k")})
    keyed_spec = TestClient(create_app(keyed)).get("/openapi.json").json()
    assert "APIKeyHeader" in keyed_spec["components"]["securitySchemes"]
    assert keyed_spec["paths"]["/score"]["post"]["security"]


def test_a_bad_setting_is_one_line_naming_the_variable_and_the_valid_values() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEEPLENSE_")}
    env |= {"DEEPLENSE_DEVICE": "gpu", "DEEPLENSE_MAX_FILES": "0"}
    done = subprocess.run(
        [sys.executable, "-c", "import app.main"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "DEEPLENSE_DEVICE='gpu'" in lines[0] and "'auto', 'cpu' or 'cuda'" in lines[0]
    assert "DEEPLENSE_MAX_FILES='0'" in lines[0]


def _metric(client: TestClient, name: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def test_files_of_a_request_refused_as_a_whole_are_counted(client: TestClient) -> None:
    before = _metric(client, "unreadable_files_total")
    files = [upload("a.txt", b"hello"), upload("b.txt", b"world")]
    assert client.post("/score", files=files).status_code == 422
    assert _metric(client, "unreadable_files_total") == before + 2


def test_rgb_and_resized_uploads_each_add_a_warning(client: TestClient) -> None:
    rng = np.random.default_rng(0)
    rgb = (rng.random((32, 32, 3)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    big = npy_bytes(rng.random((40, 50), dtype=np.float32))
    response = client.post(
        "/score", files=[upload("rgb.png", buf.getvalue()), upload("big.npy", big)]
    )
    assert response.status_code == 200
    rgb_result, big_result = response.json()["results"]
    assert [w for w in rgb_result["warnings"] if "luminance" in w]
    warnings = big_result["warnings"]
    assert any("padded to 50 x 50 with masked pixels (not stretched)" in w for w in warnings)
    assert any(w.startswith("resized from 40 x 50 to 32 x 32 pixels") for w in warnings)


def test_unknown_format_message_does_not_offer_stacks(client: TestClient) -> None:
    files = [upload("notes.txt", b"hello"), upload("a.npy", npy_bytes(image()))]
    error = client.post("/score", files=files).json()["results"][0]["error"]
    assert "unknown format" in error and "stack" not in error


def test_a_newline_in_a_name_or_path_cannot_forge_a_log_line(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    forged = "x\nINFO:     app.errors: forged\r"
    with caplog.at_level(logging.INFO):
        assert client.get("/models/x%0AINFO:%20%20app.errors:%20forged%0D").status_code == 404
        rgb = np.zeros((8, 8, 3), dtype=np.uint8)
        rgb[:4, :, 0], rgb[4:, :, 1] = 255, 128
        buffer = io.BytesIO()
        Image.fromarray(rgb).save(buffer, format="PNG")
        decode_image(buffer.getvalue(), filename=f"{forged}.png")  # logs a colour note
    messages = [r.getMessage() for r in caplog.records]
    assert any("forged" in m for m in messages if "404" in m)
    assert any("forged" in m for m in messages if "luminance" in m)
    assert not any("\n" in m or "\r" in m for m in messages)
    assert printable("a\nb\x1b[31m\u2028") == "a\\nb\\x1b[31m\\u2028"


def test_a_list_setting_that_is_not_json_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEEPLENSE_CORS_ORIGINS", "https://example.org")
    get_settings.cache_clear()
    try:
        with pytest.raises(SettingsError) as info:
            get_settings()
    finally:
        get_settings.cache_clear()
    message = str(info.value)
    assert "cors_origins" in message and "lists are JSON" in message and "\n" not in message


def test_the_upload_page_cannot_be_framed_and_loads_only_from_here(client: TestClient) -> None:
    headers = client.get("/").headers
    policy = headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in policy and "script-src 'self'" in policy
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert client.get("/static/app.js").headers["X-Content-Type-Options"] == "nosniff"


def _multipart(parts: list[str]) -> tuple[str, dict[str, str]]:
    body = "".join(f"--b\r\nContent-Disposition: form-data; {p}\r\n\r\n\r\n" for p in parts)
    return body + "--b--\r\n", {"Content-Type": "multipart/form-data; boundary=b"}


def test_empty_or_text_file_parts_get_clear_422_entries(client: TestClient) -> None:
    cases = {
        'name="files"; filename="a.npy"': "a.npy: empty file (0 bytes)",
        'name="files"; filename=""': "no file uploaded",
        'name="files"': "not a file: a form field without a filename",
    }
    for part, expected in cases.items():
        body, headers = _multipart([part])
        response = client.post("/score", content=body, headers=headers)
        assert response.status_code == 422
        entry = response.json()["detail"][0]
        assert expected in entry["msg"] and entry["loc"][:2] == ["body", "files"]
        assert "class" not in entry["msg"]

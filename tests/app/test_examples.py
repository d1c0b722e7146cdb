"""The shipped examples/ score through the service with every documented key, and the default
model of the shipped checkpoints flags them as the README says."""

from pathlib import Path

import httpx
import numpy as np
from fastapi.testclient import TestClient

from tests.app.conftest import upload
from tests.app.serve_fixture import REPO_ROOT, run_server

EXAMPLES = REPO_ROOT / "examples"
SHIPPED = REPO_ROOT / "checkpoints" / "model_a"
RESULT_KEYS = {
    "filename",
    "reconstruction_loss",
    "threshold",
    "is_anomaly",
    "percentile",
    "w1",
    "reconstruction",
    "residual",
    "input_shape",
    "resized",
    "error",
}


def test_every_example_file_scores_with_the_documented_keys(client: TestClient) -> None:
    files = sorted(p for p in EXAMPLES.iterdir() if p.suffix in {".npy", ".fits", ".png"})
    assert len(files) == 18  # 3 classes x 2 images x 3 formats
    response = client.post(
        "/score", params={"model": "dcae"}, files=[upload(p.name, p.read_bytes()) for p in files]
    )
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["filename"] for r in results] == [p.name for p in files]
    for r in results:
        assert set(r) >= RESULT_KEYS, r["filename"]
        assert r["error"] is None, r["error"]
        assert r["input_shape"] == [150, 150]
        assert r["resized"] is True  # the tiny test models take 32x32 input
        assert np.isfinite(r["reconstruction_loss"]) and np.isfinite(r["w1"])


def test_the_three_formats_of_one_example_score_alike(client: TestClient) -> None:
    stem = EXAMPLES / "vort_0"
    files = [stem.with_suffix(s) for s in (".npy", ".fits", ".png")]
    response = client.post(
        "/score", params={"model": "dcae"}, files=[upload(p.name, p.read_bytes()) for p in files]
    )
    npy, fits_, png = (r["reconstruction_loss"] for r in response.json()["results"])
    assert fits_ == npy  # float32 either way: the same pixels
    assert abs(png - npy) < 1e-3 * npy  # 16-bit PNG quantisation only


def test_the_default_model_flags_the_substructure_examples_and_passes_the_normal_ones(
    tmp_path: Path,
) -> None:
    # The README promises this: a real server on the shipped Model A checkpoints, no model
    # named (LensFit is the default), every example in every format.
    files = sorted(p for p in EXAMPLES.iterdir() if p.suffix in {".npy", ".fits", ".png"})
    with run_server(SHIPPED, tmp_path / "server.log") as url:
        upload = [("files", (p.name, p.read_bytes())) for p in files]
        response = httpx.post(
            f"{url}/score", params={"include_images": "false"}, files=upload, timeout=300
        )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "lensfit"
    flags = {r["filename"]: r["is_anomaly"] for r in body["results"]}
    assert flags == {p.name: not p.name.startswith("no_sub") for p in files}

"""The README's "Add a model" promise, kept: a model written in one file (with one line of
tiny configuration) goes through simulate -> fit -> calibrate -> evaluate -> score -> the
service with no other edit. In a subprocess, so that the throwaway registration never
leaks into the other tests' registry."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

SCRIPT = """
import io, json, sys
import numpy as np
import tests.models.throwaway_model  # the one file: registers "throwaway"
from fastapi.testclient import TestClient
from app.main import create_app, wait_started
from app.settings import Settings
from training.__main__ import main

tmp = sys.argv[1]
data, ckpt, report, csv = (f"{tmp}/{name}" for name in ("data", "ckpt", "report", "scores.csv"))
steps = [
    ["simulate", "--dataset", "model_a", "--out", data, "--n-train", "24", "--n-val", "16",
     "--n-val-sub", "8", "--n-test", "6", "--image-size", "32", "--workers", "1"],
    ["fit", "--model", "throwaway", "--data", data, "--out", ckpt, "--epochs", "2",
     "--batch-size", "8", "--device", "cpu", "--tiny"],
    ["calibrate", "--checkpoints", ckpt, "--data", data, "--device", "cpu"],
    ["evaluate", "--checkpoints", ckpt, "--data", data, "--out", report, "--device", "cpu"],
    ["score", "--checkpoints", ckpt, "--model", "throwaway", "--device", "cpu", "--out", csv,
     f"{data}/test"],
]
for args in steps:
    assert main(args) == 0, args
settings = Settings(checkpoint_dir=ckpt, device="cpu", decode_workers=1)
image = np.load(f"{data}/test/sphere.npy", allow_pickle=False)[0, 0]  # (32, 32)
buffer = io.BytesIO()
np.save(buffer, image)
with TestClient(app := create_app(settings)) as client:
    wait_started(app)  # the models load in the background
    listing = client.get("/models").json()
    scored = client.post("/score", files={"files": ("sphere.npy", buffer.getvalue())}).json()
metrics = json.load(open(f"{report}/metrics.json"))
print(json.dumps({"listing": listing, "scored": scored, "metrics": metrics}))
"""


@pytest.mark.slow
def test_a_model_in_one_file_runs_through_every_command_and_the_service(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    listing, scored, metrics = out["listing"], out["scored"], out["metrics"]
    assert listing["default"] == "throwaway"
    card = listing["models"][0]
    assert card["architecture"] == "throwaway"
    assert card["arguments"]["width"] == 2  # its tiny config, from --tiny
    assert card["training"]["extra"]["optimizer"] == "Adam + OneCycleLR"  # the standard step
    assert set(card["calibrations"]) >= {"mse", "chi2", "chi2_psf", "chi2_psf_light"}
    result = scored["results"][0]
    assert scored["model"] == "throwaway" and result["error"] is None
    assert result["anomaly_score"] is not None and result["is_anomaly"] is not None
    assert 0.0 <= result["percentile"] <= 100.0
    assert "throwaway" in metrics["models"]
    assert (tmp_path / "scores.csv").read_text().count("\n") == 1 + 3 * 6  # header + images

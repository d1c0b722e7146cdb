"""The instrument travels from the data to the checkpoint and to every score: a 64x64 set at
0.08"/pixel behind a 0.12" PSF trains every registered model, which then serves."""

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import models
from models.checkpoint import read_config

REPO = Path(__file__).resolve().parents[2]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "training", *args], cwd=REPO, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip


@pytest.fixture(scope="module")
def data_64(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny 64x64 Model A set at 0.08"/pixel behind a 0.12" Gaussian PSF."""
    data = tmp_path_factory.mktemp("instrument") / "data"
    done = _cli("simulate", "--dataset", "model_a", "--out", str(data), "--n-train", "16",
                "--n-val", "8", "--n-val-sub", "4", "--n-test", "2", "--image-size", "64",
                "--pixel-scale", "0.08", "--psf-sigma", "0.12", "--workers", "1")  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return data


@pytest.mark.slow
def test_every_model_trains_at_64_pixels_records_the_instrument_and_serves(
    data_64: Path, tmp_path: Path
) -> None:

    from app.main import create_app
    from tests.app.conftest import make_settings, started

    data, ckpt = data_64, tmp_path / "ckpt"
    done = _cli("fit", "--data", str(data), "--out", str(ckpt), "--epochs", "1",
                "--batch-size", "8", "--device", "cpu", "--tiny")  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = json.loads((data / "manifest.json").read_text())
    assert manifest["instrument"]["pixel_scale_arcsec"] == 0.08
    assert manifest["instrument"]["psf_sigma_arcsec"] == pytest.approx(0.12)
    for name in models.list_models():
        card = read_config(ckpt / name)
        assert (card.input.height, card.input.width) == (64, 64), name
        assert card.input.pixel_scale_arcsec == 0.08, name
        assert card.input.psf_sigma_arcsec == pytest.approx(0.12), name
        assert card.input.psf_sigma_pixels == pytest.approx(1.5), name  # the matched filter
        # A model whose config describes the instrument (a renderer) draws on the data's grid.
        for field, value in (("pixel_scale", 0.08), ("psf_sigma", 0.12)):
            if field in card.arguments:
                assert card.arguments[field] == pytest.approx(value), (name, field)
    image = np.load(data / "test" / "vort.npy", allow_pickle=False)[0, 0]  # (64, 64)
    buffer = io.BytesIO()
    np.save(buffer, image)
    with started(create_app(make_settings(ckpt))) as client:
        for name in models.list_models():
            response = client.post(
                "/score", params={"model": name}, files={"files": ("vort.npy", buffer.getvalue())}
            )
            assert response.status_code == 200, (name, response.text)
            result = response.json()["results"][0]
            assert result["error"] is None and result["resized"] is False, name
            assert result["anomaly_score"] is not None, name


@pytest.mark.slow
def test_a_flag_that_contradicts_the_manifest_is_refused(data_64: Path, tmp_path: Path) -> None:
    data = data_64
    done = _cli("fit", "--model", "dcae", "--data", str(data), "--out", str(tmp_path / "c"),
                "--epochs", "1", "--tiny", "--pixel-scale", "0.05")  # fmt: skip
    assert done.returncode == 2
    assert "contradicts the dataset's manifest" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_real_data_without_a_manifest_takes_the_instrument_from_flags(
    data_64: Path, tmp_path: Path
) -> None:
    data = data_64
    plain = tmp_path / "plain"
    for split in ("train", "val"):
        (plain / split).mkdir(parents=True)
        images = np.load(data / split / "no_sub.npy", allow_pickle=False)
        np.save(plain / split / "no_sub.npy", images)
    done = _cli("fit", "--model", "dcae", "--data", str(plain), "--out", str(tmp_path / "c"),
                "--epochs", "1", "--batch-size", "8", "--device", "cpu", "--tiny",
                "--pixel-scale", "0.1", "--psf-sigma", "0.068")  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    card = read_config(tmp_path / "c" / "dcae")
    assert card.input.pixel_scale_arcsec == 0.1
    assert card.input.psf_sigma_arcsec == pytest.approx(0.068)

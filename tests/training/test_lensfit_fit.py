"""`fit --model lensfit` on a tiny set writes a checkpoint the service serves, with its card."""

from pathlib import Path

from app.main import create_app
from models.checkpoint import load_checkpoint
from tests.app.conftest import image, make_settings, started, upload
from tests.encode import npy_bytes
from tests.training.test_fit import _fit, data_dir  # noqa: F401  (the module's fixture)


def test_lensfit_trains_and_is_served(data_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    out = tmp_path / "ckpt"
    assert _fit(data_dir, out, "--arch-arg", "refine_steps=1", model="lensfit") == 0
    loaded = load_checkpoint(out / "lensfit")
    card = loaded.config.training.extra["model_card"]
    assert set(card["prior"]) >= {"theta_e", "gamma1", "source_x", "lens_r_eff"}
    assert all(v["std"] >= 0 for v in card["prior"].values())
    assert card["refinement"]["steps"] == 1
    assert set(loaded.config.calibrations) >= {"mse", "chi2_psf"}
    with started(create_app(make_settings(out))) as client:
        files = [upload("a.npy", npy_bytes(image(1)))]
        response = client.post("/score?model=lensfit&score=chi2_psf", files=files)
        assert response.status_code == 200, response.text
        result = response.json()["results"][0]
        assert result["score"] == "chi2_psf" and result["anomaly_score"] > 0
        assert result["is_anomaly"] == (result["anomaly_score"] > result["threshold"])
        model_card = client.get("/models/lensfit").json()
        assert model_card["training"]["extra"]["model_card"]["refinement"]["steps"] == 1

"""Named scores through every path: POST /score?score=, the score CLI and evaluate agree."""

import csv
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from app.main import create_app
from app.residual_images import PIXEL_RMS_MULTIPLE
from deeplense.fit_drawn import FINDINGS
from deeplense.inference import score_array
from deeplense.scores import list_scores
from models.checkpoint import CONFIG_FILE, load_checkpoint, read_config, save_checkpoint
from tests.app.conftest import image, make_settings, started, upload
from tests.app.test_score import decode_png
from tests.conftest import serving_model, threads_kept, tiny_config, tiny_images, tiny_model
from tests.encode import fits_bytes, npy_bytes
from training.__main__ import main
from training.evaluate import evaluate_checkpoints

SCORES = list_scores()


@pytest.fixture
def one_thread() -> Iterator[None]:
    """torch on one thread here, as `deeplense score`'s worker processes are: a tiny LensFit
    2's fit rounds differently on two (imaging_gain moved 0.15% between one and two threads;
    the shipped Model A card's 5e-5), which is not what these tests compare. Under pytest-xdist
    (`make test`) every worker runs on one thread anyway."""
    with threads_kept():
        torch.set_num_threads(1)
        yield


@pytest.mark.parametrize("score", SCORES)
def test_served_equals_the_cli_and_score_array_for_every_score(
    score: str, client: TestClient, tiny_checkpoints: Path, tmp_path: Path, one_thread: None
) -> None:
    files = {"a.npy": npy_bytes(image(7)), "b.fits": fits_bytes(image(8, size=45) * 3.0 + 1.0)}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    out = tmp_path / "scores.csv"
    model_name = serving_model(score)  # vae, or for a score drawn by a fit, a model drawing it
    argv = [
        "score", "--checkpoints", str(tiny_checkpoints), "--model", model_name, "--score", score
    ]  # fmt: skip
    assert main([*argv, *(str(tmp_path / n) for n in files), "--out", str(out)]) == 0
    with out.open() as fh:
        cli = {Path(row["filename"]).name: row for row in csv.DictReader(fh)}
    uploads = [upload(n, d) for n, d in files.items()]
    response = client.post("/score", params={"model": model_name, "score": score}, files=uploads)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["score"] == score and body["threshold_units"] == "score"
    calibration = read_config(tiny_checkpoints / model_name).calibrations[score]
    for result in body["results"]:
        row = cli[result["filename"]]
        assert row["score"] == result["score"] == score
        for key in ("anomaly_score", "reconstruction_loss", "threshold"):
            assert float(row[key]) == pytest.approx(result[key], rel=1e-6), key
        assert result["threshold"] == calibration.threshold
        # A score that cannot judge the image (the tiny random models' reconstructions may
        # hold too little light for chi2_psf_light) leaves flag and percentile empty, alike.
        assert row["warnings"] == "; ".join(result["warnings"])
        if result["percentile"] is None:
            assert row["percentile"] == row["is_anomaly"] == "" and result["is_anomaly"] is None
            assert any("does not apply" in w for w in result["warnings"])
            continue
        assert float(row["percentile"]) == pytest.approx(result["percentile"], rel=1e-6)
        assert row["is_anomaly"].lower() == str(result["is_anomaly"]).lower()
        assert result["is_anomaly"] == (result["anomaly_score"] > result["threshold"])
        # the fit's findings: the same in the CSV's columns; only for a score the fit draws
        found = result["gravitational_imaging"]
        if score != "imaging_gain":
            assert found is None and all(row[name] == "" for name in FINDINGS)
            continue
        assert set(found) == set(FINDINGS)
        for name in FINDINGS:
            if found[name] is None:
                assert row[name] == ""
            else:
                assert float(row[name]) == pytest.approx(found[name], rel=1e-6), name
        total = found["tension"] + found["blob_gain"]
        assert total == pytest.approx(result["anomaly_score"], rel=1e-5)  # the map is float32
    # ...and score_array on the same input (what evaluate uses):
    model = load_checkpoint(tiny_checkpoints / model_name).model
    x = np.stack([image(7)[None]])
    scored = score_array(model, x, scores=[score])
    direct = scored.scores[score]
    assert body["results"][0]["anomaly_score"] == pytest.approx(float(direct[0]), rel=1e-6)
    served_found = body["results"][0]["gravitational_imaging"]
    assert (served_found is None) == (not scored.findings)
    if served_found is not None:
        assert served_found["tension"] == pytest.approx(float(scored.findings["tension"][0]))


@pytest.mark.parametrize("score", SCORES)
def test_evaluated_auc_equals_the_auc_of_the_served_scores(
    score: str, client: TestClient, tiny_checkpoints: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    (data / "test").mkdir(parents=True)
    stacks = {"no_sub": tiny_images(8, seed=2), "sphere": tiny_images(4, seed=3),
              "vort": tiny_images(4, seed=4)}  # fmt: skip
    for cls, x in stacks.items():
        np.save(data / "test" / f"{cls}.npy", x[:, 0])
    (data / "manifest.json").write_text(json.dumps({"dataset": "model_a"}))
    model_name = serving_model(score, pure="dcae")
    evaluated = evaluate_checkpoints(tiny_checkpoints, data, device="cpu", names=[model_name])
    served: dict[str, list[float]] = {}
    for cls, x in stacks.items():
        uploads = [upload(f"{cls}{i}.npy", npy_bytes(img[0])) for i, img in enumerate(x)]
        params = {"model": model_name, "score": score, "include_images": "false"}
        results = client.post("/score", params=params, files=uploads).json()["results"]
        served[cls] = [r["anomaly_score"] for r in results]
    normal = np.array(served["no_sub"])
    anomalous = np.array(served["sphere"] + served["vort"])
    # AUC by its definition: P(anomalous > normal) + P(tie) / 2.
    auc = np.mean([(a > n) + 0.5 * (a == n) for a in anomalous for n in normal])
    metrics = evaluated.models[model_name].metrics
    assert metrics[f"auc_{score}_sub"] == pytest.approx(auc, abs=1e-9)


def test_a_noise_aware_score_returns_its_map_in_noise_units(client: TestClient) -> None:
    files = [upload("a.npy", npy_bytes(image(1)))]
    result = client.post("/score?model=aae&score=chi2_psf", files=files).json()["results"][0]
    assert result["score"] == "chi2_psf" and result["anomaly_score"] > 0
    assert result["reconstruction_loss"] > 0  # the MSE is always returned
    assert result["residual_units"] == "sigma" and result["residual_max"] == 5.0
    assert 0 <= result["percentile"] <= 100
    residual = decode_png(result["residual"])
    assert residual.mode == "P"
    palette = residual.getpalette()
    assert palette is not None and tuple(palette[3 * 128 : 3 * 128 + 3]) == (247, 247, 247)
    mse = client.post("/score?model=aae&score=mse", files=files).json()["results"][0]
    assert mse["residual_units"] == "pixel" and mse["residual_max"] > 0
    assert isinstance(decode_png(mse["residual"]), Image.Image)


def test_the_mse_heat_map_has_one_scale_per_model_from_its_calibration(
    client: TestClient,
) -> None:
    threshold = client.get("/models/aae").json()["calibrations"]["mse"]["threshold"]
    tops = set()
    for seed in (1, 2, 3):
        files = [upload("a.npy", npy_bytes(image(seed)))]
        result = client.post("/score?model=aae&score=mse", files=files).json()["results"][0]
        tops.add(result["residual_max"])
    assert len(tops) == 1  # one scale, whatever the image
    assert tops.pop() == pytest.approx(PIXEL_RMS_MULTIPLE * threshold**0.5)


def test_an_unknown_score_is_422_listing_the_valid_ones(client: TestClient) -> None:
    files = [upload("a.npy", npy_bytes(image(1)))]
    response = client.post("/score?score=ssim", files=files)
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert "ssim" in detail and all(s in detail for s in SCORES)


def test_a_score_drawn_by_a_fit_is_422_for_a_model_or_ensemble_without_it(
    client: TestClient,
) -> None:
    files = [upload("a.npy", npy_bytes(image(1)))]
    for model in ("vae", "ensemble"):
        response = client.post(
            "/score", params={"model": model, "score": "imaging_gain"}, files=files
        )
        assert response.status_code == 422, response.text
        detail = response.json()["detail"]
        assert "imaging_gain" in detail and "cannot draw" in detail and "chi2_psf" in detail
    assert "imaging_gain" not in client.get("/models/vae").json()["scores"]
    assert "imaging_gain" in client.get("/models/lensfit2").json()["scores"]


def test_a_score_drawn_by_a_fit_is_served_with_its_map_in_noise_units(
    client: TestClient, tiny_checkpoints: Path
) -> None:
    files = [upload("a.npy", npy_bytes(image(2)))]
    params = {"model": "lensfit2", "score": "imaging_gain"}
    result = client.post("/score", params=params, files=files).json()["results"][0]
    assert result["score"] == "imaging_gain" and result["anomaly_score"] > 0
    assert result["residual_units"] == "sigma"
    plain = client.post("/score", params={"model": "lensfit2", "score": "chi2"}, files=files)
    chi2 = plain.json()["results"][0]
    # one fit: the same reconstruction, whichever score is asked for
    assert result["reconstruction"] == chi2["reconstruction"]
    assert result["reconstruction_loss"] == chi2["reconstruction_loss"]
    model = load_checkpoint(tiny_checkpoints / "lensfit2").model
    direct = score_array(model, image(2)[None, None], scores=["imaging_gain"])
    assert result["anomaly_score"] == pytest.approx(
        float(direct.scores["imaging_gain"][0]), rel=1e-6
    )


@pytest.mark.parametrize("score", ["chi2", "chi2_psf_light"])
def test_the_ensemble_works_per_score(score: str, client: TestClient) -> None:
    files = [upload("a.npy", npy_bytes(image(1))), upload("b.npy", npy_bytes(image(2)))]
    body = client.post("/score", params={"model": "ensemble", "score": score}, files=files).json()
    assert body["score"] == score and body["threshold_units"] == "percentile"
    alone = client.post("/score", params={"model": "rbm", "score": score}, files=files).json()
    for result, single in zip(body["results"], alone["results"], strict=True):
        members = result["members"]
        assert all(m["score"] == score for m in members)
        if result["percentile"] is None:  # a member's reconstruction cannot be judged by it
            assert result["is_anomaly"] is None and result["warnings"]
        else:
            mean = np.mean([m["percentile"] for m in members])
            assert result["percentile"] == pytest.approx(mean)
        rbm = next(m for m in members if m["model"] == "rbm")
        assert rbm["anomaly_score"] == single["anomaly_score"]
        assert rbm["is_anomaly"] == (rbm["anomaly_score"] > rbm["threshold"])


def test_a_format_1_checkpoint_still_loads_with_the_mse_only(
    tiny_checkpoints: Path, tmp_path: Path
) -> None:
    root = tmp_path / "old"
    (root / "dcae").mkdir(parents=True)
    new = read_config(tiny_checkpoints / "dcae")
    raw = json.loads(new.model_dump_json())
    for key in ("calibrations", "default_score", "default_score_reason"):
        raw.pop(key)
    raw["format_version"] = 1
    raw["calibration"] = json.loads(new.calibrations["mse"].model_dump_json())
    del raw["input"]["psf_sigma_arcsec"]
    (root / "dcae" / CONFIG_FILE).write_text(json.dumps(raw))
    weights = (tiny_checkpoints / "dcae" / "model.safetensors").read_bytes()
    (root / "dcae" / "model.safetensors").write_bytes(weights)
    config = read_config(root / "dcae")
    assert set(config.calibrations) == {"mse"} and config.default_score == "mse"
    with started(create_app(make_settings(root))) as client:
        files = [upload("a.npy", npy_bytes(image(1)))]
        result = client.post("/score", files=files).json()["results"][0]
        assert result["score"] == "mse" and result["is_anomaly"] is not None
        # Other scores are computed, but have no calibration: no threshold, no percentile.
        chi2 = client.post("/score?score=chi2", files=files).json()["results"][0]
        assert chi2["anomaly_score"] > 0 and chi2["threshold"] is None
        assert chi2["percentile"] is None and chi2["is_anomaly"] is None


def test_a_card_whose_default_is_drawn_by_its_fit_warms_up_and_serves_it(tmp_path: Path) -> None:
    """A LensFit 2 card whose default score is imaging_gain (Model A's and Model B's): the
    service starts (its warm-up scores by that default), and a request naming no score gets
    it, judged against its calibration."""
    model = tiny_model("lensfit2")
    save_checkpoint(model, tiny_config(model, "imaging_gain"), tmp_path / "lensfit2")
    with started(create_app(make_settings(tmp_path))) as client:
        files = [upload("a.npy", npy_bytes(image(4)))]
        result = client.post("/score", files=files).json()["results"][0]
        assert result["score"] == "imaging_gain" and result["threshold"] > 0
        assert result["is_anomaly"] == (result["anomaly_score"] > result["threshold"])
        assert client.get("/models/lensfit2").json()["default_score"] == "imaging_gain"


def test_the_served_map_is_the_score_of_the_returned_reconstruction(
    client: TestClient, tiny_checkpoints: Path
) -> None:
    """The single model's map comes from its scoring pass: it equals the map drawn afresh."""
    from app.residual_images import attach_images
    from app.schemas import ScoreResult
    from deeplense.instrument import STUDY_INSTRUMENT
    from deeplense.observation import prepare_observation

    files = [upload("a.npy", npy_bytes(image(3)))]
    served = client.post("/score?model=dcae&score=chi2_psf", files=files).json()["results"][0]
    model = load_checkpoint(tiny_checkpoints / "dcae").model
    x = np.stack([image(3)[None]])
    recon = score_array(model, x, keep_reconstructions=True).reconstruction
    assert recon is not None
    fresh = [ScoreResult(filename="a.npy")]
    observation = prepare_observation(image(3), model.image_size, STUDY_INSTRUMENT, "a.npy")
    attach_images(fresh, [observation], recon, "chi2_psf")
    assert served["residual"] == fresh[0].residual

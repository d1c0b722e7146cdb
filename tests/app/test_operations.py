"""Start-up, readiness, model cards, metrics, docs, API key and CORS."""

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

import models
from app.main import create_app
from app.settings import Settings, get_settings
from deeplense.errors import CheckpointError
from models.checkpoint import read_config, write_config
from tests.app.conftest import image, make_settings, started, upload
from tests.encode import npy_bytes


def test_health_is_always_200(settings: Settings) -> None:
    app = create_app(settings)
    assert TestClient(app).get("/health").json()["status"] == "ok"  # before start-up
    with started(app) as client:
        assert client.get("/health").status_code == 200


def test_ready_is_503_until_every_model_is_loaded(settings: Settings) -> None:
    app = create_app(settings)
    early = TestClient(app)  # no `with`: the lifespan has not run, nothing is loaded
    response = early.get("/ready")
    assert response.status_code == 503 and response.json()["ready"] is False
    assert int(response.headers["Retry-After"]) > 0  # a load balancer knows when to retry
    assert early.post("/score", files=[upload("a.npy", npy_bytes(image()))]).status_code == 503
    assert early.get("/models").status_code == 503
    app.state.service.discover()  # checkpoints found, none loaded yet
    body = early.get("/ready").json()
    assert body["not_ready"] == sorted(models.list_models())
    assert set(body["models"].values()) == {"pending"}
    assert "pending" in body["detail"]
    with started(app) as client:
        response = client.get("/ready")
        assert response.status_code == 200 and "Retry-After" not in response.headers
        assert response.json()["ready"] is True and response.json()["not_ready"] == []


def test_broken_weights_fail_start_up_naming_the_file(checkpoint_copy: Path) -> None:
    weights = checkpoint_copy / "dcae" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    with (
        pytest.raises(CheckpointError, match=str(weights)),
        started(create_app(make_settings(checkpoint_copy))),
    ):
        pass


def test_broken_config_fails_start_up_naming_the_file(checkpoint_copy: Path) -> None:
    config = checkpoint_copy / "dcae" / "config.json"
    raw = json.loads(config.read_text())
    raw["input"]["height"] = -3
    config.write_text(json.dumps(raw))
    with (
        pytest.raises(CheckpointError, match=str(config)),
        started(create_app(make_settings(checkpoint_copy))),
    ):
        pass


def test_missing_or_empty_checkpoint_dir_fails_start_up(tmp_path: Path) -> None:
    for root in (tmp_path / "absent", tmp_path):
        with (
            pytest.raises(CheckpointError, match=str(root)),
            started(create_app(make_settings(root))),
        ):
            pass


def test_default_model_that_is_not_loaded_fails_start_up(tiny_checkpoints: Path) -> None:
    with (
        pytest.raises(Exception, match="resnet"),
        started(create_app(make_settings(tiny_checkpoints, default_model="resnet"))),
    ):
        pass


def test_models_lists_a_card_per_checkpoint(client: TestClient) -> None:
    body = client.get("/models").json()
    names = sorted(models.list_models())
    assert [card["name"] for card in body["models"]] == names
    assert body["choices"] == names + ["ensemble"]
    assert body["default"] in names
    assert body["ensemble"]["members"] == names
    assert body["ensemble"]["threshold_percentile"] == pytest.approx(95.0)
    for card in body["models"]:
        assert card["parameters"] > 0
        assert card["input"] == {
            "channels": 1, "height": 32, "width": 32, "normalisation": "minmax",
            "pixel_scale_arcsec": 0.05, "psf_sigma_arcsec": 0.1,
        }  # fmt: skip
        assert card["default_score"] == "mse" and "chi2_psf" in card["scores"]
        assert set(card["calibrations"]) == set(card["scores"])  # one per score
        assert card["calibrations"]["chi2"]["score"] == "chi2"
        calibration = card["calibration"]
        assert calibration == card["calibrations"]["mse"]
        assert calibration["fpr"] == 0.05 and calibration["n_images"] == 64
        q = calibration["normal_loss_quantiles"]
        assert q["min"] <= q["median"] <= q["p95"] <= q["max"]
        assert len(card["weights_sha256"]) == 64
        assert card["is_default"] == (card["name"] == body["default"])


def test_model_card_by_name_and_404_for_unknown(client: TestClient) -> None:
    card = client.get("/models/dcae").json()
    assert card["architecture"] == "dcae" and card["arguments"]["image_size"] == 32
    assert "training" in card and "metrics" in card
    response = client.get("/models/resnet")
    assert response.status_code == 404
    assert "dcae" in response.json()["detail"]


def test_metrics_count_requests_images_and_anomalies(client: TestClient) -> None:
    files = [upload("a.npy", npy_bytes(image(1))), upload("b.npy", npy_bytes(image(2)))]
    client.post("/score", params={"model": "dcae", "threshold": 0.0}, files=files)
    client.post("/score", params={"model": "dcae", "threshold": 1e9}, files=files[:1])
    text = client.get("/metrics").text
    assert 'images_scored_total{model="dcae"} 3.0' in text
    assert 'anomalies_flagged_total{model="dcae"} 2.0' in text
    assert 'http_requests_total{handler="/score",method="POST",status="200"} 2.0' in text
    assert "http_request_duration_seconds_bucket" in text


def _has_example(node: Any, spec: dict[str, Any], seen: frozenset[str] = frozenset()) -> bool:
    """Whether an OpenAPI node holds an example anywhere, following $refs."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref not in seen:
            target = spec
            for part in ref.removeprefix("#/").split("/"):
                target = target[part]
            if _has_example(target, spec, seen | {ref}):
                return True
        if "example" in node or "examples" in node:
            return True
        return any(_has_example(v, spec, seen) for v in node.values())
    if isinstance(node, list):
        return any(_has_example(v, spec, seen) for v in node)
    return False


def test_docs_show_an_example_for_every_route(client: TestClient) -> None:
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    operations = [(p, m, op) for p, item in spec["paths"].items() for m, op in item.items()]
    assert {p for p, _, _ in operations} >= {"/score", "/models", "/models/{name}", "/health"}
    for path, method, op in operations:
        success = op["responses"]["200"]
        assert _has_example(success, spec), f"{method.upper()} {path} has no example"


def test_api_key_guards_scoring_and_models_only(tiny_checkpoints: Path) -> None:
    settings = make_settings(tiny_checkpoints, api_key="s3cret")
    files = [upload("a.npy", npy_bytes(image()))]
    with started(create_app(settings)) as client:
        missing = client.post("/score", files=files)
        assert missing.status_code == 401 and "X-API-Key" in missing.json()["detail"]
        wrong = client.post("/score", files=files, headers={"X-API-Key": "guess"})
        assert wrong.status_code == 401
        assert client.get("/models").status_code == 401
        ok = client.post("/score", files=files, headers={"X-API-Key": "s3cret"})
        assert ok.status_code == 200
        assert client.get("/models", headers={"X-API-Key": "s3cret"}).status_code == 200
        for path in ("/health", "/ready", "/metrics", "/docs", "/openapi.json"):
            assert client.get(path).status_code == 200, path


def test_no_api_key_configured_means_open(client: TestClient) -> None:
    assert client.get("/models").status_code == 200


def test_cors_allows_only_the_configured_origins(tiny_checkpoints: Path) -> None:
    origin = "https://lens.example.org"
    settings = make_settings(tiny_checkpoints, cors_origins=[origin])
    with started(create_app(settings)) as client:
        response = client.get("/health", headers={"Origin": origin})
        assert response.headers["access-control-allow-origin"] == origin
        preflight = client.options(
            "/score",
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "x-api-key",
            },
        )
        assert preflight.status_code == 200
        other = client.get("/health", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


def test_cors_is_off_by_default(client: TestClient) -> None:
    response = client.get("/health", headers={"Origin": "https://lens.example.org"})
    assert "access-control-allow-origin" not in response.headers


def test_settings_come_from_deeplense_environment_variables(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DEEPLENSE_CHECKPOINT_DIR", str(tmp_path))
    monkeypatch.setenv("DEEPLENSE_MAX_FILES", "7")
    monkeypatch.setenv("DEEPLENSE_CORS_ORIGINS", '["https://a.org", "https://b.org"]')
    monkeypatch.setenv("DEEPLENSE_API_KEY", "hunter2-key")
    settings = Settings()
    assert settings.checkpoint_dir == tmp_path and settings.max_files == 7
    assert settings.cors_origins == ["https://a.org", "https://b.org"]
    assert settings.api_key is not None and settings.api_key.get_secret_value() == "hunter2-key"
    assert "hunter2" not in repr(settings)
    get_settings.cache_clear()
    try:
        assert get_settings().max_files == 7
    finally:
        get_settings.cache_clear()


def test_default_model_is_the_best_validation_auc_never_the_test_metrics(
    checkpoint_copy: Path,
) -> None:
    val_aucs = {"aae": 0.61, "vae": 0.55, "dcae": 0.72, "rbm": 0.50}
    test_aucs = {"aae": 0.90, "vae": 0.55, "dcae": 0.60, "rbm": 0.50}  # must not matter
    for name, auc in val_aucs.items():
        path = checkpoint_copy / name
        config = read_config(path)
        score = config.default_score
        calibration = config.calibrations[score].model_copy(update={"validation_auc": auc})
        update = {
            "calibrations": {**config.calibrations, score: calibration},
            "metrics": {"auc_sub": test_aucs[name], f"auc_{score}_sub": test_aucs[name]},
        }
        write_config(config.model_copy(update=update), path)
    with started(create_app(make_settings(checkpoint_copy))) as client:
        listing = client.get("/models").json()
    assert listing["default"] == "dcae"
    assert "labelled validation split" in listing["default_reason"]
    assert "dcae" in listing["default_reason"] and "0.7200" in listing["default_reason"]


def test_default_model_without_metrics_follows_the_published_ranking(client: TestClient) -> None:
    assert client.get("/models").json()["default"] == "aae"

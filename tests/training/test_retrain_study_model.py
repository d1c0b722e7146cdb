"""scripts/retrain_study_model.sh: argument checks, and a tiny train-ship-evaluate run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from models.checkpoint import read_config

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "retrain_study_model.sh"


def run(tmp: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {
        **os.environ,
        "PY": sys.executable,
        "DATA_DIR": str(tmp / "data"),
        "STUDY_DIR": str(tmp / "study"),
        "RUN_DIR": str(tmp / "run"),
        "CKPT_SET": str(tmp / "set"),
        "REPORT_DIR": str(tmp / "reports"),
        "NICE": "0",
        **env,
    }
    return subprocess.run(
        ["bash", str(SCRIPT), *args], env=full_env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "DATASET MODEL"),
        (("model_a",), "DATASET MODEL"),
        (("model_c", "vae"), "unknown dataset 'model_c'; valid: model_a, model_b"),
        (("model_a", "lensfit"), "unknown study model 'lensfit'; valid: aae, vae, dcae, rbm"),
    ],
)
def test_retrain_rejects_bad_arguments(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    result = run(tmp_path, *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert not (tmp_path / "data").exists()


@pytest.mark.slow
def test_retrain_trains_ships_and_evaluates_then_keeps_what_it_replaces(tmp_path: Path) -> None:
    tiny = {
        "N_TRAIN": "16", "N_VAL": "8", "N_VAL_SUB": "2", "N_TEST": "4", "N_STUDY_TEST": "4",
        "IMAGE_SIZE": "32", "EPOCHS": "1", "BATCH_SIZE": "8", "FIT_ARGS": "--tiny",
    }  # fmt: skip
    result = run(tmp_path, "model_b", "rbm", **tiny)
    assert result.returncode == 0, result.stderr[-2000:]
    study = json.loads((tmp_path / "study" / "manifest.json").read_text())
    assert study["substructure"] == "study"
    shipped = tmp_path / "set" / "rbm"
    config = read_config(shipped)
    assert config.training.epochs == 1 and config.calibration is not None
    assert config.metrics  # --update-checkpoints stored the 1% test split's metrics
    for report in ("model_b_rbm", "model_b_rbm_study"):
        assert (tmp_path / "reports" / report / "metrics.json").is_file()
    trained = (tmp_path / "run" / "rbm" / "model.safetensors").read_bytes()
    assert (shipped / "model.safetensors").read_bytes() == trained

    # Shipped weights that differ from the run's are moved aside, never deleted.
    (shipped / "model.safetensors").write_bytes(b"older release")
    again = run(tmp_path, "model_b", "rbm", **tiny)
    assert again.returncode == 0, again.stderr[-2000:]
    assert (shipped / "model.safetensors").read_bytes() == trained
    replaced = tmp_path / "run-replaced" / "rbm" / "model.safetensors"
    assert replaced.read_bytes() == b"older release"
    # A third replacement would overwrite the kept one: refused.
    (shipped / "model.safetensors").write_bytes(b"another")
    refused = run(tmp_path, "model_b", "rbm", **tiny)
    assert refused.returncode == 2 and "exists; move it away first" in refused.stderr
    assert replaced.read_bytes() == b"older release"

"""scripts/reproduce.sh: argument checks, refusal to overwrite, and a tiny end-to-end run."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import models
from models.checkpoint import read_config

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "reproduce.sh"
TINY_FIT = "--tiny"  # every model at its Config.tiny()


def run(tmp: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {
        **os.environ,
        "PY": sys.executable,
        "DATA_DIR": str(tmp / "data"),
        "CKPT_OUT": str(tmp / "ckpt"),
        "REPORT_DIR": str(tmp / "report"),
        **env,
    }
    return subprocess.run(
        ["bash", str(SCRIPT), *args], env=full_env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "DATASET PRESET"),
        (("model_a",), "DATASET PRESET"),
        (("model_c", "small"), "unknown dataset 'model_c'; valid: model_a, model_b"),
        (("model_a", "huge"), "unknown preset 'huge'; valid: full, cpu, release, small, study"),
    ],
)
def test_reproduce_rejects_bad_arguments(
    tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    result = run(tmp_path, *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert not (tmp_path / "data").exists()


def test_reproduce_rejects_an_unknown_model_before_any_work(tmp_path: Path) -> None:
    result = run(tmp_path, "model_a", "study", MODELS="aae lensfit3")
    assert result.returncode == 2
    assert "unknown model 'lensfit3' in MODELS; valid: " in result.stderr
    assert not (tmp_path / "data").exists()


@pytest.mark.slow
def test_the_study_preset_draws_the_study_substructure_and_fits_its_four_models(
    tmp_path: Path,
) -> None:
    sizes = {"N_TRAIN": "16", "N_VAL": "8", "N_VAL_SUB": "2", "N_TEST": "4", "EPOCHS": "1"}
    result = run(
        tmp_path, "model_a", "study", **sizes, BATCH_SIZE="8", IMAGE_SIZE="32", WORKERS="1",
        DEVICE="cpu", FIT_ARGS=TINY_FIT, PARAMETER_GRID="3",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    manifest = json.loads((tmp_path / "data" / "manifest.json").read_text())
    assert manifest["substructure"] == "study"
    assert manifest["parameter_grid"]["size"] == 3  # PARAMETER_GRID: the study's sampler
    # its two controls: every class on the no_sub grid; own grids without substructure
    shared = json.loads((tmp_path / "data-shared" / "manifest.json").read_text())
    assert shared["parameter_grid"]["shared"] and shared["substructure"] == "study"
    nosignal = json.loads((tmp_path / "data-nosignal" / "manifest.json").read_text())
    assert nosignal["subhalo_mass_fraction"] == 1e-6 and not nosignal["parameter_grid"]["shared"]
    for control in ("shared", "nosignal"):
        assert (tmp_path / f"report-{control}" / "metrics.json").is_file()
    assert "own grids, no substructure" in result.stdout
    assert "| aae | " in result.stdout.split("the study's sampler and its controls")[-1]
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["aae", "dcae", "rbm", "vae"]
    doc = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert set(doc["models"]) == {"aae", "dcae", "rbm", "vae"}


def test_reproduce_refuses_existing_outputs(tmp_path: Path) -> None:
    (tmp_path / "report").mkdir()
    result = run(tmp_path, "model_a", "small")
    assert result.returncode == 2
    assert "OVERWRITE=1" in result.stderr and str(tmp_path / "report") in result.stderr
    assert not (tmp_path / "data").exists()  # refused before simulating anything


@pytest.mark.slow
def test_reproduce_runs_end_to_end_on_tiny_data(tmp_path: Path) -> None:
    sizes = {"N_TRAIN": "16", "N_VAL": "8", "N_TEST": "6", "EPOCHS": "1", "BATCH_SIZE": "8"}
    result = run(
        tmp_path, "model_b", "small", **sizes, IMAGE_SIZE="32", WORKERS="1", DEVICE="cpu",
        FIT_ARGS=TINY_FIT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "# DeepLense anomaly evaluation: model_b" in result.stdout  # the report is printed
    report = tmp_path / "report"
    assert {p.name for p in report.iterdir()} == {
        "metrics.json", "report.md", "roc.png", "examples.png"
    }  # fmt: skip
    doc = json.loads((report / "metrics.json").read_text())
    assert doc["dataset"] == "model_b"
    assert doc["n_test_images"] == {"no_sub": 6, "sphere": 6, "vort": 6}
    assert set(doc["models"]) == set(models.list_models())
    for name, entry in doc["models"].items():
        config = read_config(tmp_path / "ckpt" / name)
        assert config.calibration is not None
        assert config.metrics == entry["metrics"]  # --update-checkpoints is on
        assert config.training.epochs == 1
        assert config.training.extra["weights_dtype"] == "float16"  # the default
    # A second run refuses to replace any of it.
    again = run(tmp_path, "model_b", "small", **sizes)
    assert again.returncode == 2 and "OVERWRITE=1" in again.stderr
    # RESUME=1 after a cut-off run: finished models are kept, the missing one is trained.
    shutil.rmtree(tmp_path / "ckpt" / "vae")
    kept = (tmp_path / "ckpt" / "dcae" / "model.safetensors").stat().st_mtime_ns
    shutil.rmtree(tmp_path / "report")
    resumed = run(
        tmp_path, "model_b", "small", **sizes, DEVICE="cpu", FIT_ARGS=TINY_FIT, RESUME="1"
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "dcae: " in resumed.stdout and "is finished; kept" in resumed.stdout
    assert (tmp_path / "ckpt" / "dcae" / "model.safetensors").stat().st_mtime_ns == kept
    assert read_config(tmp_path / "ckpt" / "vae").calibration is not None

"""Evaluation: metrics as REFERENCE.md defines them, the report folder, checkpoint metrics."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import wasserstein_distance
from sklearn.metrics import roc_auc_score

from models.checkpoint import load_checkpoint, read_config, write_config
from models.selection import choose_default_model
from tests.conftest import tiny_images
from training.__main__ import main
from training.evaluate import class_metrics, evaluate_checkpoints
from training.report import PUBLISHED_AUC, render_markdown

N_NORMAL, N_SUB = 24, 12


def write_dataset(root: Path, dataset: str | None = "model_a") -> Path:
    """A tiny labelled dataset: val/no_sub and test/{no_sub,sphere,vort} stacks (N, 32, 32)."""
    for split in ("val", "test"):
        (root / split).mkdir(parents=True)
    np.save(root / "val" / "no_sub.npy", tiny_images(32, seed=1)[:, 0])
    np.save(root / "test" / "no_sub.npy", tiny_images(N_NORMAL, seed=2)[:, 0])
    np.save(root / "test" / "sphere.npy", tiny_images(N_SUB, seed=3)[:, 0])
    np.save(root / "test" / "vort.npy", tiny_images(N_SUB, seed=4)[:, 0])
    if dataset is not None:
        (root / "manifest.json").write_text(json.dumps({"dataset": dataset}))
    return root


@pytest.fixture
def checkpoints(tiny_checkpoints: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny checkpoints (some tests rewrite config.json)."""
    return Path(shutil.copytree(tiny_checkpoints, tmp_path / "ckpt"))


def test_class_metrics_match_hand_computed_numbers() -> None:
    losses = {
        "no_sub": np.array([0.1, 0.2, 0.3, 0.4]),
        "sphere": np.array([0.25, 0.5]),
        "vort": np.array([0.6, 0.7]),
    }
    metrics, curves = class_metrics(losses, threshold=0.35)
    # sphere: 0.25 beats 2 of 4 normals, 0.5 beats 4 of 4 -> 6/8; vort beats all -> 1.
    assert metrics["auc_sphere"] == pytest.approx(0.75)
    assert metrics["auc_vort"] == pytest.approx(1.0)
    assert metrics["auc_sub"] == pytest.approx(14 / 16)
    assert metrics["test_fpr"] == pytest.approx(0.25)  # only 0.4 > 0.35
    assert metrics["test_tpr_sub"] == pytest.approx(0.75)
    assert metrics["test_tpr_sphere"] == pytest.approx(0.5)
    fpr, tpr = curves["sub"]
    assert fpr[0] == 0 and tpr[-1] == 1 and fpr[-1] == 1


def test_class_metrics_without_threshold_has_no_rates() -> None:
    losses = {"no_sub": np.array([0.1, 0.2]), "vort": np.array([0.3, 0.05])}
    metrics, curves = class_metrics(losses, threshold=None)
    assert "test_fpr" not in metrics and "threshold" not in metrics
    assert set(curves) == {"sub", "vort"}
    assert metrics["auc_vort"] == pytest.approx(0.5)


def test_evaluation_matches_sklearn_and_scipy(tiny_checkpoints: Path, tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "data")
    result = evaluate_checkpoints(tiny_checkpoints, data, device="cpu", names=["dcae"])
    metrics = result.models["dcae"].metrics
    model = load_checkpoint(tiny_checkpoints / "dcae").model
    images = {c: np.load(data / "test" / f"{c}.npy")[:, None] for c in ("no_sub", "sphere", "vort")}
    with torch.no_grad():
        recon = {c: model.reconstruct(torch.from_numpy(x)).numpy() for c, x in images.items()}
    mse = {c: ((images[c] - recon[c]) ** 2).mean(axis=(1, 2, 3)) for c in images}
    expected_w1 = np.mean(
        [
            wasserstein_distance(x[0].sum(axis=0), x_hat[0].sum(axis=0))
            for x, x_hat in zip(images["no_sub"], recon["no_sub"], strict=True)
        ]
    )
    assert metrics["w1_no_sub"] == pytest.approx(expected_w1, rel=1e-5)
    y = np.r_[np.zeros(N_NORMAL), np.ones(2 * N_SUB)]
    scores = np.concatenate([mse["no_sub"], mse["sphere"], mse["vort"]])
    assert metrics["auc_sub"] == pytest.approx(roc_auc_score(y, scores), abs=1e-9)
    assert metrics["mse_vort"] == pytest.approx(mse["vort"].mean(), rel=1e-5)
    spread = mse["no_sub"].std() / mse["no_sub"].mean()
    assert metrics["mse_spread_no_sub"] == pytest.approx(spread, rel=1e-4)
    threshold = read_config(tiny_checkpoints / "dcae").calibration.threshold
    assert metrics["test_fpr"] == pytest.approx(np.mean(mse["no_sub"] > threshold))
    assert result.dataset == "model_a"
    assert result.n_images == {"no_sub": N_NORMAL, "sphere": N_SUB, "vort": N_SUB}


def test_evaluate_cli_writes_the_report(checkpoints: Path, tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "data")
    out = tmp_path / "report"
    code = main(["evaluate", "--checkpoints", str(checkpoints), "--data", str(data),
                 "--out", str(out), "--device", "cpu", "--examples", "2"])  # fmt: skip
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["metrics.json", "report.md", "roc.png", "examples.png"]
    )
    doc = json.loads((out / "metrics.json").read_text())
    assert set(doc["models"]) == {p.name for p in checkpoints.iterdir()}
    for name, entry in doc["models"].items():
        for key in ("auc_sub", "auc_sphere", "auc_vort", "w1_no_sub", "mse_no_sub",
                    "mse_sphere", "mse_vort", "test_fpr", "test_tpr_sub", "auc_mse_sub",
                    "auc_chi2_sub", "auc_chi2_psf_vort", "auc_chi2_psf_light_sphere",
                    "spread_ratio", "loss_ratio"):  # fmt: skip
            assert np.isfinite(entry["metrics"][key]), (name, key)
        # The default score's AUCs are repeated without the score's name.
        assert entry["metrics"]["auc_sub"] == entry["metrics"]["auc_mse_sub"]
        assert entry["published"]["auc_sub"] == PUBLISHED_AUC["model_a"].get(name)  # lensfit: none
    for png in ("roc.png", "examples.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "report.md").read_text()
    assert "| aae |" in report and "0.93207" in report and "0.22117" in report
    assert "| aae | chi2_psf |" in report  # every score's AUCs
    spread = doc["models"]["aae"]["metrics"]["mse_spread_no_sub"]
    assert f"({100 * spread:.0f}%)" in report  # the reconstruction error's spread
    # Random tiny models barely depend on their input: the health check says so loudly.
    assert "COLLAPSED" in report or "NO BETTER THAN THE MEAN IMAGE" in report
    # Without --update-checkpoints the checkpoints keep their (empty) metrics.
    assert read_config(checkpoints / "aae").metrics == {}
    assert not list(tmp_path.glob(".report*"))  # no temp folder left behind


def test_evaluate_refuses_an_existing_report_unless_overwrite(
    checkpoints: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_dataset(tmp_path / "data")
    out = tmp_path / "report"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    args = ["evaluate", "--checkpoints", str(checkpoints), "--data", str(data),
            "--out", str(out), "--device", "cpu", "--model", "rbm"]  # fmt: skip
    assert main(args) == 2
    assert "exists" in capsys.readouterr().err
    assert (out / "keep.txt").exists()
    assert main([*args, "--overwrite"]) == 0
    assert not (out / "keep.txt").exists() and (out / "metrics.json").exists()


def test_update_checkpoints_stores_the_metrics(checkpoints: Path, tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "data")
    out = tmp_path / "report"
    args = ["evaluate", "--checkpoints", str(checkpoints), "--data", str(data),
            "--out", str(out), "--device", "cpu", "--update-checkpoints"]  # fmt: skip
    assert main(args) == 0
    doc = json.loads((out / "metrics.json").read_text())
    for name, entry in doc["models"].items():
        stored = read_config(checkpoints / name).metrics
        assert stored == entry["metrics"]
        assert load_checkpoint(checkpoints / name).config.metrics["auc_sub"] == stored["auc_sub"]
    # Every card records the same default choice, made by the service's rule.
    names = list(doc["models"])
    records = [read_config(checkpoints / n).training.extra["service_default"] for n in names]
    assert all(r == records[0] for r in records)
    cards = {n: read_config(checkpoints / n) for n in doc["models"]}
    assert records[0] == choose_default_model(cards).as_record()
    # Evaluating one model records the choice among every checkpoint of its root, in every
    # card of the root: one whose record is missing (a model added since) gets it too, and
    # its metrics stay as they were.
    other = names[-1] if names[-1] != "dcae" else names[0]
    card = read_config(checkpoints / other)
    extra = {k: v for k, v in card.training.extra.items() if k != "service_default"}
    write_config(
        card.model_copy(update={"training": card.training.model_copy(update={"extra": extra})}),
        checkpoints / other,
    )
    assert main([*args[:-1], "--overwrite", "--model", "dcae", "--update-checkpoints"]) == 0
    assert read_config(checkpoints / "dcae").training.extra["service_default"] == records[0]
    refreshed = read_config(checkpoints / other)
    assert refreshed.training.extra["service_default"] == records[0]
    assert refreshed.metrics == card.metrics


def test_evaluate_without_labelled_test_set_fails_cleanly(
    checkpoints: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    (data / "test").mkdir(parents=True)
    np.save(data / "test" / "sphere.npy", tiny_images(4)[:, 0])
    args = ["evaluate", "--checkpoints", str(checkpoints), "--data", str(data),
            "--out", str(tmp_path / "r"), "--device", "cpu"]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and "no_sub" in last and str(data / "test") in last
    assert not (tmp_path / "r").exists()


def test_report_compares_with_the_right_published_table(
    tiny_checkpoints: Path, tmp_path: Path
) -> None:
    data = write_dataset(tmp_path / "data", dataset="model_b")
    result = evaluate_checkpoints(tiny_checkpoints, data, device="cpu", names=["vae"])
    text = render_markdown(result)
    assert "0.73545" in text and "0.16617" in text
    assert "0.8991" not in text  # Model A's VAE AUC is not shown for Model B
    assert result.dataset == "model_b"

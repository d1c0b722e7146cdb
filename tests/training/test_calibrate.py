"""`python -m training calibrate`: thresholds from val no_sub scores, stored atomically."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from deeplense.calibration import calibration_from_scores, youden_threshold
from deeplense.inference import score_array
from deeplense.vocabulary import MANIFEST_FILE, MANIFEST_FORMAT
from models.card import CheckpointConfig
from models.checkpoint import load_checkpoint, read_config
from models.selection import choose_default_model
from tests.conftest import tiny_images
from training.__main__ import main
from training.calibrate import ScoreCalibrations, with_substructure
from training.default_record import RECORD_KEY, recorded_choice


def write_val(root: Path, n: int = 50) -> Path:
    (root / "val").mkdir(parents=True)
    np.save(root / "val" / "no_sub.npy", tiny_images(n, seed=7)[:, 0])
    return root


def write_labelled(root: Path, split: str) -> None:
    (root / split).mkdir(parents=True, exist_ok=True)
    if split != "val":
        np.save(root / split / "no_sub.npy", tiny_images(20, seed=8)[:, 0])
    np.save(root / split / "vort.npy", tiny_images(20, seed=9)[:, 0])


@pytest.fixture
def checkpoints(tiny_checkpoints: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_checkpoints, tmp_path / "ckpt"))


def without_record(card: CheckpointConfig) -> CheckpointConfig:
    """`card` without its record of the set's default model."""
    extra = {k: v for k, v in card.training.extra.items() if k != RECORD_KEY}
    return card.model_copy(update={"training": card.training.model_copy(update={"extra": extra})})


def _val_scores(checkpoint: Path, data: Path) -> np.ndarray:
    model = load_checkpoint(checkpoint).model
    return score_array(model, np.load(data / "val" / "no_sub.npy")[:, None]).loss


def test_calibrate_sets_threshold_at_the_requested_fpr(
    checkpoints: Path, tiny_checkpoints: Path, tmp_path: Path
) -> None:
    data = write_val(tmp_path / "data")
    before = read_config(checkpoints / "dcae")
    args = ["calibrate", "--checkpoints", str(checkpoints), "--model", "dcae",
            "--data", str(data), "--fpr", "0.2", "--device", "cpu"]  # fmt: skip
    assert main(args) == 0
    config = read_config(checkpoints / "dcae")
    assert set(config.calibrations) == {"mse", "chi2", "chi2_psf", "chi2_psf_light"}
    # No labelled validation images: the default is the bounds' best score, said so.
    assert config.default_score == "chi2_psf" and "no labelled" in str(config.default_score_reason)
    cal = config.calibrations["mse"]
    scores = _val_scores(checkpoints / "dcae", data)
    assert cal.fpr == 0.2 and cal.n_images == 50
    assert cal.threshold == pytest.approx(np.quantile(scores, 0.8))
    assert np.mean(scores > cal.threshold) == pytest.approx(0.2, abs=0.02)
    assert len(cal.quantiles) == 101
    assert cal.quantiles[0] == pytest.approx(scores.min())
    assert cal.quantiles[-1] == pytest.approx(scores.max())
    assert cal.youden_threshold is None and cal.validation_auc is None  # no labels in val
    assert cal.threshold != before.calibrations["mse"].threshold  # it really was rewritten
    # Only the chosen model was calibrated; every card of the set records the service's
    # default choice (it depends on the calibrations), and nothing else of config.json moved.
    cards = {f.name: read_config(f) for f in checkpoints.iterdir()}
    choice = choose_default_model(cards).as_record()
    for name, card in cards.items():
        assert recorded_choice(card) == choice
        assert without_record(card) == without_record(read_config(tiny_checkpoints / name)) or (
            name == "dcae"
        )
    after = read_config(checkpoints / "dcae")
    assert after.arguments == before.arguments
    assert without_record(after).training == without_record(before).training
    assert not list((checkpoints / "dcae").glob(".*tmp"))


def test_labelled_validation_gives_youden_auc_and_the_default_score(
    checkpoints: Path, tmp_path: Path
) -> None:
    data = write_val(tmp_path / "data")
    write_labelled(data, "val")
    assert main(["calibrate", "--checkpoints", str(checkpoints), "--data", str(data)]) == 0
    for folder in checkpoints.iterdir():
        config = read_config(folder)
        model = load_checkpoint(folder).model
        names = list(config.calibrations)
        # Every score of a class from one pass (the scores of a pass are those of separate ones).
        normals, vorts = (
            score_array(model, np.load(data / "val" / f"{c}.npy")[:, None], scores=names).scores
            for c in ("no_sub", "vort")
        )
        aucs = {}
        for score, cal in config.calibrations.items():
            assert cal.fpr == 0.05 and cal.youden_threshold is not None
            normal, vort = normals[score], vorts[score]
            labels = np.r_[np.zeros(len(normal)), np.ones(len(vort))]
            expected = youden_threshold(np.r_[normal, vort], labels)
            assert cal.youden_threshold == pytest.approx(expected)
            assert cal.validation_auc == pytest.approx(roc_auc_score(labels, np.r_[normal, vort]))
            assert cal.validation_tpr == pytest.approx(np.mean(vort > cal.threshold))
            aucs[score] = cal.validation_auc
        best = max(round(v, 4) for v in aucs.values())
        assert round(aucs[config.default_score], 4) == best  # the best validation AUC
        assert "validation" in str(config.default_score_reason)
    # With detection rates at one FPR in every card, the set's choice follows the rate rule.
    cards = {f.name: read_config(f) for f in checkpoints.iterdir()}
    choice = choose_default_model(cards)
    assert "best detection rate" in choice.reason
    assert all(recorded_choice(card) == choice.as_record() for card in cards.values())


def test_the_test_split_is_never_used_to_calibrate(checkpoints: Path, tmp_path: Path) -> None:
    data = write_val(tmp_path / "data")
    write_labelled(data, "test")  # labelled test images only: nothing may come from them
    assert main(["calibrate", "--checkpoints", str(checkpoints), "--data", str(data)]) == 0
    for folder in checkpoints.iterdir():
        for cal in read_config(folder).calibrations.values():
            assert cal.youden_threshold is None and cal.validation_auc is None
            assert cal.validation_tpr is None


def test_calibrate_unknown_model_is_a_one_line_error(
    checkpoints: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_val(tmp_path / "data")
    code = main(["calibrate", "--checkpoints", str(checkpoints), "--model", "nope",
                 "--data", str(data)])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "nope" in err and "dcae" in err


def test_calibrate_without_val_images_fails_cleanly(
    checkpoints: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    (data / "val").mkdir(parents=True)
    np.save(data / "val" / "sphere.npy", tiny_images(5)[:, 0])
    before = (checkpoints / "vae" / "config.json").read_bytes()
    assert main(["calibrate", "--checkpoints", str(checkpoints), "--data", str(data)]) == 2
    assert "no_sub" in capsys.readouterr().err
    assert (checkpoints / "vae" / "config.json").read_bytes() == before


@pytest.mark.parametrize("fpr", ["0", "1", "1.5", "abc"])
def test_calibrate_rejects_a_bad_fpr(checkpoints: Path, tmp_path: Path, fpr: str) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["calibrate", "--checkpoints", str(checkpoints), "--data", str(tmp_path),
              "--fpr", fpr])  # fmt: skip
    assert exc.value.code == 2


def test_a_diverged_model_is_a_clear_error_not_a_calibration(tmp_path: Path) -> None:
    import torch

    from deeplense.errors import DatasetError
    from tests.conftest import tiny_model
    from training.calibrate import calibrate_model

    model = tiny_model("dcae")
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    val = {"no_sub": tiny_images(8, seed=3)}
    with pytest.raises(DatasetError, match="dcae: non-finite .* training diverged"):
        calibrate_model(model, val, psf_sigma_pixels=2.0)


@pytest.mark.parametrize(
    ("manifest", "expected"),
    [
        ({"substructure": "stated", "subhalo_mass_fraction": 0.1}, "holding 10% of the lens"),
        ({"substructure": "study", "subhalo_mass_fraction": 0.01}, "the study's subhalo draws"),
        ({"format_version": 1, "subhalo_mass_fraction": 0.1}, None),  # not our manifest
        (None, None),  # the user's own images: no manifest
    ],
)
def test_the_default_scores_reason_names_the_validation_substructure(
    tmp_path: Path, manifest: dict[str, object] | None, expected: str | None
) -> None:
    if manifest is not None:
        (tmp_path / MANIFEST_FILE).write_text(
            json.dumps({"format_version": MANIFEST_FORMAT, **manifest})
        )
    rng = np.random.default_rng(0)
    normal, vort = rng.normal(size=20), rng.normal(1.0, size=20)
    labelled = np.r_[normal, vort], np.r_[np.zeros(20), np.ones(20)]
    calibrated = ScoreCalibrations(
        {"mse": calibration_from_scores(normal, 0.05, "model_r", *labelled)}, "mse", "best"
    )
    reason = with_substructure(calibrated, tmp_path).reason
    if expected is None:
        assert reason == "best"
    else:
        assert reason.startswith("best; validation substructure: ") and expected in reason
    unlabelled = ScoreCalibrations({"mse": calibration_from_scores(normal)}, "chi2_psf", "none")
    assert with_substructure(unlabelled, tmp_path).reason == "none"  # nothing was chosen on it


def test_the_validation_detection_rate_counts_flags_at_the_threshold() -> None:
    """validation_tpr is the share of substructure lenses scoring above the threshold, the
    same strict > as the judge: here the threshold is 9.5 (95th percentile of 0..10 in
    11 equal steps, interpolated) and 2 of the 4 lenses lie above it."""
    normal = np.arange(11.0)
    sub = np.array([9.0, 9.5, 10.0, 20.0])
    labelled = (np.r_[normal, sub], np.r_[np.zeros(11), np.ones(4)])
    cal = calibration_from_scores(normal, 0.05, "model_r", *labelled)
    assert cal.threshold == pytest.approx(9.5)
    assert cal.validation_tpr == pytest.approx(0.5)
    assert calibration_from_scores(normal).validation_tpr is None

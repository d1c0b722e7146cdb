"""`python -m training calibrate`: thresholds from val no_sub scores, stored atomically."""

import shutil
from pathlib import Path

import numpy as np
import pytest

from deeplense.scoring import score_array
from models.checkpoint import load_checkpoint, read_config
from tests.conftest import tiny_images
from training.__main__ import main
from training.calibrate import youden_threshold


def write_val(root: Path, n: int = 50) -> Path:
    (root / "val").mkdir(parents=True)
    np.save(root / "val" / "no_sub.npy", tiny_images(n, seed=7)[:, 0])
    return root


def write_test(root: Path) -> None:
    (root / "test").mkdir(parents=True)
    np.save(root / "test" / "no_sub.npy", tiny_images(20, seed=8)[:, 0])
    np.save(root / "test" / "vort.npy", tiny_images(20, seed=9)[:, 0])


@pytest.fixture
def checkpoints(tiny_checkpoints: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_checkpoints, tmp_path / "ckpt"))


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
    cal = read_config(checkpoints / "dcae").calibration
    assert cal is not None
    scores = _val_scores(checkpoints / "dcae", data)
    assert cal.fpr == 0.2 and cal.n_images == 50
    assert cal.threshold == pytest.approx(np.quantile(scores, 0.8))
    assert np.mean(scores > cal.threshold) == pytest.approx(0.2, abs=0.02)
    assert len(cal.quantiles) == 101
    assert cal.quantiles[0] == pytest.approx(scores.min())
    assert cal.quantiles[-1] == pytest.approx(scores.max())
    assert cal.youden_threshold is None  # no labelled test set
    assert cal.threshold != before.calibration.threshold  # it really was rewritten
    # Only the chosen model was touched; the rest of config.json is unchanged.
    assert read_config(checkpoints / "aae") == read_config(tiny_checkpoints / "aae")
    after = read_config(checkpoints / "dcae")
    assert after.arguments == before.arguments and after.training == before.training
    assert not list((checkpoints / "dcae").glob(".*tmp"))


def test_calibrate_all_adds_youden_with_labelled_test(checkpoints: Path, tmp_path: Path) -> None:
    data = write_val(tmp_path / "data")
    write_test(data)
    assert main(["calibrate", "--checkpoints", str(checkpoints), "--data", str(data)]) == 0
    for folder in checkpoints.iterdir():
        cal = read_config(folder).calibration
        assert cal is not None and cal.fpr == 0.05 and cal.youden_threshold is not None
        model = load_checkpoint(folder).model
        normal = score_array(model, np.load(data / "test" / "no_sub.npy")[:, None]).loss
        vort = score_array(model, np.load(data / "test" / "vort.npy")[:, None]).loss
        labels = np.r_[np.zeros(len(normal)), np.ones(len(vort))]
        expected = youden_threshold(np.r_[normal, vort], labels)
        assert cal.youden_threshold == pytest.approx(expected)


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

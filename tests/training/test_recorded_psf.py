"""A simulated set with one PSF that is not the checkpoint's (the mismatch suite's wide_psf):
calibrate and evaluate tell every model that PSF, as an upload carrying it is told, instead of
the card's; a set drawn with the card's PSF is prepared as before."""

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from deeplense.instrument import kernel_sigma_pixels
from deeplense.observation import RequestInstrument
from models.checkpoint import load_checkpoint
from tests.lenses import SMALL
from tests.training.test_per_image_psf import cli_score
from training.calibrate import val_observations
from training.datasets import load_split
from training.evaluate import evaluate_checkpoints
from training.image_psfs import recorded_psf_differs, split_psfs, tells_own_psf
from training.report import render_markdown
from training.simulate import simulate_dataset

WIDE_SIGMA_PIXELS = 1.2  # wide_psf: 0.12" on SMALL's 0.1" pixels (the card's is 0.1")


def small_set(folder: Path, departure: str | None) -> Path:
    return simulate_dataset(
        "model_a", folder, n_train=0, n_val=2, n_test=2, seed=3, workers=1, progress=False,
        config=SMALL, n_val_sub=1, departure=departure,
    )  # fmt: skip


@pytest.fixture(scope="module")
def wide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return small_set(tmp_path_factory.mktemp("recorded") / "wide", "wide_psf")


def test_only_a_recorded_psf_other_than_the_cards_is_told(
    tiny_checkpoints: Path, wide: Path, tmp_path: Path
) -> None:
    card = load_checkpoint(tiny_checkpoints / "lensfit").config.input.instrument()
    plain = small_set(tmp_path / "plain", None)
    assert recorded_psf_differs(wide, card) and tells_own_psf(wide, card)
    assert not recorded_psf_differs(plain, card) and not tells_own_psf(plain, card)
    assert split_psfs(plain, "test", {"no_sub": 2}, card) is None
    assert split_psfs(wide, "test", {"no_sub": 2}) is None  # no card: nothing to compare
    psfs = split_psfs(wide, "test", {"no_sub": 2, "vort": 1}, card)
    assert psfs is not None and [len(k) for k in psfs.values()] == [2, 1]
    for kernel in (*psfs["no_sub"], *psfs["vort"]):
        assert kernel.sum() == pytest.approx(1.0)
        assert kernel_sigma_pixels(kernel) == pytest.approx(WIDE_SIGMA_PIXELS, rel=0.02)


def test_evaluate_tells_lensfit_the_datasets_psf_as_an_upload_would(
    tiny_checkpoints: Path, wide: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    evaluation = evaluate_checkpoints(tiny_checkpoints, wide, "cpu", names=["lensfit"])
    assert "the dataset's" in evaluation.psf and 'sigma 0.12"' in evaluation.psf
    assert "the dataset's" in render_markdown(evaluation)
    metrics = evaluation.models["lensfit"].metrics
    card = load_checkpoint(tiny_checkpoints / "lensfit").config.input.instrument()
    psfs = split_psfs(wide, "test", {"no_sub": 2}, card)
    assert psfs is not None
    np.save(tmp_path / "psf.npy", psfs["no_sub"][0])
    told, nominal = [], []
    for image in load_split(wide, "test")["no_sub"]:
        scale = ("--pixel-scale", "0.1")
        told.append(cli_score(tiny_checkpoints, "lensfit", image, tmp_path, "--psf",
                              str(tmp_path / "psf.npy"), *scale))  # fmt: skip
        nominal.append(cli_score(tiny_checkpoints, "lensfit", image, tmp_path, *scale))
    assert metrics["mse_no_sub"] == pytest.approx(np.mean(told), rel=1e-4)
    assert metrics["mse_no_sub"] != pytest.approx(np.mean(nominal), rel=1e-3)
    # the dataset's record wins over a flag, as a FITS file's own PSF does
    with caplog.at_level(logging.WARNING, logger="training.evaluate"):
        flagged = evaluate_checkpoints(
            tiny_checkpoints,
            wide,
            "cpu",
            names=["lensfit"],
            request=RequestInstrument(pixel_scale=0.1),
        )
    assert "--psf and --pixel-scale are not used" in caplog.text
    assert flagged.models["lensfit"].metrics["mse_no_sub"] == metrics["mse_no_sub"]


def test_calibration_prepares_val_with_the_datasets_psf(tiny_checkpoints: Path, wide: Path) -> None:
    loaded = load_checkpoint(tiny_checkpoints / "lensfit")
    val = load_split(wide, "val")
    observed = val_observations(wide, val, loaded.model, loaded.config.input.instrument())
    assert observed is not None and set(observed) == set(val)
    for cls, observations in observed.items():
        assert len(observations) == len(val[cls])
        for o in observations:  # LensFit fits each image on its own 0.1" pixels
            assert o.psf_sigma_pixels == pytest.approx(WIDE_SIGMA_PIXELS, rel=0.02)


def test_a_simulated_sets_record_wins_over_the_flags(
    tiny_checkpoints: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    plain = small_set(tmp_path / "plain", None)  # drawn with the card's PSF
    without = evaluate_checkpoints(tiny_checkpoints, plain, "cpu", names=["dcae"])
    with caplog.at_level(logging.WARNING, logger="training.evaluate"):
        flagged = evaluate_checkpoints(
            tiny_checkpoints, plain, "cpu", names=["dcae"],
            request=RequestInstrument(psf=np.ones((3, 3)) / 9.0, pixel_scale=0.2),
        )  # fmt: skip
    assert "--psf and --pixel-scale are not used" in caplog.text
    assert flagged.psf == without.psf == "the checkpoint's"
    for key in ("mse_no_sub", "mse_sphere", "auc_mse_sub"):
        assert flagged.models["dcae"].metrics[key] == without.models["dcae"].metrics[key]


def test_a_checkpoint_of_the_sets_psf_is_not_scored_on_images_prepared_for_another(
    tiny_checkpoints: Path, wide: Path, tmp_path: Path
) -> None:
    """Two checkpoints of one image size in one folder: "a" trained through the card's 0.1"
    PSF (told the set's 0.12" as an upload would be) and "b" trained through 0.12" (the set's
    own: its plain stack). "b" is scored as it is alone, not on the images prepared for "a"."""
    root = tmp_path / "mixed"
    root.mkdir()
    for name in ("a", "b"):
        shutil.copytree(tiny_checkpoints / "dcae", root / name)
    config = json.loads((root / "b" / "config.json").read_text())
    config["input"]["psf_sigma_arcsec"] = 0.12
    (root / "b" / "config.json").write_text(json.dumps(config))
    assert load_checkpoint(root / "b").config.input.psf_sigma_arcsec == pytest.approx(0.12)
    both = evaluate_checkpoints(root, wide, "cpu")
    alone = evaluate_checkpoints(root, wide, "cpu", names=["b"])
    for key in ("mse_no_sub", "mse_sphere", "auc_mse_sub"):
        assert both.models["b"].metrics[key] == alone.models["b"].metrics[key], key

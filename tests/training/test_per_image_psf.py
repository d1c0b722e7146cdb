"""A simulated split whose images each have their own PSF (Model R): calibrate and evaluate
tell every model each image's PSF, exactly as an upload carrying that PSF is told, and never
the dataset's nominal one; a dataset with one PSF for all is unchanged."""

import csv
from pathlib import Path

import numpy as np
import pytest

from deeplense.errors import DatasetError
from deeplense.instrument import kernel_sigma_pixels
from models.checkpoint import load_checkpoint
from tests.lenses import SMALL, tiny_model_r
from training.__main__ import main
from training.calibrate import calibrate_model, val_observations
from training.datasets import load_split
from training.evaluate import evaluate_checkpoints
from training.image_psfs import has_per_image_psf, split_psfs
from training.report import render_markdown
from training.simulate import simulate_dataset


@pytest.fixture(scope="module")
def model_r(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("psfs") / "r"
    return simulate_dataset(
        "model_r", folder, n_train=0, n_val=3, n_test=2, seed=5, workers=1, progress=False,
        config=SMALL,
    )  # fmt: skip


def test_each_images_psf_is_read_back_in_index_order(model_r: Path, tmp_path: Path) -> None:
    assert has_per_image_psf(model_r)
    psfs = split_psfs(model_r, "test", {"no_sub": 2, "vort": 1})
    assert psfs is not None and len(psfs["no_sub"]) == 2 and len(psfs["vort"]) == 1
    with (model_r / "parameters.csv").open() as fh:
        rows = {
            (r["class"], int(r["index"])): r for r in csv.DictReader(fh) if r["split"] == "test"
        }
    for i, kernel in enumerate(psfs["no_sub"]):
        assert kernel.sum() == pytest.approx(1.0)
        fwhm = float(rows[("no_sub", i)]["psf_fwhm"])  # arcsec, on 0.1" pixels
        half = kernel[kernel.shape[0] // 2]
        assert abs((half >= half.max() / 2).sum() * 0.1 - fwhm) <= 0.1 + 1e-9
    model_a = tiny_model_r(tmp_path / "a", n_test=1)  # Model R's manifest, for the negative:
    manifest = (model_a / "manifest.json").read_text().replace('"per-image"', '"gaussian"')
    (model_a / "manifest.json").write_text(manifest)
    assert not has_per_image_psf(model_a) and split_psfs(model_a, "test", {"no_sub": 1}) is None


def test_a_simulated_split_missing_a_row_is_a_clear_error(model_r: Path) -> None:
    with pytest.raises(DatasetError, match="no row for test/sphere image 2"):
        split_psfs(model_r, "test", {"sphere": 6})


def cli_score(checkpoints: Path, model: str, image: np.ndarray, tmp: Path, *flags: str) -> float:
    """The mse `deeplense score` gives one image (1, n, n) saved as a file, with `flags`."""
    path, out = tmp / "image.npy", tmp / "scores.csv"
    np.save(path, image[0])
    code = main(["score", "--checkpoints", str(checkpoints), "--model", model, "--device",
                 "cpu", "--score", "mse", "--out", str(out), "--overwrite", *flags,
                 str(path)])  # fmt: skip
    assert code == 0
    with out.open() as fh:
        return float(next(csv.DictReader(fh))["anomaly_score"])


def test_evaluate_tells_lensfit_each_images_own_psf_as_an_upload_would(
    tiny_checkpoints: Path, model_r: Path, tmp_path: Path
) -> None:
    evaluation = evaluate_checkpoints(tiny_checkpoints, model_r, "cpu", names=["lensfit"])
    assert "each image's own" in evaluation.psf
    assert "each image's own" in render_markdown(evaluation)
    metrics = evaluation.models["lensfit"].metrics
    test = load_split(model_r, "test")
    psfs = split_psfs(model_r, "test", {c: len(x) for c, x in test.items()})
    assert psfs is not None
    for cls, images in test.items():
        own, nominal = [], []
        for i, image in enumerate(images):
            np.save(tmp_path / "psf.npy", psfs[cls][i])
            scale = ("--pixel-scale", "0.1")
            own.append(cli_score(tiny_checkpoints, "lensfit", image, tmp_path, "--psf",
                                 str(tmp_path / "psf.npy"), *scale))  # fmt: skip
            nominal.append(cli_score(tiny_checkpoints, "lensfit", image, tmp_path, *scale))
        assert metrics[f"mse_{cls}"] == pytest.approx(np.mean(own), rel=1e-4)
        assert metrics[f"mse_{cls}"] != pytest.approx(np.mean(nominal), rel=1e-3)


def test_calibration_prepares_val_with_each_images_psf(
    tiny_checkpoints: Path, model_r: Path
) -> None:
    loaded = load_checkpoint(tiny_checkpoints / "lensfit")
    card = loaded.config.input.instrument()
    val = load_split(model_r, "val")
    observed = val_observations(model_r, val, loaded.model, card)
    assert observed is not None and set(observed) == set(val)
    psfs = split_psfs(model_r, "val", {c: len(x) for c, x in val.items()})
    assert psfs is not None
    for cls, observations in observed.items():
        assert len(observations) == len(val[cls])
        for o, kernel in zip(observations, psfs[cls], strict=True):
            # LensFit fits the image on its own 0.1" pixels, with its own PSF (or the
            # card's, where the two are within 5%)
            assert o.psf_sigma_pixels == pytest.approx(kernel_sigma_pixels(kernel), rel=0.06)
    told = calibrate_model(loaded.model, val, 2.0, observed=observed)
    nominal = calibrate_model(loaded.model, val, 2.0)
    assert told.calibrations["mse"].threshold != pytest.approx(
        nominal.calibrations["mse"].threshold, rel=1e-3
    )


def test_a_dataset_with_one_psf_is_prepared_as_before(
    tiny_checkpoints: Path, tmp_path: Path
) -> None:
    data = simulate_dataset(
        "model_a", tmp_path / "a", n_train=0, n_val=2, n_test=2, seed=1, workers=1,
        progress=False, config=SMALL,
    )  # fmt: skip
    loaded = load_checkpoint(tiny_checkpoints / "dcae")
    val = load_split(data, "val", image_size=loaded.model.image_size)
    assert val_observations(data, val, loaded.model, loaded.config.input.instrument()) is None
    evaluation = evaluate_checkpoints(tiny_checkpoints, data, "cpu", names=["dcae"])
    assert evaluation.psf == "the checkpoint's"

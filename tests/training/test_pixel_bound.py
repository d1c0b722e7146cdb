"""The pixelated-source bound (training.pixel_bound, bench/oracle_auc.py --source pixel) on a
tiny Model R set: at the true lens it fits normal lenses better than shapelets, and the bench
reports it with its two scores of the fit."""

from pathlib import Path

import numpy as np
import pytest
import torch

from deeplense.lensing.pixel_source import PixelSourceConfig
from deeplense.noise import estimate_noise
from tests.bench_scripts import load_bench
from tests.lenses import FLEXIBLE, tiny_model_r
from training.flexible_bound import flexible_refit, read_rows
from training.pixel_bound import PIXEL_SCORES, pixel_refit

PIXEL = PixelSourceConfig(FLEXIBLE, source_pixels=20, half_width=1.5, core=0.3)


@pytest.fixture(scope="module")
def model_r(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model_r(tmp_path_factory.mktemp("pix") / "r")


def test_pixel_refit_at_the_truth_fits_normal_lenses_better_than_shapelets(
    model_r: Path,
) -> None:
    """At the same (true) lens, the pixelated source leaves a normal lens near the noise
    (measured chi2/pixel 0.99 and 1.50 on this 0.1"/px grid), the order-4 shapelets of
    the same lens not (2.8 and 3.8)."""
    rows = read_rows(model_r, "test", 2)
    images = np.load(model_r / "test" / "no_sub.npy", allow_pickle=False)
    ordered = [rows[("no_sub", i)] for i in range(2)]
    fits = pixel_refit(images, ordered, PIXEL, 0.1)
    shapelet = flexible_refit(images, ordered, FLEXIBLE, 0.1, steps=0).refit
    x = torch.from_numpy(images.astype(np.float64))
    sigma = estimate_noise(x, 1.0).numpy()

    def chi2(refit: np.ndarray) -> np.ndarray:
        return (((images - refit) / sigma) ** 2).mean(axis=(1, 2, 3))

    assert fits.refit.shape == images.shape
    assert (chi2(fits.refit) < 1.75).all() and (chi2(fits.refit) < 0.6 * chi2(shapelet)).all()
    assert set(fits.scores) == set(PIXEL_SCORES)
    cost = fits.scores["pixel_cost"]
    assert (cost >= fits.chi2).all() and np.isfinite(fits.scores["neg_log_evidence"]).all()


def test_oracle_gives_the_pixel_bound_and_its_scores(model_r: Path) -> None:
    scores = load_bench("oracle_auc").bound_scores(
        model_r, 2, refit=False, psf=1.0, flexible=FLEXIBLE, pixel=PIXEL, pixel_mass="truth"
    )
    assert set(scores) == {"exact", "pixel"}  # at the truth: no shapelet refit
    assert set(PIXEL_SCORES) <= set(scores["pixel"]) and "chi2_psf_light" in scores["pixel"]
    for per_class in scores["pixel"].values():
        assert set(per_class) == {"no_sub", "sphere", "vort"}
        assert all(v.shape == (2,) and np.isfinite(v).all() for v in per_class.values())


def test_pixel_residuals_lists_every_image_and_each_scores_auc(
    model_r: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["pixel_residuals.py", str(model_r), "--split", "test", "--n", "2"]
    argv += ["--source-pixels", "12", "--core", "0.3"]
    monkeypatch.setattr("sys.argv", argv)
    assert load_bench("pixel_residuals").main() == 0
    out = capsys.readouterr().out
    lines = [
        line for line in out.splitlines() if line.startswith(("| no_sub", "| sphere", "| vort"))
    ]
    assert len(lines) == 6
    for score in ("chi2_psf_light", *PIXEL_SCORES):
        assert f"- {score}: " in out

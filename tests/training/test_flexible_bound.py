"""The flexible-model bound (training.flexible_bound, bench/oracle_auc.py --flexible) on tiny
Model R and Model A sets: it starts at each image's true lens and PSF and only improves the
fit from there."""

import math
from pathlib import Path

import numpy as np
import pytest

from deeplense.lensing.flexible import INDEX, FlexibleConfig
from tests.bench_scripts import load_bench
from training.flexible_bound import flexible_refit, psf_kernel, read_rows, truth_theta
from training.lensing.render import SimConfig
from training.simulate import simulate_dataset

SMALL = SimConfig(image_size=48, field_of_view=4.8)  # 0.1"/px
FLEXIBLE = FlexibleConfig(image_size=48, pixel_scale=0.1, shapelet_order=4, supersampling=1)


@pytest.fixture(scope="module")
def model_r(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return simulate_dataset(
        "model_r", tmp_path_factory.mktemp("flex") / "r", n_train=0, n_val=0, n_test=2,
        seed=5, workers=1, progress=False, config=SMALL,
    )  # fmt: skip


def test_truth_theta_reads_model_rs_mass_and_light(model_r: Path) -> None:
    row = read_rows(model_r, "test", 1)[("no_sub", 0)]
    theta = truth_theta(row)
    assert theta[INDEX["theta_e"]] == float(row["theta_e"])
    assert theta[INDEX["slope"]] == float(row["mass_slope"])
    q = float(row["mass_q"])
    e = math.hypot(theta[INDEX["mass_e1"]], theta[INDEX["mass_e2"]])
    assert e == pytest.approx((1 - q) / (1 + q))
    assert theta[INDEX["center_x"]] == float(row["lens_x"])


def test_psf_kernel_is_the_images_own(model_r: Path) -> None:
    for row in read_rows(model_r, "test", 2).values():
        kernel = psf_kernel(row, 0.1, 0.1)
        assert kernel.shape[0] % 2 == 1 and float(kernel.sum()) == pytest.approx(1.0)
        half = kernel[kernel.shape[0] // 2]
        peak = float(half.max())
        wide = float((half >= peak / 2).sum())  # pixels above half maximum along a row
        assert abs(wide * 0.1 - float(row["psf_fwhm"])) <= 0.1 + 1e-9


def test_refit_from_the_truth_only_improves_the_fit(model_r: Path) -> None:
    rows = read_rows(model_r, "test", 2)
    images = np.load(model_r / "test" / "sphere.npy", allow_pickle=False)
    ordered = [rows[("sphere", i)] for i in range(len(images))]
    none = flexible_refit(images, ordered, FLEXIBLE, 0.1, steps=0, chunk=2)
    some = flexible_refit(images, ordered, FLEXIBLE, 0.1, steps=4, chunk=2)
    assert np.array_equal(none.theta, none.start)

    def misfit(refit: np.ndarray) -> np.ndarray:
        return ((images.astype(np.float64) - refit) ** 2).sum(axis=(1, 2, 3))

    assert (misfit(some.refit) <= misfit(none.refit) * (1 + 1e-6)).all()
    assert some.refit.shape == images.shape and np.isfinite(some.refit).all()


def test_oracle_gives_model_r_the_flexible_bound_only(model_r: Path) -> None:
    psf = 1.0  # pixels, the matched filter's
    scores = load_bench("oracle_auc").bound_scores(
        model_r, 2, refit=False, psf=psf, flexible=FLEXIBLE
    )
    assert set(scores) == {"flexible"}  # the exact bound draws Model A's family
    for per_class in scores["flexible"].values():
        assert set(per_class) == {"no_sub", "sphere", "vort"}
        assert all(v.shape == (2,) and np.isfinite(v).all() for v in per_class.values())

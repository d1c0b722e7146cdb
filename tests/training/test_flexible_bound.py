"""The flexible-model bound (training.flexible_bound, bench/oracle_auc.py --flexible) on tiny
Model R and Model A sets: it starts at each image's true lens and PSF and only improves the
fit from there; a mass prior holds the mass where it is centred."""

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from deeplense.lensing.flexible import INDEX, MASS, NAMES
from deeplense.noise import estimate_noise
from tests.bench_scripts import load_bench
from tests.lenses import FLEXIBLE, tiny_model_r
from training.bounds import exact_reconstruction, load_test_params, signal_snr2, sim_config
from training.flexible_bound import (
    MASS_STD_FLOOR,
    FlexibleFits,
    MassPrior,
    flexible_refit,
    mass_prior,
    psf_kernel,
    read_rows,
    truth_theta,
)


@pytest.fixture(scope="module")
def model_r(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model_r(tmp_path_factory.mktemp("flex") / "r")


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


def test_oracle_gives_model_r_the_exact_and_flexible_bounds(model_r: Path) -> None:
    psf = 1.0  # pixels, the matched filter's
    scores = load_bench("oracle_auc").bound_scores(
        model_r, 2, refit=True, psf=psf, flexible=FLEXIBLE
    )
    assert set(scores) == {"exact", "flexible"}  # the rigid refit draws Model A's family
    for bound in scores.values():
        for per_class in bound.values():
            assert set(per_class) == {"no_sub", "sphere", "vort"}
            assert all(v.shape == (2,) and np.isfinite(v).all() for v in per_class.values())


def test_the_exact_bound_renders_model_rs_departures(model_r: Path) -> None:
    """A Model R no_sub image less its true smooth lens is noise (chi-square per pixel near
    1); the same lens without its departures (Model A's SIS, Sersic light and source) is not."""
    config = sim_config(model_r)
    params = load_test_params(model_r, 2)
    images = np.load(model_r / "test" / "no_sub.npy", allow_pickle=False).astype(np.float64)
    sigma = estimate_noise(torch.from_numpy(images), config.psf_sigma / config.pixel_scale)
    for i in range(2):
        assert params[("no_sub", i)].realism is not None
        exact = exact_reconstruction(images[i, 0], params[("no_sub", i)], config)
        plain = exact_reconstruction(
            images[i, 0], dataclasses.replace(params[("no_sub", i)], realism=None), config
        )
        w = 1.0 / sigma[i, 0].numpy()
        chi2 = float(np.mean(((images[i, 0] - exact) * w) ** 2))
        chi2_plain = float(np.mean(((images[i, 0] - plain) * w) ** 2))
        assert 0.5 < chi2 < 1.6, chi2
        assert chi2_plain > 2 * chi2, (chi2, chi2_plain)


def _mass_error(fits: FlexibleFits) -> np.ndarray:
    """Each image's summed distance from its true mass parameters (N,)."""
    mass = [INDEX[name] for name in MASS]
    return np.abs(fits.theta - fits.start)[:, mass].sum(axis=1)


def test_a_tight_prior_at_the_truth_holds_the_mass_there(model_r: Path) -> None:
    """The subhalos pull the free mass away from the truth (measured: 0.70 and 0.45 summed
    over the 8 parameters); a prior of sigma 0.001 centred there holds it (0.07, 0.01)."""
    rows = read_rows(model_r, "test", 2)
    images = np.load(model_r / "test" / "sphere.npy", allow_pickle=False)
    ordered = [rows[("sphere", i)] for i in range(len(images))]
    std = np.full(len(NAMES), 0.1)
    prior = MassPrior("truth", 0.01, population_mean=np.zeros(len(NAMES)), population_std=std)
    free = flexible_refit(images, ordered, FLEXIBLE, 0.1, steps=4, chunk=2)
    held = flexible_refit(images, ordered, FLEXIBLE, 0.1, steps=4, chunk=2, prior=prior)
    assert (_mass_error(free) > 0).all()
    assert (_mass_error(held) < 0.5 * _mass_error(free)).all()
    light = [INDEX[name] for name in NAMES if name not in MASS]
    assert not np.array_equal(held.theta[:, light], held.start[:, light])  # still free


def test_mass_prior_reads_the_population_and_floors_a_constant(tmp_path: Path) -> None:
    population = tiny_model_r(tmp_path / "pop", n_train=6, n_test=0, seed=3)
    prior, split = mass_prior(population, "population", 0.5)
    assert split == "train"
    truths = np.stack([truth_theta(r) for r in read_rows(population, "train", 6).values()])
    assert np.allclose(prior.population_mean, truths.mean(axis=0))
    assert prior.population_std[INDEX["theta_e"]] == MASS_STD_FLOOR  # Model R's is fixed
    inv_var = prior.inverse_variance()
    for name in NAMES:
        assert (inv_var[INDEX[name]] > 0) == (name in MASS)
    start = truths[:2]
    assert np.allclose(prior.mean(start), truths.mean(axis=0))
    assert np.array_equal(mass_prior(population, "truth", 0.5)[0].mean(start), start)
    with pytest.raises(ValueError, match="valid"):
        mass_prior(population, "median", 0.5)  # type: ignore[arg-type]


def test_annulus_chi2_puts_a_central_misfit_in_the_first_ring() -> None:
    residuals = load_bench("flexible_residuals")
    whitened = np.zeros((1, 48, 48))
    whitened[0, 23:25, 23:25] = 3.0  # within 0.1" of the centre at 0.1"/px
    rings = residuals.annulus_chi2(whitened, 0.1)
    assert rings.shape == (1, len(residuals.ANNULI) - 1)
    assert rings[0, 0] > 1.0 and np.allclose(rings[0, 1:][np.isfinite(rings[0, 1:])], 0.0)


def test_flexible_residuals_lists_every_image(model_r: Path) -> None:
    lines = load_bench("flexible_residuals").residual_table(
        model_r, "test", 2, FLEXIBLE, None, model_r
    )
    rows = [line for line in lines[2:] if line.startswith("| ")]
    assert len(rows) == 6  # 2 images x no_sub, sphere, vort
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[0] in ("no_sub", "sphere", "vort")
        assert all(np.isfinite(float(c)) for c in cells[2:4])


def test_signal_snr2_is_zero_without_subhalos_and_positive_with_them(model_r: Path) -> None:
    assert np.array_equal(signal_snr2(model_r, "no_sub", 2), np.zeros(2))
    for cls in ("sphere", "vort"):
        snr2 = signal_snr2(model_r, cls, 2)
        assert snr2.shape == (2,) and np.isfinite(snr2).all() and (snr2 > 0).all()

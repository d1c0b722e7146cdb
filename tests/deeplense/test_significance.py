"""Goodness of fit against the degrees of freedom a per-image fit left."""

import numpy as np
from scipy.stats import chi2

from deeplense.significance import goodness_of_fit


def test_pure_noise_at_its_degrees_of_freedom_is_unremarkable() -> None:
    rng = np.random.default_rng(0)
    used, fitted = 2000, 150
    # residuals of a linear fit of `fitted` parameters to white noise: chi2 ~ chi2(used - fitted)
    sums = chi2.rvs(used - fitted, size=4000, random_state=rng)
    fit = goodness_of_fit(sums, np.full(4000, used), fitted)
    assert abs(np.median(fit.chi2_per_dof) - 1.0) < 0.01
    assert abs(np.mean(fit.p_value < 0.05) - 0.05) < 0.012  # calibrated p-values
    # counting the pixels alone (no parameters fitted) would call the fit too good
    naive = goodness_of_fit(sums, np.full(4000, used), 0)
    assert np.mean(naive.p_value < 0.05) < 0.001


def test_sigma_matches_the_p_value_and_stays_finite_far_out() -> None:
    fit = goodness_of_fit(np.array([1000.0, 1200.0, 1e7]), np.array([1010, 1010, 1010]), 10)
    assert np.allclose(fit.sigma[:2], [0.0, 4.2], atol=0.1)
    assert fit.p_value[2] == 0.0 and np.isfinite(fit.sigma[2]) and fit.sigma[2] > 100

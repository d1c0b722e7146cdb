"""The shared metrics: per-image W1 against SciPy's reference, the AUC's standard error
against simulation."""

import numpy as np
import torch
from scipy.stats import wasserstein_distance

from deeplense.metrics import auc_standard_error, column_w1, roc_auc


def test_column_w1_equals_scipy_on_column_sums() -> None:
    rng = np.random.default_rng(0)
    x, x_hat = rng.random((2, 3, 1, 20, 24)).astype(np.float32)
    ours = column_w1(torch.from_numpy(x), torch.from_numpy(x_hat)).numpy()
    x64, xh64 = x.astype(np.float64), x_hat.astype(np.float64)
    expected = [
        wasserstein_distance(a[0].sum(axis=0), b[0].sum(axis=0))
        for a, b in zip(x64, xh64, strict=True)
    ]
    np.testing.assert_allclose(ours, expected, rtol=1e-6)


def test_column_w1_is_zero_for_a_perfect_reconstruction() -> None:
    x = torch.rand(2, 1, 16, 16)
    assert torch.all(column_w1(x, x.clone()) == 0)


def test_auc_standard_error_matches_the_spread_of_simulated_aucs() -> None:
    """Hanley-McNeil against 2000 simulated experiments of 40 anomalous and 20 normal scores:
    at no separation (AUC 0.5) and at a shift giving about 0.76."""
    rng = np.random.default_rng(0)
    for shift in (0.0, 1.0):
        aucs = [roc_auc(rng.normal(size=20), rng.normal(loc=shift, size=40)) for _ in range(2000)]
        expected = auc_standard_error(float(np.mean(aucs)), 40, 20)
        assert abs(np.std(aucs) / expected - 1.0) < 0.15, (np.std(aucs), expected)
    assert auc_standard_error(1.0, 40, 20) == 0.0

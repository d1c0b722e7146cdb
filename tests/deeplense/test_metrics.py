"""The shared per-image metrics against SciPy's reference implementations."""

import numpy as np
import torch
from scipy.stats import wasserstein_distance

from deeplense.metrics import column_w1


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

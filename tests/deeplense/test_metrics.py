"""The shared per-image metrics against SciPy's reference implementations."""

import numpy as np
import torch
from scipy.ndimage import gaussian_filter
from scipy.stats import wasserstein_distance

from deeplense.metrics import column_w1, smoothed_residual_error


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


def test_smoothed_residual_error_equals_scipy_gaussian_filter() -> None:
    rng = np.random.default_rng(1)
    x, x_hat = rng.random((2, 2, 1, 30, 30)).astype(np.float32)
    ours = smoothed_residual_error(torch.from_numpy(x), torch.from_numpy(x_hat), 2.0).numpy()
    expected = [
        np.mean(
            gaussian_filter((a[0] - b[0]).astype(np.float64), 2.0, mode="mirror", truncate=3.0) ** 2
        )
        for a, b in zip(x, x_hat, strict=True)
    ]
    np.testing.assert_allclose(ours, expected, rtol=1e-5)


def test_smoothing_suppresses_white_noise_but_keeps_a_psf_wide_bump() -> None:
    rng = np.random.default_rng(2)
    noise = torch.from_numpy(0.01 * rng.standard_normal((1, 1, 64, 64)).astype(np.float32))
    yy, xx = np.mgrid[:64, :64]
    bump = np.exp(-((xx - 32) ** 2 + (yy - 32) ** 2) / (2 * 2.0**2)).astype(np.float32)
    bump_t = torch.from_numpy(0.01 * bump)[None, None]
    zero = torch.zeros_like(noise)
    noise_ratio = smoothed_residual_error(noise, zero, 2.0) / (noise**2).mean()
    bump_ratio = smoothed_residual_error(bump_t, zero, 2.0) / (bump_t**2).mean()
    assert noise_ratio.item() < 0.05  # white noise loses over 95% of its power
    assert bump_ratio.item() > 0.2  # a PSF-wide feature keeps a good part of it

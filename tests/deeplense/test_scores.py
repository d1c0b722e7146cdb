"""The named scores: known answers on hand-made residuals, and the matched filter."""

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from deeplense.errors import ScoreNotOfferedError, UnknownScoreError
from deeplense.scores import (
    SCORES,
    check_offered,
    compute_scores,
    drawn_from_image,
    get_score,
    list_scores,
    psf_filter,
    scores_for,
)

PSF = 2.0  # pixels


def test_every_study_score_is_registered() -> None:
    assert {"mse", "chi2", "chi2_psf"} <= set(list_scores())
    with pytest.raises(UnknownScoreError, match="valid scores: .*chi2_psf"):
        get_score("psnr")


def test_known_answers_on_a_constant_residual() -> None:
    # x - x_hat = 0.02 everywhere, noise sigma 0.01 everywhere: the residual is 2 sigma.
    x = torch.full((2, 1, 32, 32), 0.52)
    x_hat = torch.full((2, 1, 32, 32), 0.50)
    sigma = torch.full((2, 1, 32, 32), 0.01)
    mse = get_score("mse")(x, x_hat, None, PSF)
    chi2 = get_score("chi2")(x, x_hat, sigma, PSF)
    chi2_psf = get_score("chi2_psf")(x, x_hat, sigma, PSF)
    np.testing.assert_allclose(mse.numpy(), [4e-4, 4e-4], rtol=1e-5)
    np.testing.assert_allclose(chi2.numpy(), [4.0, 4.0], rtol=1e-5)
    # Smoothing keeps a constant; dividing by the filter's noise gain sqrt(sum k^2) = 1 /
    # (2 sqrt(pi) sigma) for a 2-D Gaussian (nearly: the kernel is cut at 3 sigma) boosts it.
    gain = 1.0 / (2.0 * np.sqrt(np.pi) * PSF)
    np.testing.assert_allclose(chi2_psf.numpy(), 4.0 / gain**2, rtol=0.02)


def test_pure_noise_scores_one_in_noise_units() -> None:
    g = torch.Generator().manual_seed(0)
    sigma = 0.005 + 0.02 * torch.rand((4, 1, 96, 96), generator=g)  # any noise map
    x_hat = torch.rand((4, 1, 96, 96), generator=g)
    x = x_hat + sigma * torch.randn((4, 1, 96, 96), generator=g)
    chi2 = get_score("chi2")(x, x_hat, sigma, PSF).numpy()
    chi2_psf = get_score("chi2_psf")(x, x_hat, sigma, PSF).numpy()
    np.testing.assert_allclose(chi2, 1.0, atol=0.03)
    np.testing.assert_allclose(chi2_psf, 1.0, atol=0.2)  # ~100 independent PSF patches


def test_the_matched_filter_equals_scipy_and_prefers_a_psf_wide_bump() -> None:
    rng = np.random.default_rng(1)
    m = rng.standard_normal((1, 1, 40, 40))
    ours = psf_filter(torch.from_numpy(m), PSF).numpy()[0, 0]
    k = np.exp(-0.5 * (np.arange(-6, 7) / PSF) ** 2)
    gain = np.sqrt(np.sum((k / k.sum()) ** 2) ** 2)
    expected = gaussian_filter(m[0, 0], PSF, mode="mirror", truncate=3.0) / gain
    np.testing.assert_allclose(ours, expected, rtol=1e-6, atol=1e-9)
    # A PSF-shaped 1-sigma-peak bump in white noise: chi2_psf sees it far above chi2.
    yy, xx = np.mgrid[:64, :64]
    bump = np.exp(-((xx - 32) ** 2 + (yy - 32) ** 2) / (2 * PSF**2))
    x = torch.from_numpy(bump)[None, None]
    zero, one = torch.zeros_like(x), torch.ones_like(x)
    excess_chi2 = get_score("chi2")(x, zero, one, PSF).item() * 64 * 64  # summed over pixels
    excess_psf = get_score("chi2_psf")(x, zero, one, PSF).item() * 64 * 64
    assert excess_psf > 3 * excess_chi2  # matched filtering concentrates the signal


def test_compute_scores_gives_every_score_and_the_map_asked_for() -> None:
    x = torch.rand((3, 1, 48, 48))
    x_hat = (x + 0.01 * torch.randn_like(x)).clamp(0, 1)
    pure = scores_for(None)  # the scores of (image, reconstruction, noise map)
    assert set(pure) == {n for n, s in SCORES.items() if not s.drawn_by_fit}
    out = compute_scores(x, x_hat, pure, PSF, map_of="chi2_psf")
    assert set(out.values) == set(pure)
    assert all(v.shape == (3,) and v.dtype == torch.float64 for v in out.values.values())
    assert out.residual_map is not None and out.residual_map.shape == (3, 1, 48, 48)
    mean_square = out.residual_map.double().pow(2).flatten(1).mean(1)
    torch.testing.assert_close(mean_square, out.values["chi2_psf"])  # map and score agree


class _Fits:
    fit_scores = ("imaging_gain",)


def test_a_score_drawn_by_a_fit_is_its_maps_sum_of_squares_over_the_valid_pixels() -> None:
    x = torch.rand((2, 1, 16, 16))
    fit_map = torch.randn((2, 1, 16, 16))
    valid = torch.ones((2, 1, 16, 16), dtype=torch.bool)
    valid[1, :, :5] = False
    out = compute_scores(
        x, x, ["imaging_gain", "chi2"], PSF, map_of="imaging_gain", valid=valid,
        fit_maps={"imaging_gain": fit_map},
    )  # fmt: skip
    expected = (fit_map.double() * valid).pow(2).flatten(1).sum(1)
    torch.testing.assert_close(out.values["imaging_gain"], expected)
    assert out.residual_map is not None and float(out.residual_map[1, :, :5].abs().max()) == 0
    with pytest.raises(ValueError, match="drawn by the model's fit"):
        compute_scores(x, x, ["imaging_gain"], PSF)  # no fit behind it
    with pytest.raises(ValueError, match="drawn by a model's own fit"):
        get_score("imaging_gain")(x, x, None, PSF)
    assert "imaging_gain" in scores_for(_Fits()) and "imaging_gain" not in scores_for(object())
    check_offered(_Fits(), ["imaging_gain", "mse"], "fits")
    with pytest.raises(ScoreNotOfferedError, match="'plain' cannot draw score 'imaging_gain'"):
        check_offered(object(), ["mse", "imaging_gain"], "plain")


def test_a_tool_with_only_a_reconstruction_reads_an_image_score_for_a_fit_drawn_one() -> None:
    assert drawn_from_image("imaging_gain") == "chi2_psf_light"
    assert drawn_from_image("imaging_gain", fallback="chi2") == "chi2"
    assert (
        drawn_from_image("mse") == "mse" and drawn_from_image("chi2_psf_light") == "chi2_psf_light"
    )
    with pytest.raises(UnknownScoreError):
        drawn_from_image("nope")


def test_chi2_psf_light_counts_only_where_the_reconstruction_has_light() -> None:
    sigma = torch.full((1, 1, 64, 64), 0.01)
    x_hat = torch.zeros((1, 1, 64, 64))
    x_hat[..., 20:44, 20:44] = 0.5  # the light: a bright square, 50 sigma above the sky
    x = x_hat.clone()
    x[..., :, :6] += 0.05  # a 5-sigma residual on the sky only, > 6 px (the filter) away
    light = get_score("chi2_psf_light")(x, x_hat, sigma, PSF).item()
    assert light == 0.0  # nothing where the light is
    assert get_score("chi2_psf")(x, x_hat, sigma, PSF).item() > 1.0  # the full image sees it
    # A constant 2-sigma residual: inside the region the map is 2 / gain, as for chi2_psf.
    y = x_hat + 0.02
    gain = 1.0 / (2.0 * np.sqrt(np.pi) * PSF)
    value = get_score("chi2_psf_light")(y, x_hat, sigma, PSF).item()
    assert value == pytest.approx(4.0 / gain**2, rel=0.02)

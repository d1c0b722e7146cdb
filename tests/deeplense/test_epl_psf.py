"""The elliptical power-law deflection and the Moffat PSF against lenstronomy and scipy."""

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from deeplense.lensing import psf
from deeplense.lensing.epl import epl_deflection, epl_hessian
from deeplense.lensing.psf import convolve, moffat_alpha, moffat_kernel


def _t(value: float) -> torch.Tensor:
    return torch.tensor([value], dtype=torch.float64)


@pytest.mark.parametrize(
    ("theta_e", "gamma", "q", "phi", "cx", "cy"),
    [
        (1.2, 2.0, 0.6, 0.3, 0.02, -0.01),  # an SIE, offset
        (1.0, 1.8, 0.5, 2.0, 0.0, 0.0),  # shallower than isothermal, the roundest allowed
        (1.3, 2.2, 0.95, 1.0, -0.03, 0.02),  # steeper
        (1.2, 2.0, 1.0, 0.0, 0.0, 0.0),  # the SIS
    ],
)
def test_epl_deflection_equals_lenstronomys_epl(
    theta_e: float, gamma: float, q: float, phi: float, cx: float, cy: float
) -> None:
    from lenstronomy.LensModel.Profiles.epl import EPL

    c = np.linspace(-2.5, 2.5, 11)
    x, y = np.meshgrid(c, c + 0.013)  # off the centre
    ax, ay = epl_deflection(
        torch.from_numpy(x)[None], torch.from_numpy(y)[None],
        _t(theta_e), _t(gamma), _t(q), _t(phi), _t(cx), _t(cy),
    )  # fmt: skip
    e = (1 - q) / (1 + q)
    rx, ry = EPL().derivatives(x, y, theta_e, gamma, e * math.cos(2 * phi),
                               e * math.sin(2 * phi), cx, cy)  # fmt: skip
    # lenstronomy sums the hypergeometric function with scipy: 1e-10 at gamma != 2
    np.testing.assert_allclose(ax[0].numpy(), rx, rtol=0, atol=1e-9)
    np.testing.assert_allclose(ay[0].numpy(), ry, rtol=0, atol=1e-9)


@pytest.mark.parametrize(
    ("theta_e", "gamma", "q", "phi", "cx", "cy"),
    [(1.2, 2.0, 0.6, 0.3, 0.02, -0.01), (1.0, 1.8, 0.5, 2.0, 0.0, 0.0),
     (1.3, 2.2, 0.95, 1.0, -0.03, 0.02), (1.2, 2.0, 1.0, 0.0, 0.0, 0.0)],
)  # fmt: skip
def test_epl_hessian_equals_lenstronomys_and_the_deflections_derivative(
    theta_e: float, gamma: float, q: float, phi: float, cx: float, cy: float
) -> None:
    from lenstronomy.LensModel.Profiles.epl import EPL

    c = np.linspace(-2.5, 2.5, 11)
    x, y = np.meshgrid(c, c + 0.013)  # off the centre
    xt = torch.from_numpy(x)[None].requires_grad_(True)
    yt = torch.from_numpy(y)[None].requires_grad_(True)
    params = (_t(theta_e), _t(gamma), _t(q), _t(phi), _t(cx), _t(cy))
    ax, ay = epl_deflection(xt, yt, *params)
    fxx, fxy, fyy = epl_hessian(xt, yt, ax, ay, *params)
    e = (1 - q) / (1 + q)
    ref = EPL().hessian(x, y, theta_e, gamma, e * math.cos(2 * phi), e * math.sin(2 * phi), cx, cy)
    scale = np.abs(ref[0]).max()
    for ours, theirs in ((fxx, ref[0]), (fxy, ref[1]), (fyy, ref[3])):
        np.testing.assert_allclose(ours[0].detach().numpy(), theirs, rtol=0, atol=1e-9 * scale)
    by_autograd = [torch.autograd.grad(a.sum(), (xt, yt), retain_graph=True) for a in (ax, ay)]
    for ours, auto in ((fxx, by_autograd[0][0]), (fxy, by_autograd[0][1]),
                       (fxy, by_autograd[1][0]), (fyy, by_autograd[1][1])):  # fmt: skip
        assert torch.allclose(ours, auto, atol=1e-12 * float(auto.abs().max()))


def test_round_isothermal_epl_is_the_sis_and_gradients_flow() -> None:
    x = torch.tensor([[[0.3, -1.1], [2.0, 0.7]]], dtype=torch.float64)
    y = torch.tensor([[[0.4, 0.2], [-0.5, -1.3]]], dtype=torch.float64)
    theta_e = _t(1.2).requires_grad_()
    ax, ay = epl_deflection(x, y, theta_e, _t(2.0), _t(1.0), _t(0.7))
    r = torch.hypot(x, y)
    torch.testing.assert_close(ax, 1.2 * x / r, rtol=1e-14, atol=0)
    torch.testing.assert_close(ay, 1.2 * y / r, rtol=1e-14, atol=0)
    (ax.sum() + ay.sum()).backward()
    assert theta_e.grad is not None and torch.isfinite(theta_e.grad).all()


def test_moffat_kernel_has_lenstronomys_profile_its_fwhm_and_unit_sum() -> None:
    from lenstronomy.LightModel.Profiles.moffat import Moffat

    fwhm, beta = 4.7, 3.0  # pixels
    kernel = moffat_kernel(fwhm, beta, radius=15, supersampling=1).numpy()
    assert kernel.shape == (31, 31) and kernel.sum() == pytest.approx(1.0, abs=1e-14)
    c = np.arange(-15, 16, dtype=np.float64)
    x, y = np.meshgrid(c, c)
    ref = Moffat().function(x, y, amp=1.0, alpha=moffat_alpha(fwhm, beta), beta=beta)
    np.testing.assert_allclose(kernel, ref / ref.sum(), rtol=1e-12)
    half = Moffat().function(fwhm / 2, 0.0, 1.0, moffat_alpha(fwhm, beta), beta)
    assert half == pytest.approx(0.5, rel=1e-12)  # FWHM as defined


def test_moffat_kernel_holds_its_analytic_encircled_light() -> None:
    """Light within radius R: 1 - (1 + R^2 / alpha^2)^(1 - beta); the kernel cut at 4 FWHM
    holds the light inside that square, so its centre holds the analytic share of it."""
    fwhm, beta, radius = 3.0, 2.5, 12
    kernel = moffat_kernel(fwhm, beta, radius=radius, supersampling=9).numpy()
    alpha = moffat_alpha(fwhm, beta)
    c = np.arange(-radius, radius + 1)
    r2 = c[:, None] ** 2 + c[None, :] ** 2
    inner = kernel[r2 <= 4**2].sum()  # pixels whose centres lie within 4 pixels
    # the analytic share within 4 pixels over that within the kernel's square, to the
    # pixelisation's accuracy (pixel centres vs the circle's edge)
    within = 1 - (1 + 16 / alpha**2) ** (1 - beta)
    square = 1 - (1 + radius**2 / alpha**2) ** (1 - beta)  # inscribed circle, a lower bound
    assert inner == pytest.approx(within / square, rel=0.03)


def test_convolve_equals_scipys_nearest_mode_convolution() -> None:
    rng = np.random.default_rng(0)
    image = rng.uniform(size=(2, 1, 23, 23))
    kernel = rng.uniform(size=(7, 7))
    out = convolve(torch.from_numpy(image), torch.from_numpy(kernel)).numpy()
    for i in range(2):
        ref = ndimage.correlate(image[i, 0], kernel[::-1, ::-1], mode="nearest")
        np.testing.assert_allclose(out[i, 0], ref, rtol=0, atol=1e-13)
    with pytest.raises(ValueError, match="odd side"):
        convolve(torch.from_numpy(image), torch.ones(4, 4, dtype=torch.float64))


@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("elements", [1, 4 * 29 * 29, 2**17])
def test_convolve_in_channel_chunks_equals_scipys(
    monkeypatch: pytest.MonkeyPatch, per_image: bool, elements: int
) -> None:
    """On a CPU the channels are transformed a few at a time (CPU_FFT_ELEMENTS: one, two
    or all of them here); every chunk uses its own image's kernel."""
    monkeypatch.setattr(psf, "CPU_FFT_ELEMENTS", elements)
    rng = np.random.default_rng(1)
    image = rng.uniform(size=(2, 5, 23, 23))  # FFT size 29 for a 7-pixel kernel
    kernels = rng.uniform(size=(2, 7, 7))
    kernel = kernels if per_image else kernels[0]
    assert psf.channels_per_transform(torch.from_numpy(image), (29, 29)) == max(
        1, elements // (2 * 29 * 29)
    )
    out = convolve(torch.from_numpy(image), torch.from_numpy(kernel)).numpy()
    for i in range(2):
        for c in range(5):
            own = kernels[i] if per_image else kernels[0]
            ref = ndimage.correlate(image[i, c], own[::-1, ::-1], mode="nearest")
            np.testing.assert_allclose(out[i, c], ref, rtol=0, atol=1e-12)

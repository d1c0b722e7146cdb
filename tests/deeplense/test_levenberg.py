"""Batched Levenberg-Marquardt (deeplense.lensing.levenberg): each image's cost never rises,
it converges on a classic hard problem, and the prior pulls as a Gaussian should."""

import torch

from deeplense.lensing.levenberg import inverse_fisher_diagonal, jacobian, levenberg_marquardt


def rosenbrock(theta: torch.Tensor) -> torch.Tensor:
    """(N, 2) -> (N, 2) residuals whose squared norm is Rosenbrock's valley, minimum (1, 1)."""
    a, b = theta.unbind(dim=1)
    return torch.stack([10.0 * (b - a * a), 1.0 - a], dim=1)


def start() -> torch.Tensor:
    return torch.tensor([[-1.2, 1.0], [2.0, -1.0], [0.0, 3.0]], dtype=torch.float64)


def test_no_image_cost_ever_rises() -> None:
    costs = [
        levenberg_marquardt(rosenbrock, start(), steps).cost for steps in range(0, 25)
    ]  # (N,) each
    for before, after in zip(costs, costs[1:], strict=False):
        assert (after <= before).all()


def test_converges_to_rosenbrocks_minimum_for_every_image() -> None:
    fit = levenberg_marquardt(rosenbrock, start(), steps=60)
    assert torch.allclose(fit.theta, torch.ones(3, 2, dtype=torch.float64), atol=1e-6)
    assert (fit.cost < 1e-12).all()
    assert torch.allclose(fit.residual, rosenbrock(fit.theta))


def test_prior_gives_the_gaussian_posterior_mode() -> None:
    """Residual theta - 2 (unit variance) and prior N(0, 1 / w): the mode is 2 / (1 + w)."""
    w = torch.tensor([1.0, 3.0], dtype=torch.float64)
    fit = levenberg_marquardt(
        lambda t: t - 2.0, torch.zeros(4, 2, dtype=torch.float64), steps=30,
        prior_mean=torch.zeros(2, dtype=torch.float64), prior_inverse_variance=w,
    )  # fmt: skip
    assert torch.allclose(fit.theta, (2.0 / (1.0 + w)).expand(4, 2), atol=1e-8)


def test_forward_mode_jacobian_is_the_analytic_one() -> None:
    theta = start()
    a = theta[:, 0]
    expected = torch.zeros(3, 2, 2, dtype=torch.float64)
    expected[:, 0, 0], expected[:, 0, 1], expected[:, 1, 0] = -20.0 * a, 10.0, -1.0
    assert torch.allclose(jacobian(rosenbrock, theta), expected)


def test_a_given_jacobian_is_used() -> None:
    calls = []

    def linearise(t: torch.Tensor) -> torch.Tensor:
        calls.append(t.shape)
        return jacobian(rosenbrock, t)

    levenberg_marquardt(rosenbrock, start(), steps=3, linearise=linearise)
    assert calls == [(3, 2)] * 3


def test_the_inverse_fisher_diagonal_is_a_linear_fits_variance() -> None:
    # r = A theta - b with unit noise: theta's covariance is (A^T A)^-1
    gen = torch.Generator().manual_seed(3)
    a = torch.randn(2, 50, 3, generator=gen, dtype=torch.float64)
    expected = torch.linalg.inv(a.transpose(1, 2) @ a).diagonal(dim1=1, dim2=2)
    torch.testing.assert_close(inverse_fisher_diagonal(a.float()), expected, rtol=1e-5, atol=0)
    degenerate = torch.cat([a[:, :, :2], a[:, :, :1]], dim=2)  # the third column repeats one
    variance = inverse_fisher_diagonal(degenerate)
    assert torch.isfinite(variance).all() and (variance[:, 2] > 1e3 * expected[:, 2]).all()

"""Fitting the flexible smooth lens to images: Levenberg-Marquardt over the 13 nonlinear
parameters with the light and source solved linearly inside every evaluation.

`FlexibleProblem` is one batch's least-squares problem for `levenberg_marquardt`: the
whitened residual and its variable-projection Jacobian, sharing one linear solve at the
last evaluated parameters (LM linearises where it last accepted a step, so each step
solves once less). `fit_flexible` runs the fit, optionally under a Gaussian prior.
Images (N, 1, n, n), noise sigma the same shape (inf where masked), PSF (k, k) or (N, k, k).
"""

from dataclasses import dataclass

import torch
from torch import Tensor

from deeplense.lensing.flexible import FlexibleLens, LinearFit
from deeplense.lensing.levenberg import levenberg_marquardt


class FlexibleProblem:
    """The residual and Jacobian callbacks of one batch (module doc)."""

    def __init__(self, lens: FlexibleLens, x: Tensor, sigma: Tensor, psf: Tensor) -> None:
        self.lens, self.x, self.sigma, self.psf = lens, x, sigma, psf
        self._last: tuple[Tensor, LinearFit] | None = None

    def linear(self, theta: Tensor) -> LinearFit:
        """The design (N, n*n, K) at theta (N, 13), its best coefficients (N, K) and normal
        equations."""
        if self._last is None or not torch.equal(self._last[0], theta):
            self._last = (theta.clone(), self.lens.fit_linear(theta, self.x, self.sigma, self.psf))
        return self._last[1]

    def model(self, theta: Tensor) -> Tensor:
        """The best smooth lens at theta: (N, 1, n, n)."""
        return self.linear(theta).image().view_as(self.x)

    def residual(self, theta: Tensor) -> Tensor:
        """(N, n*n) whitened residual at theta (N, 13)."""
        return ((self.x - self.model(theta)) * self.lens.weight(self.sigma)).flatten(1)

    def jacobian(self, theta: Tensor) -> Tensor:
        """(N, n*n, 13)."""
        return self.lens.jacobian(theta, self.x, self.sigma, self.psf, linear=self.linear(theta))


@dataclass
class GaussianPrior:
    """A Gaussian prior on the 13 parameters: mean (13,), or (N, 13) for one centre per
    image, and inverse variance (13,), 0 for a parameter left free."""

    mean: Tensor
    inverse_variance: Tensor


@dataclass
class FlexibleFit:
    """The fitted parameters (N, 13), the best smooth lens (N, 1, n, n), each image's cost
    0.5 chi2 + prior penalty (N,)."""

    theta: Tensor
    model: Tensor
    cost: Tensor


def fit_flexible(
    lens: FlexibleLens,
    x: Tensor,
    sigma: Tensor,
    psf: Tensor,
    start: Tensor,
    steps: int,
    prior: GaussianPrior | None = None,
) -> FlexibleFit:
    """`steps` Levenberg-Marquardt steps from `start` (N, 13), in the dtype of x."""
    problem = FlexibleProblem(lens, x, sigma, psf)
    fit = levenberg_marquardt(
        problem.residual,
        start.to(x.dtype),
        steps,
        prior_mean=None if prior is None else prior.mean.to(x.dtype),
        prior_inverse_variance=None if prior is None else prior.inverse_variance.to(x.dtype),
        linearise=problem.jacobian,
    )
    with torch.no_grad():
        model = problem.model(fit.theta)
    return FlexibleFit(theta=fit.theta, model=model, cost=fit.cost)


__all__ = ["FlexibleFit", "FlexibleProblem", "GaussianPrior", "fit_flexible"]

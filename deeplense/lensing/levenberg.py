"""Levenberg-Marquardt, batched: many independent least-squares fits at once.

Each image n minimises 0.5 |r_n(theta_n)|^2 + 0.5 (theta_n - mu)^T diag(w) (theta_n - mu),
a whitened residual r (N, M) of its P parameters theta (N, P) plus an optional Gaussian
prior (mean mu: (P,) shared or (N, P) one per image; inverse variances w: (P,)). The
Jacobian (N, M, P) comes from P forward-mode derivatives (one pass over the batch each; the
residual must support torch's forward AD).
Each image keeps its own damping: multiplied by `ACCEPT` after a step that lowered its cost
and by `REJECT` after one that did not (the step is then discarded), so no image's cost ever
rises.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.autograd import forward_ad

from deeplense.lensing.forward_mode import dual_level

DAMPING_START = 1e-2
ACCEPT = 0.3
REJECT = 10.0
DAMPING_RANGE = (1e-7, 1e7)
JITTER = 1e-9  # on the identity, keeps the damped normal equations regular
FISHER_RIDGE = 1e-9  # share of the Fisher matrix's mean diagonal: a degenerate one inverts

Residual = Callable[[Tensor], Tensor]  # theta (N, P) -> whitened residual (N, M)


@dataclass
class Fit:
    """The fitted parameters (N, P), each image's cost (N,) and whitened residual (N, M)."""

    theta: Tensor
    cost: Tensor
    residual: Tensor


def jacobian(residual: Residual, theta: Tensor) -> Tensor:
    """d residual / d theta: (N, M, P), from P forward-mode passes."""
    columns = []
    for k in range(theta.shape[1]):
        tangent = torch.zeros_like(theta)
        tangent[:, k] = 1.0
        with dual_level():
            out = residual(forward_ad.make_dual(theta, tangent))
            columns.append(forward_ad.unpack_dual(out).tangent)  # (N, M)
    return torch.stack(columns, dim=2)


def inverse_fisher_diagonal(jac: Tensor) -> Tensor:
    """Each parameter's variance from one fit's noise: the diagonal of the inverse Fisher
    matrix (J^T J)^-1 of a whitened residual's Jacobian jac (N, M, P), float64 (N, P). A
    direction the data do not constrain gets a large variance (the ridge's), not infinity."""
    jac = jac.double()
    fisher = jac.transpose(1, 2) @ jac  # (N, P, P)
    ridge = FISHER_RIDGE * fisher.diagonal(dim1=1, dim2=2).mean(dim=1).clamp_min(1e-30)
    eye = torch.eye(jac.shape[2], dtype=fisher.dtype, device=fisher.device)
    return torch.linalg.inv(fisher + ridge.view(-1, 1, 1) * eye).diagonal(dim1=1, dim2=2)


def levenberg_marquardt(
    residual: Residual,
    theta: Tensor,
    steps: int,
    prior_mean: Tensor | None = None,
    prior_inverse_variance: Tensor | None = None,
    linearise: Callable[[Tensor], Tensor] | None = None,
) -> Fit:
    """`steps` damped Gauss-Newton steps from `theta` (N, P); see the module doc.

    `linearise(theta)` gives the Jacobian (N, M, P) when the caller has a cheaper or
    better one (default: forward mode through `residual`)."""
    linearise = linearise or (lambda t: jacobian(residual, t))
    with torch.inference_mode(False), torch.no_grad():
        theta = theta.detach().clone()
        n, p = theta.shape
        mean = torch.zeros(p, dtype=theta.dtype) if prior_mean is None else prior_mean
        inv_var = (
            torch.zeros(p, dtype=theta.dtype)
            if prior_inverse_variance is None
            else prior_inverse_variance
        ).to(theta)
        mean = mean.to(theta)

        def cost(v: Tensor, res: Tensor) -> Tensor:
            return 0.5 * res.pow(2).sum(dim=1) + 0.5 * ((v - mean) ** 2 * inv_var).sum(dim=1)

        res = residual(theta)
        current = cost(theta, res)
        damping = torch.full((n,), DAMPING_START, dtype=theta.dtype, device=theta.device)
        eye = torch.eye(p, dtype=theta.dtype, device=theta.device)
        for _ in range(steps):
            jac = linearise(theta)  # (N, M, P)
            jtj = jac.transpose(1, 2) @ jac + torch.diag(inv_var)  # (N, P, P)
            grad = (jac.transpose(1, 2) @ res.unsqueeze(2)).squeeze(2) + (theta - mean) * inv_var
            diag = torch.diagonal(jtj, dim1=1, dim2=2)
            scale = diag.mean(dim=1).clamp_min(1e-30)
            damped = jtj + damping.view(-1, 1, 1) * torch.diag_embed(diag)
            step = torch.linalg.solve(damped + JITTER * scale.view(-1, 1, 1) * eye, -grad)
            trial = theta + step
            trial_res = residual(trial)
            trial_cost = cost(trial, trial_res)
            better = torch.isfinite(trial_cost) & (trial_cost < current)
            theta = torch.where(better[:, None], trial, theta)
            res = torch.where(better[:, None], trial_res, res)
            current = torch.where(better, trial_cost, current)
            damping = torch.where(better, damping * ACCEPT, damping * REJECT)
            damping = damping.clamp(*DAMPING_RANGE)
        return Fit(theta=theta, cost=current, residual=res)


__all__ = ["Fit", "inverse_fisher_diagonal", "jacobian", "levenberg_marquardt"]

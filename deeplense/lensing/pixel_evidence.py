"""The pixelated source's linear solve, its regularisation strength chosen by the evidence.

For fixed nonlinear parameters the image is linear in the light amplitudes, the source
pixels s and the offset: d = A c + n, Gaussian noise of covariance C (diagonal, sigma^2).
The source has the Gaussian prior exp(-lambda s^T R s / 2) (`pixel_source`), the light and
offset a flat one. The most probable c minimises

    E(lambda) = chi2(c) + lambda s^T R s,    H = A^T C^-1 A + lambda R (R on s only),

and the log evidence of lambda (Suyu et al. 2006, eq. 19, with the flat-prior parameters
marginalised too; their normalisation is a constant in lambda) is

    log P(d | lambda) = -E / 2 - log det H / 2 + (N_s / 2) log lambda + log det R / 2
                        - (N_d / 2) log 2 pi - sum log sigma.

Each image's lambda maximises it: a coarse grid over log lambda, then a golden-section
search about the best point. All float64 (the light Gaussians overlap; see
`flexible.NormalEquations`).
"""

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from deeplense.lensing.pixel_source import PixelSourceConfig, pixel_design, regularisation_matrix

# The coarse grid: lambda = scale x 10^k, scale = mean diagonal of the source block of
# A^T C^-1 A over that of R (where data and prior weigh alike), k in this range.
COARSE_DECADES = tuple(float(k) for k in range(-6, 5))
GOLDEN_STEPS = 14  # then about 10^(2 x 0.618^14) ~ 1.001 in lambda
_JITTER = 1e-12  # share of the Gram matrix's mean diagonal, on every column


@dataclass
class LinearSystem:
    """One image's whitened normal equations: Gram G (K, K), right side b (K,), |d|^2 in
    noise units, and the constants of the evidence."""

    gram: Tensor
    rhs: Tensor
    data_norm: float  # sum (d / sigma)^2
    n_light: int  # light columns first, then n_source source columns, then the offset
    n_source: int
    regulariser: Tensor  # R (n_source, n_source)
    logdet_regulariser: float
    n_data: int  # pixels with weight
    log_sigma_sum: float  # sum log sigma over them

    @property
    def scale(self) -> float:
        """Where data and prior weigh alike: the source block's mean diagonal over R's."""
        block = self.gram.diagonal()[self.n_light : self.n_light + self.n_source]
        return float(block.mean().clamp_min(1e-30) / self.regulariser.diagonal().mean())


@dataclass
class LinearSolution:
    """The most probable coefficients (K,) at one lambda, and its evidence terms."""

    coef: Tensor
    log_lambda: float
    log_evidence: float
    chi2: float
    penalty: float  # lambda s^T R s


def linear_system(
    design: Tensor, x: Tensor, weight: Tensor, config: PixelSourceConfig, regulariser: Tensor,
    logdet_regulariser: float,
) -> LinearSystem:  # fmt: skip
    """The system of one image: design (M, K), image x (M,), weight 1 / sigma (M,), 0 where
    masked. Rows no source column reaches enter the light and offset block only (cheaper:
    the source columns are zero there)."""
    a = design.double() * weight.double()[:, None]  # (M, K)
    d = x.double() * weight.double()  # (M,)
    kl, ks = config.n_light, config.n_source
    reached = (a[:, kl : kl + ks] != 0).any(dim=1)  # (M,)
    gram = a[reached].T @ a[reached]
    rest = a[~reached]
    fixed = torch.tensor([*range(kl), kl + ks])  # light and offset columns
    gram[fixed[:, None], fixed[None, :]] += rest[:, fixed].T @ rest[:, fixed]
    used = weight > 0
    return LinearSystem(
        gram=gram, rhs=a.T @ d, data_norm=float(d @ d), n_light=kl, n_source=ks,
        regulariser=regulariser, logdet_regulariser=logdet_regulariser,
        n_data=int(used.sum()), log_sigma_sum=float(-torch.log(weight.double()[used]).sum()),
    )  # fmt: skip


def solve_at(system: LinearSystem, log_lambda: float) -> LinearSolution | None:
    """The most probable coefficients and the log evidence at lambda = exp(log_lambda); None
    where H is not numerically positive definite."""
    kl, ks = system.n_light, system.n_source
    lam = math.exp(log_lambda)
    h = system.gram.clone()
    h[kl : kl + ks, kl : kl + ks] += lam * system.regulariser
    jitter = _JITTER * float(system.gram.diagonal().mean().clamp_min(1e-30))
    h.diagonal().add_(jitter)
    chol, info = torch.linalg.cholesky_ex(h)
    if int(info) != 0:
        return None
    coef = torch.cholesky_solve(system.rhs[:, None], chol)[:, 0]
    s = coef[kl : kl + ks]
    penalty = lam * float(s @ (system.regulariser @ s))
    cost = system.data_norm - float(system.rhs @ coef)  # chi2 + penalty at the optimum
    logdet_h = 2.0 * float(torch.log(chol.diagonal()).sum())
    log_evidence = (
        -0.5 * cost - 0.5 * logdet_h + 0.5 * ks * log_lambda + 0.5 * system.logdet_regulariser
        - 0.5 * system.n_data * math.log(2.0 * math.pi) - system.log_sigma_sum
    )  # fmt: skip
    return LinearSolution(coef, log_lambda, log_evidence, cost - penalty, penalty)


def best_lambda(system: LinearSystem) -> LinearSolution:
    """The solution at the lambda of largest evidence (module doc)."""
    centre = math.log(system.scale)
    ln10 = math.log(10.0)
    tried = [solve_at(system, centre + k * ln10) for k in COARSE_DECADES]
    found = [t for t in tried if t is not None]
    if not found:
        raise ArithmeticError("no regularisation strength gave a positive definite system")
    best = max(found, key=lambda t: t.log_evidence)
    lo, hi = best.log_lambda - ln10, best.log_lambda + ln10
    ratio = (math.sqrt(5.0) - 1.0) / 2.0

    def value(log_lambda: float) -> LinearSolution:
        out = solve_at(system, log_lambda)
        return out if out is not None else LinearSolution(best.coef, log_lambda, -math.inf, 0, 0)

    a, b = value(hi - ratio * (hi - lo)), value(lo + ratio * (hi - lo))
    for _ in range(GOLDEN_STEPS):
        if a.log_evidence >= b.log_evidence:  # the maximum lies in [lo, b]
            hi, b = b.log_lambda, a
            a = value(hi - ratio * (hi - lo))
        else:
            lo, a = a.log_lambda, b
            b = value(lo + ratio * (hi - lo))
    return max([best, a, b], key=lambda t: t.log_evidence)


@dataclass
class PixelFit:
    """Per image: the best model (N, 1, n, n), the source (N, P, P), log lambda, log
    evidence, chi2 and the penalty lambda s^T R s (each (N,))."""

    model: Tensor
    source: Tensor
    log_lambda: Tensor
    log_evidence: Tensor
    chi2: Tensor
    penalty: Tensor


def fit_pixel_source(
    theta: Tensor, x: Tensor, sigma: Tensor, psf: Tensor, config: PixelSourceConfig
) -> PixelFit:
    """The evidence-optimal pixelated-source fit of images x (N, 1, n, n), noise sigma (same;
    inf where masked), at nonlinear parameters theta (N, 13); psf (k, k) or (N, k, k)."""
    r = regularisation_matrix(config)
    logdet_r = 2.0 * float(torch.log(torch.linalg.cholesky(r).diagonal()).sum())
    weight = torch.where(torch.isfinite(sigma) & (sigma > 0), 1.0 / sigma.double(), 0.0)
    p, kl = config.source_pixels, config.n_light
    out: dict[str, list[Tensor]] = {k: [] for k in ("model", "source", "scalars")}
    for i in range(x.shape[0]):
        kernel = psf if psf.dim() == 2 else psf[i]
        design = pixel_design(theta[i], config, kernel)  # (M, K)
        system = linear_system(design, x[i].flatten(), weight[i].flatten(), config, r, logdet_r)
        sol = best_lambda(system)
        out["model"].append((design @ sol.coef).view_as(x[i]))
        out["source"].append(sol.coef[kl : kl + config.n_source].view(p, p))
        values = [sol.log_lambda, sol.log_evidence, sol.chi2, sol.penalty]
        out["scalars"].append(torch.tensor(values, dtype=torch.float64))
    scalars = torch.stack(out["scalars"])  # (N, 4)
    return PixelFit(
        model=torch.stack(out["model"]).to(x.dtype), source=torch.stack(out["source"]),
        log_lambda=scalars[:, 0], log_evidence=scalars[:, 1], chi2=scalars[:, 2],
        penalty=scalars[:, 3],
    )  # fmt: skip


__all__ = [
    "LinearSolution",
    "LinearSystem",
    "PixelFit",
    "best_lambda",
    "fit_pixel_source",
    "linear_system",
    "solve_at",
]

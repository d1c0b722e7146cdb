"""The tests of gravitational imaging at a fitted smooth lens: how much the fit improves when
the lens may leave its prior, and when mass is added near the arcs, beyond what the smooth
lens and its source can absorb.

A chi-square over every pixel is an omnibus test: its noise grows with the number of pixels
(sqrt(2 M)), so a subhalo's few hundred units of S/N^2, partly absorbed by a free source,
hardly move it. Gravitational imaging (Koopmans 2005; Vegetti & Koopmans 2009; Vegetti et al.
2014) asks narrower questions, each a chi-square improvement of a few degrees of freedom:

- `tension`: the improvement from moving the 13 nonlinear parameters (the residual's part
  along their Jacobian; 13 degrees of freedom for a lens the model fits). A MAP fit stops
  where the data's pull balances the prior's, so this is the pull the prior resists (and what
  a last step would still gain): many subhalos inside the ring read as a change of the smooth
  mass, which a narrow prior refuses.
- `scan`: the improvement from one blob of mass, the best of K positions. To first order a
  deflection perturbation d alpha changes the lensed source by -grad S(beta) . d alpha (the
  source is seen at beta - d alpha), linear in the blob's amplitude. Templates g_k: that
  change for a unit blob (`blob_deflection`: a circular Gaussian convergence of sigma
  `width`, deflecting as a point mass, theta_sub^2 r / |r|^2, beyond a few widths; amplitude
  theta_sub^2, arcsec^2) at each point of a grid about the lens centre, through the PSF and
  the noise weights, less its part in the span of the linear bases (light, source, offset)
  and of the Jacobian (variable projection). With r the whitened residual less its part
  along the Jacobian, b_k = g_k . r and the scan is max_k max(b_k, 0)^2 / |g_k|^2 (positive
  mass only).
- `improvement`: all blobs at once under a ridge, T = b^T (C + lambda I)^-1 b, C = G^T G,
  with its expectation for noise alone, `dof` = tr(C (C + lambda I)^-1), and `excess` =
  (T - dof) / sqrt(2 dof), about a standard normal for a lens the smooth model fits.

The blob templates are orthogonal to the Jacobian, so tension + scan is the improvement from
freeing the lens and adding the best blob together (`imaging_gain`).

Units: arcsec; one image at a time (x (1, 1, n, n)): the templates are per image; the grid is
the flexible lens's (`deeplense.lensing.flexible`).
"""

from dataclasses import dataclass, field

import torch
from torch import Tensor

from deeplense.lensing.flexible import (
    INDEX,
    FlexibleLens,
    LinearFit,
    clamp_parameters,
    fitted_source,
    image_grid,
    source_plane,
    to_pixels,
)


@dataclass(frozen=True)
class PerturbationConfig:
    """Where the blobs go and how the test weighs them."""

    spacing: float = 0.2  # arcsec between blob centres (a square grid)
    width: float = 0.1  # arcsec, the blobs' Gaussian convergence sigma
    # Blobs on the grid's points within this radius (arcsec) of the lens centre, lit or not
    # (mass inside the ring perturbs the arcs from afar); 0: where the lensed source is lit
    disc_radius: float = 2.0
    lit_sigma: float = 3.0  # disc_radius 0: where the lensed source exceeds this many sigma
    max_blobs: int = 400  # disc_radius 0: the brightest this many lit positions at most
    ridge: float = 1e-3  # the joint test's lambda, a share of C's mean diagonal
    joint: bool = True  # compute the joint test (`improvement`; C is K x K)


@dataclass(frozen=True)
class PerturbationTest:
    """One image's tests (module doc), chi-square improvements: `tension` (13 dof), `scan`
    (the best blob's), at `best` (x, y) arcsec with amplitude theta_sub^2 `amplitude`
    arcsec^2 (0: no blob of positive mass improves the fit); the joint test's
    `improvement`, its noise expectation `dof` and `excess` (0 when not computed); the
    blobs' count; `gain_map` (n*n,) float64: the whitened residual's part that imaging_gain
    counts (its part along the Jacobian plus its part along the best blob's template),
    noise sigmas per pixel, its sum of squares imaging_gain."""

    tension: float
    scan: float
    best: tuple[float, float]
    amplitude: float
    improvement: float
    dof: float
    excess: float
    blobs: int
    gain_map: Tensor | None = field(default=None, repr=False, compare=False)

    @property
    def imaging_gain(self) -> float:
        """tension + scan: freeing the lens and adding the best blob, together."""
        return self.tension + self.scan


def blob_deflection(x: Tensor, y: Tensor, centres: Tensor, width: float) -> tuple[Tensor, Tensor]:
    """Deflections (K, m, m) at positions x, y (m, m) of K unit blobs at centres (K, 2): a
    Gaussian convergence of sigma `width` and Einstein radius 1 (a point mass's deflection
    r / |r|^2 times 1 - exp(-|r|^2 / (2 width^2)), finite at the centre)."""
    dx = x[None] - centres[:, 0, None, None]
    dy = y[None] - centres[:, 1, None, None]
    r2 = dx * dx + dy * dy
    small = r2 < 1e-12
    safe = torch.where(small, torch.ones_like(r2), r2)
    enclosed = -torch.expm1(-0.5 * safe / (width * width)) / safe  # (1 - e^-u) / r^2
    enclosed = torch.where(small, torch.full_like(r2, 0.5 / (width * width)), enclosed)
    return enclosed * dx, enclosed * dy


def source_gradient(
    lens: FlexibleLens, theta: Tensor, coef: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """The fitted source's value and gradient (d/d beta_x, d/d beta_y) at each sub-pixel's
    ray, three (m, m) maps, for one image's parameters theta (1, 13) and coefficients (1, K)."""
    config = lens.config
    theta = clamp_parameters(theta)
    x, y = image_grid(config, theta)
    bx, by = source_plane(theta, x, y)
    p = theta[0]
    u = (bx - p[INDEX["source_x"]]).flatten(1)
    v = (by - p[INDEX["source_y"]]).flatten(1)
    beta = torch.exp(p[INDEX["log_beta"]]).reshape(1)
    value, d_u, d_v = fitted_source(u, v, beta, coef, config)
    shape = x.shape[-2:]
    return value.view(shape), d_u.view(shape), d_v.view(shape)


def lit_centres(
    lens: FlexibleLens, source_value: Tensor, sigma: Tensor, psf: Tensor, config: PerturbationConfig
) -> Tensor:
    """Blob centres (K, 2) arcsec: the points of a square grid of `spacing` where the lensed
    source alone, through the PSF, exceeds `lit_sigma` noise sigma; the brightest
    `max_blobs`."""
    pixels = to_pixels(source_value[None, None], lens.config, psf)[0, :, 0]  # (n*n,)
    n = lens.config.image_size
    snr = (pixels.view(n, n) / sigma.view(n, n)).double()
    step = lens.config.pixel_scale
    half = (n - 1) / 2.0 * step
    ticks = torch.arange(-half, half + 1e-9, config.spacing, dtype=torch.float64)
    gy, gx = torch.meshgrid(ticks, ticks, indexing="ij")
    col = ((gx + half) / step).round().long().clamp(0, n - 1)
    row = ((gy + half) / step).round().long().clamp(0, n - 1)
    level = snr[row, col].flatten()
    keep = torch.nonzero(level > config.lit_sigma).flatten()
    keep = keep[torch.argsort(level[keep], descending=True)][: config.max_blobs]
    return torch.stack([gx.flatten()[keep], gy.flatten()[keep]], dim=1)


def disc_centres(theta: Tensor, config: PerturbationConfig) -> Tensor:
    """Blob centres (K, 2) arcsec: a square grid of `spacing` about the lens centre of
    parameters theta (13,), the points within `disc_radius`."""
    steps = int(config.disc_radius / config.spacing)
    ticks = torch.arange(-steps, steps + 1, dtype=torch.float64) * config.spacing
    gy, gx = torch.meshgrid(ticks, ticks, indexing="ij")
    inside = (gx * gx + gy * gy <= config.disc_radius**2).flatten()
    centre = theta[[INDEX["center_x"], INDEX["center_y"]]].double()
    return torch.stack([gx.flatten()[inside], gy.flatten()[inside]], dim=1) + centre


def _remove_span(columns: Tensor, basis: Tensor) -> Tensor:
    """columns (M, R) less their orthogonal projection on the span of basis (M, B), float64:
    through an orthonormal basis of it (Householder QR), so the parts removed and left are
    orthogonal to rounding however ill-conditioned the basis (the Jacobian's columns nearly
    repeat: cond up to 1e12); imaging_gain's map sums to tension + scan exactly."""
    q, _ = torch.linalg.qr(basis)  # (M, B), orthonormal columns
    return columns - q @ (q.T @ columns)


def templates(
    lens: FlexibleLens, theta: Tensor, coef: Tensor, psf: Tensor, centres: Tensor, width: float
) -> Tensor:
    """The image change per unit amplitude (theta_sub^2, arcsec^2) of a blob at each of the
    centres (K, 2), to first order, at parameters theta (1, 13) with linear coefficients
    coef (1, K_linear): (1, n*n, K) pixel values through the PSF (k, k), unwhitened."""
    _, d_u, d_v = source_gradient(lens, theta, coef)
    gx, gy = image_grid(lens.config, d_u)
    ax, ay = blob_deflection(gx[0], gy[0], centres.to(d_u), width)  # (K, m, m)
    planes = -(d_u[None] * ax + d_v[None] * ay)  # the source seen at beta - d alpha
    return to_pixels(planes[None], lens.config, psf.to(d_u))


def perturbation_test(
    lens: FlexibleLens,
    theta: Tensor,
    x: Tensor,
    sigma: Tensor,
    psf: Tensor,
    config: PerturbationConfig = PerturbationConfig(),
    linear: LinearFit | None = None,
) -> PerturbationTest:
    """The subhalo test (module doc) of one image x (1, 1, n, n), noise sigma (same shape),
    at the fitted smooth lens theta (1, 13), through the PSF (k, k); `linear`:
    `lens.fit_linear`'s answer at theta, if known. Works under torch.inference_mode too (the
    Jacobian is forward-mode: it runs outside it, on copies)."""
    with torch.inference_mode(False), torch.no_grad():
        theta, x, sigma, psf = theta.clone(), x.clone(), sigma.clone(), psf.clone()
        return _perturbation_test(lens, theta, x, sigma, psf, config, linear)


def _perturbation_test(
    lens: FlexibleLens,
    theta: Tensor,
    x: Tensor,
    sigma: Tensor,
    psf: Tensor,
    config: PerturbationConfig,
    linear: LinearFit | None,
) -> PerturbationTest:
    linear = linear if linear is not None else lens.fit_linear(theta, x, sigma, psf)
    equations = linear.equations
    weight = equations.weight  # (1, M, 1)
    dtype = linear.design.dtype
    theta_b, coef_b, psf_b = theta.to(dtype), linear.coef.to(dtype), psf.to(dtype)
    if config.disc_radius > 0:
        centres = disc_centres(theta[0], config)
    else:
        value, _, _ = source_gradient(lens, theta_b, coef_b)
        centres = lit_centres(lens, value, sigma, psf_b, config)
    residual = (x.double() - linear.image().view_as(x).double()).flatten(1)[:, :, None]
    whitened = (residual * weight)[0]  # (M, 1)
    jac = lens.jacobian(theta, x, sigma, psf, linear=linear).double()[0]  # (M, 13)
    r = _remove_span(whitened, jac)[:, 0]  # (M,)
    used = weight[0, :, 0] > 0  # (M,) unmasked pixels: the maps' exact zeros elsewhere
    along = (whitened[:, 0] - r) * used  # (M,) the residual's part along the Jacobian
    tension = float(along.square().sum())
    if len(centres) == 0:
        return PerturbationTest(tension, 0.0, (0.0, 0.0), 0.0, 0.0, 0.0, 0.0, 0, along)
    g = templates(lens, theta_b, coef_b, psf_b, centres, config.width).double() * weight
    g = _remove_span((g - equations.absorbed(g))[0], jac)  # (M, K)
    b = g.T @ r  # (K,)
    norms = g.square().sum(dim=0).clamp_min(1e-30)  # (K,) |g_k|^2
    gains = b.clamp_min(0.0) ** 2 / norms
    k = int(gains.argmax())
    best = (float(centres[k, 0]), float(centres[k, 1]))
    improvement = dof = excess = 0.0
    if config.joint:
        c = g.T @ g  # (K, K)
        lam = config.ridge * c.diagonal().mean().clamp_min(1e-30)
        regularised = c + lam * torch.eye(len(c), dtype=c.dtype)
        improvement = float(b @ torch.linalg.solve(regularised, b))
        dof = float(torch.linalg.solve(regularised, c).diagonal().sum())
        excess = (improvement - dof) / max(2.0 * dof, 1e-12) ** 0.5
    amplitude = float(b[k].clamp_min(0.0) / norms[k])
    gain_map = along + g[:, k] * amplitude * used  # best blob's: g_k (g_k . r) / |g_k|^2
    return PerturbationTest(
        tension,
        float(gains[k]),
        best,
        amplitude,
        improvement,
        dof,
        excess,
        len(centres),
        gain_map,
    )


__all__ = [
    "PerturbationConfig",
    "PerturbationTest",
    "blob_deflection",
    "disc_centres",
    "lit_centres",
    "perturbation_test",
    "source_gradient",
    "templates",
]

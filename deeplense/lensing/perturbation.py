"""The tests of gravitational imaging at a fitted smooth lens: how much the fit improves when
the lens may leave its prior, and when mass is added near the arcs, beyond what the smooth
lens and its source can absorb.

A chi-square over every pixel is an omnibus test: its noise grows with the number of pixels
(sqrt(2 M)), so a subhalo's few hundred units of S/N^2, partly absorbed by a free source,
hardly move it. Gravitational imaging (Koopmans 2005; Vegetti & Koopmans 2009; Vegetti et al.
2014) asks narrower questions, each a chi-square improvement of a few degrees of freedom:

- `tension`: the improvement from moving the lens mass's 8 parameters (`MASS`: Einstein
  radius, slope, ellipticity, centre, shear) beyond what moving the source's and the
  light's 5 gains (the residual's part along the 13 parameters' Jacobian less its part along
  the 5 others' columns; 8 degrees of freedom for a lens the model fits). A MAP fit stops
  where the data's pull balances the prior's, so this is the pull the prior resists (and what
  a last step would still gain): many subhalos inside the ring read as a change of the smooth
  mass, which a narrow prior refuses. Substructure is mass: the source's and light's own
  pulls (their priors' tails, an unconverged step) carry no sign of it and were left out
  (`PerturbationConfig.tension_of`; measured: on Model A's and Model B's validation lenses
  they separate at chance, and imaging_gain gained 0.007 and 0.021 AUC without them).
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

The blob templates are orthogonal to the whole Jacobian, so tension + scan is what freeing
the lens mass and adding the best blob together gain beyond freeing the source and light
(`imaging_gain`).

Cost (one image of 150 px, 309 blobs, one CPU thread): the blobs' deflections are windows of
one field drawn once (`blob_deflections`), and the projected templates are never formed: b
and |g_k|^2 follow from one product of the K templates with the design, the Jacobian's basis
and r (`ProjectedTemplates`). The tests took 0.62 s an image before, 0.25 s so.

Units: arcsec; one image at a time (x (1, 1, n, n)): the templates are per image; the grid is
the flexible lens's (`deeplense.lensing.flexible`).
"""

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from deeplense.lensing.flexible import (
    INDEX,
    MASS,
    NAMES,
    FlexibleLens,
    LinearFit,
    NormalEquations,
    clamp_parameters,
    fitted_source,
    image_grid,
    source_plane,
    sub_pixel_grid,
    to_pixels,
)

LEADING_BLOBS = 8  # blobs whose projected columns are formed to settle the best one
# Singular value (of unit Jacobian columns) under which a direction is not counted: the
# Jacobian is drawn from float32 bases (rounding about 1e-7 of a column)
SPAN_TOLERANCE = 1e-6


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
    # The parameters whose pull is the tension, beyond the others' (module doc): the mass's;
    # NAMES: all 13 (the tension until 8 December 2026)
    tension_of: tuple[str, ...] = MASS

    def __post_init__(self) -> None:
        unknown = sorted(set(self.tension_of) - set(NAMES))
        if unknown or not self.tension_of:
            raise ValueError(f"tension_of names lens parameters ({', '.join(NAMES)}): {unknown}")


@dataclass(frozen=True)
class PerturbationTest:
    """One image's tests (module doc), chi-square improvements: `tension` (8 dof), `scan`
    (the best blob's), at `best` (x, y) arcsec with amplitude theta_sub^2 `amplitude`
    arcsec^2 (0: no blob of positive mass improves the fit); the joint test's
    `improvement`, its noise expectation `dof` and `excess` (0 when not computed); the
    blobs' count; `gain_map` (n*n,) float64: the whitened residual's part that imaging_gain
    counts (its part along the mass's Jacobian columns, less the others' span, plus its
    part along the best blob's template),
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
        """tension + scan: freeing the lens mass and adding the best blob, together."""
        return self.tension + self.scan

    def findings(self, side: int, pixel_scale: float) -> dict[str, float]:
        """The test's numbers under `deeplense.fit_drawn.FINDINGS`' names, on a grid of
        `side` pixels of `pixel_scale` arcsec (its centre at pixel (side - 1) / 2); the blob's
        position NaN when no blob of positive mass improves the fit (amplitude 0)."""
        centre = (side - 1) / 2.0
        x, y = self.best if self.amplitude > 0 else (math.nan, math.nan)
        return {
            "tension": self.tension,
            "blob_gain": self.scan,
            "blob_x_arcsec": x,
            "blob_y_arcsec": y,
            "blob_column": x / pixel_scale + centre,
            "blob_row": y / pixel_scale + centre,
            "blob_theta_sub_arcsec": max(self.amplitude, 0.0) ** 0.5,
        }


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


def blob_deflections(
    grid: Tensor, centres: Tensor, width: float, dtype: torch.dtype = torch.float64
) -> tuple[Tensor, Tensor]:
    """`blob_deflection` (K, m, m), drawn in float64 and returned in `dtype` as fresh
    tensors, of K blobs at centres (K, 2) on the square grid whose columns sit at x = grid
    and rows at y = grid (m,), evenly spaced (arcsec). When the centres lie on a lattice of
    the grid's step (the disc's and the lit points' square grid of `spacing`, a whole number
    of sub-pixels), every blob's deflection is a window of one field drawn once on a grid
    wide enough for all, shifted by whole sub-pixels: K m^2 exponentials became a copy
    (0.18 s an image at 150 px and 309 blobs, in float32, became 0.02 s). Other centres:
    blob by blob."""
    m = len(grid)
    grid, centres = grid.double(), centres.double()
    step = float(grid[1] - grid[0]) if m > 1 else 0.0
    shifts = (centres - centres[:1]) / step if step > 0 and len(centres) else None  # (K, 2)
    if shifts is None or float((shifts - shifts.round()).abs().max()) > 1e-6:
        y, x = torch.meshgrid(grid, grid, indexing="ij")  # blob by blob
        ax, ay = blob_deflection(x, y, centres, width)
        return ax.to(dtype), ay.to(dtype)
    whole = shifts.round().long()  # sub-pixels from the first blob
    low, high = whole.min(dim=0).values, whole.max(dim=0).values  # (2,), x then y
    # Sample J of the wide field along an axis sits at J - high sub-pixels from the grid's
    # start, relative to the first blob: blob k's window starts at J = high - shift_k.
    x_wide, y_wide = (
        float(grid[0] - centres[0, axis])
        + (torch.arange(m + int(high[axis] - low[axis]), dtype=torch.float64) - int(high[axis]))
        * step
        for axis in (0, 1)
    )
    y, x = torch.meshgrid(y_wide, x_wide, indexing="ij")
    fields = blob_deflection(x, y, centres.new_zeros(1, 2), width)  # 2 x (1, ., .)
    starts_x, starts_y = high[0] - whole[:, 0], high[1] - whole[:, 1]  # (K,) window corners
    # Every m x m window of a field is a strided view (rows, cols, m, m); the K picked, copied
    ax, ay = (f[0].to(dtype).unfold(0, m, 1).unfold(1, m, 1)[starts_y, starts_x] for f in fields)
    return ax, ay


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


@dataclass(frozen=True)
class ProjectedTemplates:
    """Whitened templates g (K, M) less what the linear bases absorb (A c, c = (A^T A +
    D)^-1 A^T g: `NormalEquations.absorbed`) and then their part along the Jacobian (Q Q^T,
    Q an orthonormal basis of its span), kept as those coefficients instead of K projected
    columns: their inner products with a residual r orthogonal to the Jacobian, `b` (K,),
    and their squared norms `norms` (K,) follow from one product of the templates with the
    design, Q and r, as |g - A c|^2 = |g|^2 - c.h - c.D c (h = A^T g, since (A^T A + D) c =
    h) less |Q^T (g - A c)|^2. Forming the K projected columns (two products of the design's
    size each, then the Jacobian's) took twice the arithmetic and memory traffic."""

    rows: Tensor  # (K, M) whitened templates
    design: Tensor  # (B, M) whitened design rows, A^T
    coef: Tensor  # (B, K) what the linear bases absorb, c
    basis: Tensor  # (M, J) Q
    along: Tensor  # (J, K) Q^T (g - A c)
    b: Tensor  # (K,) projected templates . r
    norms: Tensor  # (K,) their squared norms

    @classmethod
    def of(
        cls, rows: Tensor, equations: NormalEquations, basis: Tensor, r: Tensor
    ) -> "ProjectedTemplates":
        """rows (K, M) whitened float64; the image's normal equations (one image); basis (M,
        J) orthonormal; r (M,) the whitened residual less its part along the basis."""
        design = equations.design[0].T * equations.weight[0, :, 0]  # (B, M), A^T
        k_linear = len(design)
        products = rows @ torch.cat([design, basis.T, r[None]]).T  # (K, B + J + 1)
        h = products[:, :k_linear].T  # (B, K), A^T g
        coef = equations.solve(h[None])[0]  # (B, K)
        along = products[:, k_linear:-1].T - (basis.T @ design.T) @ coef  # (J, K)
        b = products[:, -1] - coef.T @ (design @ r)
        ridge = equations.ridge[0, :, None]  # (B, 1)
        squares = torch.linalg.vector_norm(rows, dim=1).square()  # (K,) |g|^2, no temporary
        left = squares - (coef * (h + ridge * coef)).sum(dim=0)
        norms = (left - along.square().sum(dim=0)).clamp_min(1e-30)
        return cls(rows, design, coef, basis, along, b, norms)

    def columns(self, picked: Tensor) -> Tensor:
        """The projected templates of indices `picked` (T,), (M, T)."""
        rows = self.rows[picked].T  # (M, T)
        return rows - self.design.T @ self.coef[:, picked] - self.basis @ self.along[:, picked]

    def dense(self) -> Tensor:
        """Every projected template, (M, K)."""
        return self.rows.T - self.design.T @ self.coef - self.basis @ self.along


def templates(
    lens: FlexibleLens, theta: Tensor, coef: Tensor, psf: Tensor, centres: Tensor, width: float
) -> Tensor:
    """The image change per unit amplitude (theta_sub^2, arcsec^2) of a blob at each of the
    centres (K, 2), to first order, at parameters theta (1, 13) with linear coefficients
    coef (1, K_linear): (1, n*n, K) pixel values through the PSF (k, k), unwhitened."""
    _, d_u, d_v = source_gradient(lens, theta, coef)
    grid = sub_pixel_grid(lens.config, torch.float64, d_u.device)
    ax, ay = blob_deflections(grid, centres, width, d_u.dtype)  # (K, m, m), fresh copies
    planes = ax.mul_(-d_u).addcmul_(ay, -d_v)  # the source seen at beta - d alpha
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
    basis, counted = jacobian_bases(jac, config.tension_of)  # (M, R <= 13), (M, J)
    r = whitened[:, 0] - basis @ (basis.T @ whitened[:, 0])  # (M,)
    used = weight[0, :, 0] > 0  # (M,) unmasked pixels: the maps' exact zeros elsewhere
    along = counted @ (counted.T @ whitened[:, 0]) * used  # (M,) the tension's part
    tension = float(along.square().sum())
    if len(centres) == 0:
        return PerturbationTest(tension, 0.0, (0.0, 0.0), 0.0, 0.0, 0.0, 0.0, 0, along)
    g = templates(lens, theta_b, coef_b, psf_b, centres, config.width)[0].T  # (K, M)
    # (K, M) whitened in place: a mixed-dtype product, or a second copy, cost twice the time
    projected = ProjectedTemplates.of(g.double().mul_(weight[0, :, 0]), equations, basis, r)
    b, norms = projected.b, projected.norms  # (K,): g_k . r, |g_k|^2
    gains = b.clamp_min(0.0) ** 2 / norms
    # The leading blobs' projected columns formed and their norms summed directly: a template
    # the bases absorb almost wholly has its norm from the products to |g|^2's rounding only
    # (2e-5 of it where 1e-7 of |g|^2 is left, on a tiny model); the map then sums to
    # tension + scan to the last digits, and near ties are decided by the exact norms.
    leading = torch.topk(gains, min(LEADING_BLOBS, len(gains))).indices  # (T,)
    columns = projected.columns(leading)  # (M, T)
    exact = columns.square().sum(dim=0).clamp_min(1e-30)  # (T,)
    refined = b[leading].clamp_min(0.0) ** 2 / exact
    j = int(refined.argmax())
    k = int(leading[j])
    best = (float(centres[k, 0]), float(centres[k, 1]))
    improvement = dof = excess = 0.0
    if config.joint:
        dense = projected.dense()  # (M, K)
        c = dense.T @ dense  # (K, K)
        lam = config.ridge * c.diagonal().mean().clamp_min(1e-30)
        regularised = c + lam * torch.eye(len(c), dtype=c.dtype)
        improvement = float(b @ torch.linalg.solve(regularised, b))
        dof = float(torch.linalg.solve(regularised, c).diagonal().sum())
        excess = (improvement - dof) / max(2.0 * dof, 1e-12) ** 0.5
    amplitude = float(b[k].clamp_min(0.0) / exact[j])
    # the best blob's part: g_k (g_k . r) / |g_k|^2, g_k projected
    gain_map = along + columns[:, j] * amplitude * used
    return PerturbationTest(
        tension,
        float(refined[j]),
        best,
        amplitude,
        improvement,
        dof,
        excess,
        len(centres),
        gain_map,
    )


def jacobian_bases(jac: Tensor, counted: tuple[str, ...]) -> tuple[Tensor, Tensor]:
    """Orthonormal bases of the Jacobian's (M, 13) span, (M, R), and of the part of it that
    the columns of the parameters `counted` add to the others' span, (M, J), its last J
    columns: the residual's part along the latter is what freeing those parameters gains
    beyond freeing the others (the tension). Directions a parameter does not really add are
    left out (`span_basis`): a parameter held at its limit has a zero column, which a plain
    QR turned into an arbitrary unit direction, counted as noise that rounding decided."""
    others = [INDEX[name] for name in NAMES if name not in counted]
    columns = unit_columns(jac[:, [INDEX[name] for name in NAMES if name in counted]])
    rest = span_basis(unit_columns(jac[:, others]))  # (M, <= 13 - J)
    for _ in range(2):  # twice: one pass leaves rounding along `rest` (twice is enough)
        columns = columns - rest @ (rest.T @ columns)
    added = span_basis(columns)  # (M, <= J)
    return torch.cat([rest, added], dim=1), added


def unit_columns(columns: Tensor) -> Tensor:
    """columns (M, J) each scaled to unit norm (a zero column stays zero): the parameters'
    units (arcsec, a slope, a log scale) must not decide which directions count."""
    norms = torch.linalg.vector_norm(columns, dim=0)  # (J,)
    return columns / torch.where(norms > 0, norms, torch.ones_like(norms))


def span_basis(columns: Tensor, tolerance: float = SPAN_TOLERANCE) -> Tensor:
    """An orthonormal basis (M, R) of the span of columns (M, J) of at most unit norm: their
    left singular vectors whose singular value exceeds `tolerance`."""
    u, values, _ = torch.linalg.svd(columns, full_matrices=False)
    return u[:, values > tolerance]


__all__ = [
    "PerturbationConfig",
    "PerturbationTest",
    "blob_deflection",
    "disc_centres",
    "jacobian_bases",
    "lit_centres",
    "perturbation_test",
    "source_gradient",
    "span_basis",
    "templates",
    "unit_columns",
]

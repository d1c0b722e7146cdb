"""A flexible smooth lens: the model a lens modeller fits before looking for substructure.

Gravitational imaging (Vegetti & Koopmans; lenstronomy; PyAutoLens) detects a subhalo as
what a smooth lens cannot fit. The smooth lens must then fit every smooth lens, or its own
misfit, not the subhalo, decides the chi-square. This one is:

- **Mass**: an elliptical power law (`deeplense.lensing.epl`: Einstein radius, slope,
  ellipticity (e1, e2), free centre) and an external shear about the lens centre.
- **Lens light**: a multi-Gaussian expansion (MGE): `light_sigmas` concentric elliptical
  Gaussians at the mass centre with one shared ellipticity and free amplitudes. Sums of
  Gaussians fit Sersic profiles of any index and radius, and two-component light, closely.
- **Source**: Cartesian shapelets (orthonormal Hermite functions, Refregier 2003) up to
  order `shapelet_order`, centred at (source_x, source_y) with scale beta, with free
  amplitudes: any shape, knots and clumps down to about beta / sqrt(order + 1). With several
  `source_scales`, one such set per scale (beta times each): a wide set for a profile's
  wings beside a narrow one for its core and knots.
- A constant: the image's [0, 1] offset.

Given the 13 nonlinear parameters (`NAMES`), the light and source amplitudes and the offset
enter linearly and are solved per image in closed form (weighted least squares, a small
ridge on the shapelets: `source_ridge` of the Gram matrix's mean diagonal, which regularises
shapelets the image does not constrain). The nonlinear parameters are fitted by
Levenberg-Marquardt on the projected residual (`deeplense.lensing.levenberg`).

Why substructure stays detectable against a free source: the lens equation maps one source
to every image of it. A change of the source moves all images consistently; a subhalo
perturbs one image locally, which no source shape reproduces.

Units: arcsec, radians; the grid is the renderer's (pixel centres at (i - (n - 1) / 2) *
pixel_scale, y along rows). Images (N, 1, n, n); the PSF a kernel on the pixel grid, (k, k)
for all images or (N, k, k), odd k, unit sum.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor
from torch.autograd import forward_ad

from deeplense.lensing.epl import epl_deflection, epl_hessian
from deeplense.lensing.forward_mode import dual_level
from deeplense.lensing.psf import convolve

# The nonlinear parameters, in order (arcsec unless said).
NAMES = (
    "theta_e",  # Einstein radius
    "slope",  # EPL 3-D density slope gamma (2: isothermal)
    "mass_e1",  # mass ellipticity, (1 - q) / (1 + q) (cos 2 phi, sin 2 phi)
    "mass_e2",
    "center_x",  # lens centre (mass and light)
    "center_y",
    "gamma1",  # external shear
    "gamma2",
    "source_x",  # shapelet centre on the source plane
    "source_y",
    "log_beta",  # natural log of the shapelet scale beta (arcsec)
    "light_e1",  # lens-light ellipticity
    "light_e2",
)
INDEX = {name: i for i, name in enumerate(NAMES)}
# Physical limits the fit is held within (clamped at every evaluation).
LIMITS: dict[str, tuple[float, float]] = {
    "theta_e": (0.05, 3.0),
    "slope": (1.3, 2.7),
    "mass_e1": (-0.6, 0.6),
    "mass_e2": (-0.6, 0.6),
    "gamma1": (-0.5, 0.5),
    "gamma2": (-0.5, 0.5),
    "log_beta": (math.log(0.02), math.log(2.0)),
    "light_e1": (-0.6, 0.6),
    "light_e2": (-0.6, 0.6),
}
_ELLIPTICITY_EPS = 1e-6  # keeps an angle's gradient finite at a round profile


@dataclass(frozen=True)
class FlexibleConfig:
    """The grid and the linear bases."""

    image_size: int  # pixels per side
    pixel_scale: float  # arcsec per pixel
    shapelet_order: int = 8  # n_max: (n_max + 1)(n_max + 2) / 2 shapelets per set
    source_scales: tuple[float, ...] = (1.0,)  # one shapelet set per scale, of beta times it
    # MGE widths (arcsec): log-spaced from a quarter pixel's scale to the field's
    light_sigmas: tuple[float, ...] = (0.02, 0.04, 0.07, 0.12, 0.2, 0.35, 0.6, 1.0, 1.7, 3.0)
    supersampling: int = 2  # sub-pixels per pixel per axis
    source_ridge: float = 1e-5  # share of the Gram matrix's mean diagonal, on shapelets only
    # Smoothness: shapelet (n1, n2) of a set at scale s gets a further ridge of this share
    # times (n1 + n2 + 1) / s^2, the diagonal of the source's gradient energy (fine detail
    # costs more); 0 leaves the source free to draw what a subhalo does to one arc.
    source_smoothing: float = 0.0

    @property
    def n_shapelets(self) -> int:
        per_set = (self.shapelet_order + 1) * (self.shapelet_order + 2) // 2
        return per_set * len(self.source_scales)

    @property
    def n_linear(self) -> int:
        """Linear parameters per image: light Gaussians, shapelets, offset."""
        return len(self.light_sigmas) + self.n_shapelets + 1


def clamp_parameters(theta: Tensor) -> Tensor:
    """(N, 13) parameters held within LIMITS (differentiable inside them)."""
    columns = list(theta.unbind(dim=1))
    for name, (lo, hi) in LIMITS.items():
        columns[INDEX[name]] = columns[INDEX[name]].clamp(lo, hi)
    return torch.stack(columns, dim=1)


def q_phi(e1: Tensor, e2: Tensor) -> tuple[Tensor, Tensor]:
    """Axis ratio and angle (radians) of ellipticity (e1, e2), lenstronomy's convention."""
    e = torch.sqrt(e1 * e1 + e2 * e2 + _ELLIPTICITY_EPS**2)
    return (1.0 - e) / (1.0 + e), 0.5 * torch.atan2(e2, e1 + _ELLIPTICITY_EPS)


def sub_pixel_grid(config: FlexibleConfig, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Sub-pixel centres (m,), m = image_size * supersampling, arcsec."""
    m = config.image_size * config.supersampling
    step = config.pixel_scale / config.supersampling
    return (torch.arange(m, dtype=dtype, device=device) - (m - 1) / 2.0) * step


def source_plane(theta: Tensor, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Ray-traced positions beta (N, m, m) of image positions x, y (1, m, m)."""
    p = theta.unbind(dim=1)
    q, phi = q_phi(p[INDEX["mass_e1"]], p[INDEX["mass_e2"]])
    cx, cy = p[INDEX["center_x"]], p[INDEX["center_y"]]
    ax, ay = epl_deflection(x, y, p[INDEX["theta_e"]], p[INDEX["slope"]], q, phi, cx, cy)
    dx, dy = x - cx[:, None, None], y - cy[:, None, None]
    g1, g2 = p[INDEX["gamma1"]][:, None, None], p[INDEX["gamma2"]][:, None, None]
    return x - ax - (g1 * dx + g2 * dy), y - ay - (g2 * dx - g1 * dy)


def hermite_functions(t: Tensor, order: int) -> list[Tensor]:
    """Orthonormal Hermite functions phi_0..phi_order at t (any shape), by the stable
    three-term recursion phi_{n+1} = sqrt(2/(n+1)) t phi_n - sqrt(n/(n+1)) phi_{n-1}."""
    phi = [math.pi**-0.25 * torch.exp(-0.5 * t * t)]
    if order >= 1:
        phi.append(math.sqrt(2.0) * t * phi[0])
    for n in range(1, order):
        phi.append(math.sqrt(2.0 / (n + 1)) * t * phi[n] - math.sqrt(n / (n + 1)) * phi[n - 1])
    return phi


def shapelets(u: Tensor, v: Tensor, beta: Tensor, order: int) -> Tensor:
    """Shapelets B_{n1,n2} = phi_n1(u / beta) phi_n2(v / beta) / beta, n1 + n2 <= order:
    (N, K, ...) for offsets u, v (N, ...) from the centre and scales beta (N,)."""
    scale = beta.reshape(-1, *([1] * (u.dim() - 1)))
    hu, hv = hermite_functions(u / scale, order), hermite_functions(v / scale, order)
    basis = [hu[n1] * hv[n - n1] for n in range(order + 1) for n1 in range(n + 1)]
    return torch.stack(basis, dim=1) / scale.unsqueeze(1)


def shapelet_pairs(order: int) -> list[tuple[int, int]]:
    """(n1, n2) of each shapelet, in `shapelets`' order."""
    return [(n1, n - n1) for n in range(order + 1) for n1 in range(n + 1)]


def shapelet_source(
    u: Tensor, v: Tensor, beta: Tensor, coef: Tensor, order: int
) -> tuple[Tensor, Tensor, Tensor]:
    """A shapelet source sum_k coef_k B_k and its gradient in (u, v): three (N, M) maps for
    offsets u, v (N, M) and coefficients (N, K). Uses phi_n' = sqrt(n/2) phi_{n-1} -
    sqrt((n+1)/2) phi_{n+1}."""
    scale = beta[:, None]
    hu = torch.stack(hermite_functions(u / scale, order + 1), dim=1)  # (N, O+2, M)
    hv = torch.stack(hermite_functions(v / scale, order + 1), dim=1)
    table = coef.new_zeros(coef.shape[0], order + 1, order + 1)  # (N, n1, n2)
    rows, cols = zip(*shapelet_pairs(order), strict=True)
    table[:, list(rows), list(cols)] = coef
    n = torch.arange(order + 2, dtype=coef.dtype, device=coef.device)
    down, up = torch.sqrt(n / 2.0), torch.sqrt((n + 1.0) / 2.0)  # (O+2,)

    def derivative(h: Tensor) -> Tensor:  # phi_n' for n = 0..order, (N, O+1, M)
        previous = torch.cat([torch.zeros_like(h[:, :1]), h[:, :order]], dim=1)
        return down[: order + 1, None] * previous - up[: order + 1, None] * h[:, 1 : order + 2]

    hu0, hv0 = hu[:, : order + 1], hv[:, : order + 1]
    along_v = table @ hv0  # (N, n1, M): sum over n2
    value = (hu0 * along_v).sum(dim=1) / scale
    d_u = (derivative(hu) * along_v).sum(dim=1) / scale**2
    d_v = (hu0 * (table @ derivative(hv))).sum(dim=1) / scale**2
    return value, d_u, d_v


def gaussians(r2: Tensor, sigmas: tuple[float, ...]) -> Tensor:
    """Concentric Gaussians exp(-R^2 / (2 sigma^2)) of squared radii r2 (N, ...): (N, K, ...)."""
    return torch.stack([torch.exp(-0.5 * r2 / (s * s)) for s in sigmas], dim=1)


def elliptical_radius2(dx: Tensor, dy: Tensor, e1: Tensor, e2: Tensor) -> Tensor:
    """R^2 = q x'^2 + y'^2 / q of offsets dx, dy (N, ...) for ellipticities (e1, e2) (N,)."""
    q, phi = q_phi(e1, e2)
    shape = [-1, *([1] * (dx.dim() - 1))]
    cos, sin, q = torch.cos(phi).reshape(shape), torch.sin(phi).reshape(shape), q.reshape(shape)
    xr, yr = cos * dx + sin * dy, -sin * dx + cos * dy
    return q * xr * xr + yr * yr / q


MASS = ("theta_e", "slope", "mass_e1", "mass_e2", "center_x", "center_y", "gamma1", "gamma2")
PROFILE = ("slope", "mass_e1", "mass_e2")  # the power law's shape: its series' derivatives
LIGHT = ("center_x", "center_y", "light_e1", "light_e2")


def image_grid(config: FlexibleConfig, like: Tensor) -> tuple[Tensor, Tensor]:
    """Sub-pixel positions x, y, each (1, m, m) arcsec."""
    c = sub_pixel_grid(config, like.dtype, like.device)
    y, x = torch.meshgrid(c, c, indexing="ij")
    return x[None], y[None]


def light_radius2(theta: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """The lens light's elliptical radius squared, R^2 = q x'^2 + y'^2 / q about the lens
    centre with the light's ellipticity (lenstronomy's profiles' radius): (N, m, m)."""
    p = theta.unbind(dim=1)
    return elliptical_radius2(
        x - p[INDEX["center_x"]][:, None, None],
        y - p[INDEX["center_y"]][:, None, None],
        p[INDEX["light_e1"]],
        p[INDEX["light_e2"]],
    )


def light_surfaces(theta: Tensor, x: Tensor, y: Tensor, config: FlexibleConfig) -> Tensor:
    """The unit-amplitude light Gaussians (N, Kl, m, m)."""
    return gaussians(light_radius2(theta, x, y), config.light_sigmas)


def pixel_rows(surfaces: Tensor, config: FlexibleConfig, psf: Tensor) -> Tensor:
    """Sub-pixel surfaces (N, C, m, m) -> pixel values through the PSF, one row per surface:
    (N, C, n*n) contiguous."""
    ss = config.supersampling
    if ss > 1:
        surfaces = torch.nn.functional.avg_pool2d(surfaces, ss)
    return convolve(surfaces, psf).flatten(2)


def to_pixels(surfaces: Tensor, config: FlexibleConfig, psf: Tensor) -> Tensor:
    """Sub-pixel surfaces (N, C, m, m) -> pixel values through the PSF, (N, n*n, C): a view
    of `pixel_rows`, each column contiguous."""
    return pixel_rows(surfaces, config, psf).transpose(1, 2)


def design_matrix(theta: Tensor, config: FlexibleConfig, psf: Tensor) -> Tensor:
    """The linear bases seen through the PSF: (N, n*n, K), K = config.n_linear, columns in
    order light Gaussians, shapelets, offset. `theta` (N, 13) is clamped to LIMITS.

    Stored column by column (a view of (N, K, n*n)): the convolution draws a column at a
    time, and the Gram matrix is a product of rows; a row-major design cost two transposing
    copies of it (`NormalEquations`)."""
    theta = clamp_parameters(theta)
    x, y = image_grid(config, theta)
    p = theta.unbind(dim=1)
    bx, by = source_plane(theta, x, y)  # (N, m, m)
    beta = torch.exp(p[INDEX["log_beta"]])
    u = bx - p[INDEX["source_x"]][:, None, None]
    v = by - p[INDEX["source_y"]][:, None, None]
    source = torch.cat(
        [shapelets(u, v, beta * scale, config.shapelet_order) for scale in config.source_scales],
        dim=1,
    )  # (N, Ks, m, m)
    surfaces = torch.cat([light_surfaces(theta, x, y, config), source], dim=1)
    rows = pixel_rows(surfaces, config, psf)  # (N, Kl + Ks, n*n)
    return torch.cat([rows, torch.ones_like(rows[:, :1])], dim=1).transpose(1, 2)


def _constant(t: Tensor) -> Tensor:
    """`t` as a forward-mode dual with a zero tangent, inside a dual level. An operation that
    mixes a dual with a plain tensor gives the plain one torch's "efficient zero" tangent,
    whose arithmetic goes through Python-level reference kernels (about 0.1 ms each); a dense
    zero tangent costs a few microseconds here."""
    dense = t.contiguous()  # a grid from meshgrid is an expanded view
    return forward_ad.make_dual(dense, torch.zeros_like(dense))


def _tangents(
    fn: Callable[[Tensor, Tensor, Tensor], tuple[Tensor, ...]],
    theta: Tensor,
    x: Tensor,
    y: Tensor,
    names: tuple[str, ...],
) -> tuple[tuple[Tensor, ...], list[tuple[Tensor, ...]]]:
    """fn(theta, x, y) (a tuple of tensors) at image positions x, y (1, m, m) and its
    forward-mode derivatives along each named parameter, all in one evaluation: fn sees the
    N images once per name, stacked name by name (len(names) * N rows; each per-image tensor
    it closes over must be repeated so), each copy carrying the tangent of its parameter.
    One call of fn instead of one per name and one for the value (a power-law deflection is
    some hundred small tensor operations; on a CPU their dispatch, not their arithmetic, took
    most of the Jacobian's time). The positions come in as duals of zero tangent
    (`_constant`). Returns (values, [derivatives per name]), each a tuple like fn's, of N
    rows."""
    n = theta.shape[0]
    stacked = theta.repeat(len(names), 1)  # (len(names) * N, 13)
    tangent = torch.zeros_like(stacked)
    for j, name in enumerate(names):
        tangent[j * n : (j + 1) * n, INDEX[name]] = 1.0
    with dual_level():
        values = fn(forward_ad.make_dual(stacked, tangent), _constant(x), _constant(y))
        unpacked = [forward_ad.unpack_dual(v) for v in values]
    # clones, not views: a view would keep the whole stacked buffers alive
    primal = tuple(u.primal[:n].clone() for u in unpacked)
    return primal, [
        tuple(u.tangent[j * n : (j + 1) * n].clone() for u in unpacked) for j in range(len(names))
    ]


def ray_derivatives(
    theta: Tensor, x: Tensor, y: Tensor
) -> tuple[tuple[Tensor, ...], list[tuple[Tensor, ...]]]:
    """The rays (bx, by), each (N, m, m), of image positions x, y (1, m, m), and their
    derivatives (dbx, dby) along each mass parameter, in MASS' order.

    beta = x - alpha(x - c) - Gamma (x - c). Forward mode through the power law's series only
    for its shape (PROFILE); the rest in closed form from the deflection the rays give:
    alpha is proportional to theta_e^t (t = slope - 1), so d/d theta_e = -t alpha / theta_e;
    d/d c is the potential's Hessian (`epl_hessian`) plus the shear; d/d gamma1 = (-dx, dy),
    d/d gamma2 = (-dy, -dx). Five of the eight passes saved (docs/results.md, "LensFit 2
    scores twice as fast")."""
    (bx, by), shaped = _tangents(source_plane, theta, x, y, PROFILE)
    p = theta.unbind(dim=1)
    c = {name: p[INDEX[name]][:, None, None] for name in MASS}  # (N, 1, 1) each
    dx, dy = x - c["center_x"], y - c["center_y"]
    g1, g2 = c["gamma1"], c["gamma2"]
    ax, ay = x - bx - (g1 * dx + g2 * dy), y - by - (g2 * dx - g1 * dy)  # the deflection
    q, phi = q_phi(p[INDEX["mass_e1"]], p[INDEX["mass_e2"]])
    fxx, fxy, fyy = epl_hessian(
        x, y, ax, ay, p[INDEX["theta_e"]], p[INDEX["slope"]], q, phi,
        p[INDEX["center_x"]], p[INDEX["center_y"]],
    )  # fmt: skip
    t_over_theta_e = (c["slope"] - 1.0) / c["theta_e"]
    derivatives: dict[str, tuple[Tensor, ...]] = {
        "theta_e": (-t_over_theta_e * ax, -t_over_theta_e * ay),
        "center_x": (fxx + g1, fxy + g2),
        "center_y": (fxy + g2, fyy - g1),
        "gamma1": (-dx, dy),
        "gamma2": (-dy, -dx),
        **dict(zip(PROFILE, shaped, strict=True)),
    }
    return (bx, by), [derivatives[name] for name in MASS]


def fitted_source(
    u: Tensor, v: Tensor, beta: Tensor, coef: Tensor, config: FlexibleConfig
) -> tuple[Tensor, Tensor, Tensor]:
    """The source of linear coefficients coef (N, K) (its shapelet sets, one per scale of
    beta (N,)) and its gradient in (u, v), at offsets u, v (N, M) from its centre: three
    (N, M) maps (`shapelet_source`, summed over the sets)."""
    k_light = len(config.light_sigmas)
    per_set = config.n_shapelets // len(config.source_scales)
    value, d_u, d_v = (torch.zeros_like(u) for _ in range(3))
    for j, scale in enumerate(config.source_scales):
        start = k_light + j * per_set
        parts = shapelet_source(
            u, v, beta * scale, coef[:, start : start + per_set], config.shapelet_order
        )
        value, d_u, d_v = value + parts[0], d_u + parts[1], d_v + parts[2]
    return value, d_u, d_v


def model_jacobian(theta: Tensor, coef: Tensor, config: FlexibleConfig, psf: Tensor) -> Tensor:
    """d(design @ coef) / d theta at fixed coefficients (N, K): (N, n*n, 13).

    Convolution is linear, so each column is one convolution of the derivative of the summed
    surface: the source's gradient on the source plane (`shapelet_source`) times the rays'
    derivatives (forward mode through the lens equation), and the light's derivatives.
    """
    theta = clamp_parameters(theta)
    k_light = len(config.light_sigmas)
    x, y = image_grid(config, theta)
    shape = (theta.shape[0], x.shape[-2], x.shape[-1])
    p = theta.unbind(dim=1)
    (bx, by), rays = ray_derivatives(theta, x, y)
    u = (bx - p[INDEX["source_x"]][:, None, None]).flatten(1)
    v = (by - p[INDEX["source_y"]][:, None, None]).flatten(1)
    beta = torch.exp(p[INDEX["log_beta"]])
    value, d_u, d_v = fitted_source(u, v, beta, coef, config)  # (N, m*m) each
    planes = [torch.zeros_like(value) for _ in NAMES]
    for name, (dbx, dby) in zip(MASS, rays, strict=True):
        planes[INDEX[name]] = d_u * dbx.flatten(1) + d_v * dby.flatten(1)
    planes[INDEX["source_x"]] = -d_u
    planes[INDEX["source_y"]] = -d_v
    planes[INDEX["log_beta"]] = -(u * d_u + v * d_v) - value

    # The light sum_k A_k exp(-R^2 / (2 s_k^2)) changes with its centre and ellipticity
    # through R^2 alone: d/d theta = -dR^2/d theta * sum_k A_k / (2 s_k^2) exp(...), so
    # forward mode runs through R^2's few operations, not the Gaussians.
    (r2,), d_r2 = _tangents(
        lambda t, x, y: (light_radius2(t, x, y),), theta, x, y, LIGHT
    )  # (N, m, m)
    sigmas2 = torch.tensor(config.light_sigmas, dtype=r2.dtype, device=r2.device) ** 2  # (Kl,)
    slopes = coef[:, :k_light] / (2.0 * sigmas2)  # (N, Kl)
    falloff = (slopes[:, :, None, None] * gaussians(r2, config.light_sigmas)).sum(dim=1)
    for name, (d_radius2,) in zip(LIGHT, d_r2, strict=True):
        planes[INDEX[name]] = planes[INDEX[name]] - (falloff * d_radius2).flatten(1)
    surfaces = torch.stack(planes, dim=1).view(shape[0], len(NAMES), *shape[1:])
    return to_pixels(surfaces, config, psf)  # (N, n*n, 13)


def ridge_diagonal(gram: Tensor, config: FlexibleConfig) -> Tensor:
    """The ridge D (N, K) on the shapelets (and a 1e-12 jitter on all), in shares of each
    image's mean Gram diagonal: `source_ridge`, and `source_smoothing`'s gradient energy."""
    k_light = len(config.light_sigmas)
    ridge = torch.zeros(gram.shape[2], dtype=gram.dtype, device=gram.device)
    ridge[k_light : k_light + config.n_shapelets] = config.source_ridge
    if config.source_smoothing > 0:
        order = torch.tensor([n1 + n2 + 1.0 for n1, n2 in shapelet_pairs(config.shapelet_order)])
        per_scale = [order / (scale * scale) for scale in config.source_scales]
        ridge[k_light : k_light + config.n_shapelets] += config.source_smoothing * torch.cat(
            per_scale
        ).to(ridge)
    scale = gram.diagonal(dim1=1, dim2=2).mean(dim=1).clamp_min(1e-30)  # (N,)
    return scale[:, None] * (ridge + 1e-12)


# The Gram matrix on a CPU in this many row blocks, each block's product taken only against
# the columns up to its own (3/4 of the work at 2: one thread, 22,500 x 146 float64, 28-34 ->
# 20 ms; more blocks make the products too thin to gain).
CPU_GRAM_BLOCKS = 2


def gram_matrix(a: Tensor) -> Tensor:
    """a^T a (N, K, K) of a (N, M, K), exactly symmetric (a BLAS product of a matrix with
    itself is not, to the last bit). On a CPU the blocks above the diagonal are copies of
    those below (`CPU_GRAM_BLOCKS`), the diagonal blocks averaged with their transposes; on
    an accelerator one product, averaged alike."""
    rows = a.transpose(1, 2)  # (N, K, M)
    if a.device.type != "cpu":
        gram = rows @ a
        return 0.5 * (gram + gram.transpose(1, 2))
    k = a.shape[2]
    edges = [round(i * k / CPU_GRAM_BLOCKS) for i in range(CPU_GRAM_BLOCKS + 1)]
    gram = a.new_empty(a.shape[0], k, k)
    for lo, hi in zip(edges, edges[1:], strict=False):
        block = rows[:, lo:hi] @ a[:, :, :hi]  # (N, hi - lo, hi): rows lo..hi, columns ..hi
        diagonal = block[:, :, lo:hi]
        gram[:, lo:hi, :lo] = block[:, :, :lo]
        gram[:, lo:hi, lo:hi] = 0.5 * (diagonal + diagonal.transpose(1, 2))
        gram[:, :lo, lo:hi] = block[:, :, :lo].transpose(1, 2)
    return gram


class NormalEquations:
    """The regularised normal equations (A^T A + D) c = A^T b of a design X (N, M, K)
    whitened by weights w (N, M), A = w X, and data b (N, M, 1) whitened alike, all float64
    whatever X's dtype: X, w, the ridge D (N, K) (`ridge_diagonal`), A^T b (N, K, 1) and the
    LU factors of A^T A + D. X is kept in float64 for the model image and the Jacobian's
    projection (`combine`, `absorbed`), where converting it again cost a 26 MB copy a fit.

    Always float64: the bases overlap (shapelet sets at several scales, nested Gaussians;
    condition numbers 1e9-1e14). Measured: a float32 solve left chi2 50% above the float64
    one; a float32 sum of A^T A solved in float64 and refined gave the same chi2 (1e-5), but
    coefficients along the near-degenerate directions that followed the sum's rounding, and
    through them a Jacobian, and a fit, that changed with the batch an image came in."""

    def __init__(self, design: Tensor, weight: Tensor, b: Tensor, config: FlexibleConfig) -> None:
        self.design = design.double()  # (N, M, K), X's layout kept
        self.weight = weight.double().unsqueeze(2)  # (N, M, 1)
        whitened = self.design * self.weight  # (N, M, K), the design's layout
        gram = gram_matrix(whitened)  # (N, K, K)
        self.ridge = ridge_diagonal(gram, config)  # (N, K)
        self.rhs = whitened.transpose(1, 2) @ (b.double() * self.weight)  # (N, K, 1)
        self.factors = torch.linalg.lu_factor(gram + torch.diag_embed(self.ridge))

    def solve(self, right: Tensor) -> Tensor:
        """(A^T A + D)^-1 right for right (N, K, R), float64."""
        return torch.linalg.lu_solve(*self.factors, right.double())

    def coefficients(self) -> Tensor:
        """The least-squares coefficients (N, K, 1) float64."""
        return self.solve(self.rhs)

    def absorbed(self, g: Tensor) -> Tensor:
        """What the linear parameters absorb of whitened columns g (N, M, R): their fit
        A (A^T A + D)^-1 A^T g, float64 (N, M, R)."""
        w = self.weight
        coef = self.solve(self.design.transpose(1, 2) @ (w * g.double()))  # (N, K, R)
        return w * self.combine(coef)

    def combine(self, coef: Tensor) -> Tensor:
        """X c (N, M, R) float64 for coefficients c (N, K, R): a view of (N, R, M) when X is
        stored column by column (`design_matrix`), whose product c^T X^T is then the faster
        one (one thread, 22,500 x 146: 6 against 12 ms at R = 13)."""
        return (coef.double().transpose(1, 2) @ self.design.transpose(1, 2)).transpose(1, 2)


def normal_equations(
    design: Tensor, x: Tensor, weight: Tensor, config: FlexibleConfig
) -> NormalEquations:
    """The weighted least-squares problem x ~ design @ c with a ridge on the shapelets;
    `x`, `weight` (N, n*n), weight = 1 / sigma (0 for a masked pixel)."""
    return NormalEquations(design, weight, x.unsqueeze(2), config)


class LinearFit(NamedTuple):
    """The linear part at some nonlinear parameters: the design (N, n*n, K) in the bases'
    dtype, its best coefficients (N, K) in the data's, and the normal equations they
    solved (the Jacobian's projection reuses them)."""

    design: Tensor
    coef: Tensor
    equations: NormalEquations

    def image(self) -> Tensor:
        """design @ coef in the coefficients' dtype, (N, n*n): float64 coefficients from the
        equations' float64 design; others (LensFit 2's training loss, in float32, through
        autograd) from the design itself, which keeps no float64 copy alive for the
        backward pass."""
        if self.coef.dtype != torch.float64:
            product = self.design.to(self.coef.dtype) @ self.coef.unsqueeze(2)  # (N, n*n, 1)
            return product.squeeze(2)
        return self.equations.combine(self.coef.unsqueeze(2)).squeeze(2)


@dataclass(frozen=True)
class FlexibleLens:
    """The flexible smooth lens on one grid (module doc).

    `bases_dtype`: the dtype its bases (the design and the model's Jacobian at fixed
    coefficients) are drawn in; None: the data's. float32 with float64 data runs 1.4 times
    faster on a CPU and fits the same: the bases' rounding (1e-7) is far below any noise,
    and the Gram matrix (summed in float64 from the float32 values, `NormalEquations`), the
    solve, the model image, the residual, the Jacobian's projection and the cost stay
    float64 (docs/results.md, "A float32 design")."""

    config: FlexibleConfig
    bases_dtype: torch.dtype | None = None

    def fit_linear(self, theta: Tensor, x: Tensor, sigma: Tensor, psf: Tensor) -> LinearFit:
        """The design at `theta` (N, 13), its best coefficients and normal equations for
        images x (N, 1, n, n) with noise sigma (same shape; inf for masked pixels)."""
        dtype = self.bases_dtype or x.dtype
        design = design_matrix(theta.to(dtype), self.config, psf.to(dtype))
        weight = self.weight(sigma).flatten(1)
        equations = normal_equations(design, x.flatten(1), weight, self.config)
        return LinearFit(design, equations.coefficients().squeeze(2).to(x.dtype), equations)

    def model_image(self, theta: Tensor, x: Tensor, sigma: Tensor, psf: Tensor) -> Tensor:
        """The best smooth lens of parameters `theta` for images x: (N, 1, n, n)."""
        return self.fit_linear(theta, x, sigma, psf).image().view_as(x)

    def whitened_residual(self, theta: Tensor, x: Tensor, sigma: Tensor, psf: Tensor) -> Tensor:
        """(x - model) / sigma, flattened (N, n*n); 0 on masked pixels."""
        model = self.model_image(theta, x, sigma, psf)
        return ((x - model) * self.weight(sigma)).flatten(1)

    def jacobian(
        self,
        theta: Tensor,
        x: Tensor,
        sigma: Tensor,
        psf: Tensor,
        linear: LinearFit | None = None,
    ) -> Tensor:
        """d(whitened residual) / d theta, (N, n*n, 13) in theta's dtype, by Kaufman's
        variable projection: the derivative at fixed linear coefficients, less its part that
        the linear parameters can absorb (its projection on the whitened design's columns).
        The derivative is drawn in the bases' dtype, its projection taken in float64 like
        the solve (13 columns: cheap). `linear`: `fit_linear`'s answer at `theta`, if known."""
        design, coef, equations = (
            linear if linear is not None else self.fit_linear(theta, x, sigma, psf)
        )
        dtype = design.dtype
        g = model_jacobian(theta.to(dtype), coef.to(dtype), self.config, psf.to(dtype))
        g = g.double() * equations.weight  # (N, M, 13), whitened
        return (equations.absorbed(g) - g).to(theta.dtype)

    @staticmethod
    def weight(sigma: Tensor) -> Tensor:
        """1 / sigma, 0 where sigma is infinite or not positive (masked)."""
        ok = torch.isfinite(sigma) & (sigma > 0)
        return torch.where(ok, 1.0 / torch.where(ok, sigma, 1.0), 0.0)

    def degrees_of_freedom(self, sigma: Tensor) -> Tensor:
        """Used pixels less every fitted parameter (linear and nonlinear), (N,)."""
        used = (self.weight(sigma) > 0).flatten(1).sum(dim=1)
        return (used - self.config.n_linear - len(NAMES)).clamp_min(1)


__all__ = [
    "INDEX",
    "LIMITS",
    "NAMES",
    "FlexibleConfig",
    "FlexibleLens",
    "LinearFit",
    "clamp_parameters",
    "design_matrix",
    "fitted_source",
    "gram_matrix",
    "hermite_functions",
    "image_grid",
    "light_surfaces",
    "model_jacobian",
    "NormalEquations",
    "normal_equations",
    "pixel_rows",
    "ridge_diagonal",
    "shapelet_source",
    "shapelets",
    "to_pixels",
]

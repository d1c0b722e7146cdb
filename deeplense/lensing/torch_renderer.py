"""Batched, differentiable renderer of strong-lensing images in torch.

The project's one piece of lensing physics: the simulator (`training.lensing.render`) and
the LensFit model render through it.

Conventions (lenstronomy's; the tests check this renderer against lenstronomy):

- Angles in arcsec; position angles in radians, counter-clockwise from +x.
- A square image of n pixels of `pixel_scale` arcsec is centred on the optical axis: the
  pixel in row i, column j has its centre at x = (j - (n-1)/2) * pixel_scale,
  y = (i - (n-1)/2) * pixel_scale (x along columns, y along rows).
- Lens: a singular isothermal sphere of Einstein radius theta_e plus external shear
  (gamma1, gamma2), both centred on the origin, plus K equal point masses (Einstein radius
  theta_sub each) at `subhalos`. Lens equation beta = theta - alpha(theta), with
  alpha_SIS = theta_e theta / |theta|, alpha_shear = [[g1, g2], [g2, -g1]] theta,
  alpha_k = theta_sub^2 (theta - theta_k) / |theta - theta_k|^2 (summed exactly).
- Light: elliptical Sersic profiles as lenstronomy's SERSIC_ELLIPSE,
  I = exp(-b_n ((R / R_eff)^(1/n) - 1)), equal to 1 at the half-light radius R_eff, with
  b_n = 1.9992 n - 0.3271 and R the circularised elliptical radius (product average:
  R_eff is sqrt(major * minor) half-light radius) for axis ratio q = minor / major and the
  major axis at angle phi. The lens light sits at the origin; the source at
  (source_x, source_y) in the source plane.
- Surface brightness is evaluated at the centres of ss x ss sub-pixels per pixel, averaged
  to pixels, then convolved with a Gaussian PSF of standard deviation psf_sigma cut at
  psf_truncate sigma, edge pixels extended outwards (scipy's mode="nearest").

The renderer knows no photometry: `render_components` returns the lensed source (arcs) and
the lens light at unit amplitude (surface brightness 1 at R_eff, before supersampling and
PSF), and `combine` scales them by amplitudes, e.g. counts/s at R_eff (the study's Sersic
"intensity"). Outputs are (N, 1, n, n) in the dtype and on the device of the parameters
(float32 or float64; CPU or CUDA) and differentiable with respect to every parameter,
in reverse and forward mode (torch.autograd, torch.func.jacfwd / jacrev).

Numerics: float64 agrees with lenstronomy to rounding (1e-15 of the peak), float32 to
about 1e-6. Coordinates and the PSF go through matrix products, so on CUDA keep
torch.backends.cuda.matmul.allow_tf32 off (its default), or positions lose 3 digits.
Every matrix product is taken image by image, so an image's bits do not depend on the batch
it is rendered in (tested), nor, measured on the project's CPU, on 1 or 2 threads; another
CPU or BLAS may round differently.
"""

from collections.abc import Sequence
from dataclasses import dataclass, fields
from functools import lru_cache
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd import forward_ad

from deeplense.instrument import (
    STUDY_IMAGE_SIZE,
    STUDY_PIXEL_SCALE_ARCSEC,
    STUDY_PSF_SIGMA_ARCSEC,
)

# Floors of radii, as lenstronomy's, so that both agree.
_SIS_R_MIN = 1e-15  # arcsec
_SERSIC_R_MIN = 1e-4  # arcsec (lenstronomy's Sersic `smoothing`)
# arcsec^2; lenstronomy's 1e-50 underflows in float32, whose 1 / floor^2 (in gradients)
# must stay finite.
_POINT_MASS_R2_MIN = {torch.float64: 1e-50, torch.float32: 1e-18}

# Bytes of one (group, m, m) array in the point-mass sum (see point_mass_deflection).
_SUBHALO_GROUP_BYTES = 2**21

PARAMETERS = (
    "theta_e",  # Einstein radius of the SIS, arcsec
    "gamma1",  # external shear components
    "gamma2",
    "source_x",  # source centre in the source plane, arcsec
    "source_y",
    "source_r_eff",  # source half-light radius, arcsec
    "source_n",  # source Sersic index
    "source_q",  # source axis ratio (minor / major)
    "source_phi",  # source major-axis angle from +x, radians
    "lens_r_eff",  # lens-light half-light radius, arcsec
    "lens_n",  # lens-light Sersic index
    "lens_q",  # lens-light axis ratio
    "lens_phi",  # lens-light major-axis angle, radians
)


@dataclass(frozen=True)
class RenderConfig:
    """Pixel grid and PSF: 150 x 150 pixels of 0.05" (7.5" field), 2x2 sub-pixels, PSF 0.1"."""

    image_size: int = STUDY_IMAGE_SIZE  # pixels per side
    pixel_scale: float = STUDY_PIXEL_SCALE_ARCSEC  # arcsec per pixel
    supersampling: int = 2  # sub-pixels per pixel per axis
    psf_sigma: float = STUDY_PSF_SIGMA_ARCSEC  # arcsec, Gaussian PSF sigma; 0 for none
    psf_truncate: float = 5.0  # the kernel is cut at this many sigma (lenstronomy's default)

    def __post_init__(self) -> None:
        if self.image_size < 1 or self.supersampling < 1:
            raise ValueError(
                f"image_size and supersampling must be >= 1, got {self.image_size}, "
                f"{self.supersampling}"
            )
        if not self.pixel_scale > 0 or self.psf_sigma < 0 or not self.psf_truncate > 0:
            raise ValueError(
                f"need pixel_scale > 0, psf_sigma >= 0, psf_truncate > 0; got "
                f"{self.pixel_scale}, {self.psf_sigma}, {self.psf_truncate}"
            )


@dataclass(frozen=True)
class LensBatch:
    """Parameters of N images: each field of PARAMETERS an (N,) tensor (units in PARAMETERS).

    Subhalos: `subhalos` (N, K, 2) positions (x, y) in arcsec and `theta_sub` (N,) the
    Einstein radius of each of an image's K equal point masses; both None for none. Images
    of one batch share K: an image without subhalos in a batch with them has theta_sub 0.
    All tensors share one floating dtype and one device, which the renders follow.
    """

    theta_e: Tensor
    gamma1: Tensor
    gamma2: Tensor
    source_x: Tensor
    source_y: Tensor
    source_r_eff: Tensor
    source_n: Tensor
    source_q: Tensor
    source_phi: Tensor
    lens_r_eff: Tensor
    lens_n: Tensor
    lens_q: Tensor
    lens_phi: Tensor
    theta_sub: Tensor | None = None
    subhalos: Tensor | None = None

    def __post_init__(self) -> None:
        first = self.theta_e
        if not isinstance(first, Tensor) or first.dim() != 1 or not first.is_floating_point():
            raise ValueError("theta_e must be a floating-point tensor of shape (N,)")
        for name in PARAMETERS:
            _check_like(name, getattr(self, name), first, first.shape)
        if (self.subhalos is None) != (self.theta_sub is None):
            raise ValueError("give both subhalos (N, K, 2) and theta_sub (N,), or neither")
        if self.subhalos is not None and self.theta_sub is not None:
            _check_like("theta_sub", self.theta_sub, first, first.shape)
            shape = self.subhalos.shape
            if self.subhalos.dim() != 3 or shape[0] != first.shape[0] or shape[2] != 2:
                raise ValueError(
                    f"subhalos must have shape (N={first.shape[0]}, K, 2), got {tuple(shape)}"
                )
            _check_like("subhalos", self.subhalos, first, shape)

    @property
    def size(self) -> int:
        """Number of images N."""
        return int(self.theta_e.shape[0])

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of every tensor."""
        return self.theta_e.dtype

    @property
    def device(self) -> torch.device:
        """Device of every tensor."""
        return self.theta_e.device

    @property
    def n_subhalos(self) -> int:
        """Subhalos per image K (0 without)."""
        return 0 if self.subhalos is None else int(self.subhalos.shape[1])

    @classmethod
    def from_records(
        cls,
        records: Sequence[Any],
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
    ) -> "LensBatch":
        """Stack objects with the attributes of PARAMETERS (e.g. the simulator's LensParams).

        Optional attributes `subhalos` (sequence of (x, y)) and `theta_sub` (float): images
        with subhalos must all have the same count; images without get theta_sub 0.
        """
        if not records:
            raise ValueError("need at least one record")

        def column(name: str) -> Tensor:
            return torch.tensor([float(getattr(r, name)) for r in records], dtype=dtype)

        values = {name: column(name) for name in PARAMETERS}
        counts = {len(getattr(r, "subhalos", ())) for r in records} - {0}
        if len(counts) > 1:
            raise ValueError(f"images of one batch need one subhalo count, got {sorted(counts)}")
        if counts:
            k = counts.pop()
            positions = [
                list(getattr(r, "subhalos", ())) or [(0.0, 0.0)] * k for r in records
            ]  # no subhalos: zero-mass placeholders
            values["subhalos"] = torch.tensor(positions, dtype=dtype).reshape(len(records), k, 2)
            values["theta_sub"] = torch.tensor(
                [
                    float(getattr(r, "theta_sub", 0.0)) if getattr(r, "subhalos", ()) else 0.0
                    for r in records
                ],
                dtype=dtype,
            )
        return cls(**{name: value.to(device) for name, value in values.items()})

    def tensors(self) -> dict[str, Tensor]:
        """Every tensor field by name (subhalo fields only when present)."""
        return {
            f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None
        }


class Components(NamedTuple):
    """A noiseless image in two parts, each (N, 1, n, n), unit amplitude (1 at R_eff)."""

    arcs: Tensor  # lensed source after supersampling and PSF
    lens: Tensor  # lens light after supersampling and PSF


def _check_like(name: str, value: Any, ref: Tensor, shape: torch.Size) -> None:
    if not isinstance(value, Tensor):
        raise ValueError(f"{name} must be a tensor, got {type(value).__name__}")
    if value.shape != shape:
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(value.shape)}")
    if value.dtype != ref.dtype or value.device != ref.device:
        raise ValueError(
            f"{name} is {value.dtype} on {value.device}; every parameter must be "
            f"{ref.dtype} on {ref.device}"
        )


@lru_cache(maxsize=16)
def _grid(
    n: int, pixel: float, ss: int, dtype: torch.dtype, device: torch.device
) -> tuple[Tensor, Tensor]:
    """Sub-pixel centres c (m,) with m = n*ss, and the basis (5, m*m): x, y, x/r, y/r, 1.

    The SIS at the origin deflects by theta_e (x/r, y/r). Built in float64, then cast.
    """
    # Cached tensors must be ordinary ones even when first built under torch.inference_mode
    # (the scoring path), or a later autograd use (LensFit's refinement) could not save them.
    with torch.inference_mode(False):
        m = n * ss
        c = (torch.arange(m, dtype=torch.float64) - (m - 1) / 2.0) * (pixel / ss)
        y, x = torch.meshgrid(c, c, indexing="ij")  # y along rows, x along columns
        r = torch.hypot(x, y).clamp_min(_SIS_R_MIN)
        basis = torch.stack([x, y, x / r, y / r, torch.ones_like(x)]).reshape(5, m * m)
        return c.to(dtype=dtype, device=device), basis.to(dtype=dtype, device=device)


@lru_cache(maxsize=16)
def _psf_matrix(
    n: int, sigma: float, truncate: float, dtype: torch.dtype, device: torch.device
) -> Tensor:
    """(n, n) matrix B of the 1-D Gaussian blur with edge pixels extended: out = B @ in.

    The kernel is scipy's: exp(-t^2 / (2 sigma^2)) for |t| <= r = int(truncate sigma + 0.5),
    normalised; sigma in pixels. B[i, j] sums the weights of the taps whose (clipped) source
    pixel is j, so the blur equals scipy.ndimage.gaussian_filter1d(mode="nearest").
    """
    with torch.inference_mode(False):  # an ordinary tensor even when cached in inference
        radius = int(truncate * sigma + 0.5)
        t = torch.arange(-radius, radius + 1, dtype=torch.float64)
        kernel = torch.exp(-0.5 * (t / sigma) ** 2)
        kernel /= kernel.sum()
        rows = torch.arange(n)[:, None].expand(n, t.numel())
        cols = (rows + torch.arange(-radius, radius + 1)).clamp(0, n - 1)
        matrix = torch.zeros(n, n, dtype=torch.float64)
        matrix.index_put_((rows, cols), kernel.expand(n, -1), accumulate=True)
        return matrix.to(dtype=dtype, device=device)


def _carries_derivatives(t: Tensor) -> bool:
    """Whether `t` takes part in forward-mode AD (a dual tensor, or wrapped by torch.func)."""
    return (
        torch._C._functorch.is_functorch_wrapped_tensor(t)
        or forward_ad.unpack_dual(t).tangent is not None
    )


def _per_image(a: Tensor, b: Tensor) -> Tensor:
    """a @ b, image by image: a (N, p, q) or (p, q), b (N, q, M) or (q, M) -> (N, p, M).

    One product of the same shape per image, rather than one folded product whose blocking
    (and so whose rounding) depends on N: an image's bits do not depend on its batch.
    """
    if a.dim() == 3 and b.dim() == 3:
        return torch.bmm(a, b)
    pairs = [(x, b) for x in a] if a.dim() == 3 else [(a, x) for x in b]
    if torch.is_grad_enabled() or _carries_derivatives(a) or _carries_derivatives(b):
        return torch.stack([torch.mm(x, y) for x, y in pairs])
    # Nothing to differentiate: write into one tensor, skipping the stack's copy.
    out = a.new_empty(len(pairs), a.shape[-2], b.shape[-1])
    for i, (x, y) in enumerate(pairs):
        torch.mm(x, y, out=out[i])
    return out


def _column(t: Tensor) -> Tensor:
    """(N,) -> (N, 1, 1), to broadcast over images."""
    return t[:, None, None]


def point_mass_deflection(c: Tensor, theta_sub: Tensor, positions: Tensor) -> Tensor:
    """Exact deflection (N, 2, m, m) arcsec, (alpha_x, alpha_y), of K equal point masses.

    On the square grid c x c (c: (m,) arcsec, x along columns, y along rows);
    `theta_sub` (N,), `positions` (N, K, 2) arcsec. The offsets separate into dx (K, m)
    along columns and dy (K, m) along rows, so each mass costs four (m, m) operations per
    image. Images go in groups of about 2 MiB per (group, m, m) array: small enough for the
    CPU cache (3x faster than whole batches), large enough for the threads of an operation.
    """
    floor = _POINT_MASS_R2_MIN.get(c.dtype, _POINT_MASS_R2_MIN[torch.float32])
    m = c.shape[0]
    dx = c - positions[..., 0:1]  # (N, K, m)
    dy = c - positions[..., 1:2]
    dx2 = dx * dx
    dy2 = dy * dy + floor  # added, not clamped: one operation fewer; equal above the floor
    group = max(1, _SUBHALO_GROUP_BYTES // (m * m * c.element_size()))
    parts = []
    for start in range(0, positions.shape[0], group):
        g = slice(start, start + group)
        ax = c.new_zeros(dx[g].shape[0], m, m)
        ay = torch.zeros_like(ax)
        for k in range(positions.shape[1]):
            inv = torch.reciprocal(dy2[g, k, :, None] + dx2[g, k, None, :])  # 1 / r^2
            ax = ax.addcmul_(inv, dx[g, k, None, :])
            ay = ay.addcmul_(inv, dy[g, k, :, None])
        parts.append(torch.stack([ax, ay], dim=1))
    return torch.cat(parts) * (theta_sub * theta_sub)[:, None, None, None]


def _macro_coefficients(batch: LensBatch) -> Tensor:
    """(N, 2, 5): beta = theta - alpha_SIS - alpha_shear in the basis (x, y, x/r, y/r, 1)."""
    g1, g2, te = batch.gamma1, batch.gamma2, batch.theta_e
    zero = torch.zeros_like(te)
    return torch.stack(
        [
            torch.stack([1.0 - g1, -g2, -te, zero, zero], dim=-1),
            torch.stack([-g2, 1.0 + g1, zero, -te, zero], dim=-1),
        ],
        dim=1,
    )


def _subhalo_deflection(batch: LensBatch, c: Tensor) -> Tensor | None:
    """(N, 2, m*m) deflection of the subhalos on the sub-pixel grid, or None without."""
    if batch.subhalos is None or batch.theta_sub is None or not batch.n_subhalos:
        return None
    alpha = point_mass_deflection(c, batch.theta_sub, batch.subhalos)
    return alpha.reshape(batch.size, 2, -1)


def source_plane(batch: LensBatch, config: RenderConfig) -> tuple[Tensor, Tensor]:
    """Source-plane positions (beta_x, beta_y), each (N, m, m) arcsec, of the sub-pixels."""
    m = config.image_size * config.supersampling
    c, basis = _grid(
        config.image_size, config.pixel_scale, config.supersampling, batch.dtype, batch.device
    )
    beta = _per_image(_macro_coefficients(batch), basis)  # (N, 2, m*m)
    alpha = _subhalo_deflection(batch, c)
    if alpha is not None:
        beta = beta - alpha
    beta = beta.reshape(batch.size, 2, m, m)
    return beta[:, 0], beta[:, 1]


def _ellipse(r_eff: Tensor, q: Tensor, phi: Tensor) -> Tensor:
    """(N, 2, 2) matrix taking offsets (dx, dy) to (u, v) with u^2 + v^2 = (R / R_eff)^2.

    lenstronomy's SERSIC_ELLIPSE: ellipticity moduli e = (1 - q) / (1 + q),
    (e1, e2) = e (cos 2 phi, sin 2 phi); rotation, stretch and 1 / R_eff in one matrix.
    """
    e = (1.0 - q) / (1.0 + q)
    e1, e2 = e * torch.cos(2.0 * phi), e * torch.sin(2.0 * phi)
    norm = torch.sqrt(torch.clamp(torch.abs(1.0 - e1 * e1 - e2 * e2), min=1e-6))
    scale = 1.0 / (norm * r_eff)
    a, b, d = (1.0 - e1) * scale, -e2 * scale, (1.0 + e1) * scale
    return torch.stack([torch.stack([a, b], dim=-1), torch.stack([b, d], dim=-1)], dim=1)


def _sersic_radial(uv: Tensor, r_eff: Tensor, n: Tensor) -> Tensor:
    """Sersic profile (N, M) at scaled offsets uv (N, 2, M): exp(-b_n ((R/R_eff)^(1/n) - 1))."""
    r2 = (uv * uv).sum(dim=1)  # (R / R_eff)^2, (N, M)
    r2 = torch.maximum(r2, ((_SERSIC_R_MIN / r_eff) ** 2)[:, None])  # R >= 1e-4 arcsec
    bn = torch.clamp(1.9992 * n - 0.3271, min=1e-5)[:, None]
    s = torch.exp(torch.log(r2) * (0.5 / n)[:, None])  # (R / R_eff)^(1/n)
    return torch.exp(torch.addcmul(bn, -bn, s))


def sersic(
    x: Tensor,
    y: Tensor,
    r_eff: Tensor,
    n: Tensor,
    q: Tensor,
    phi: Tensor,
    center_x: Tensor | None = None,
    center_y: Tensor | None = None,
) -> Tensor:
    """Elliptical Sersic surface brightness (N, H, W), 1 at the half-light radius.

    `x`, `y` are positions in arcsec broadcastable to (N, H, W); the profile parameters and
    the centre (default the origin) are (N,). lenstronomy's SERSIC_ELLIPSE, the circularised
    radius floored at 1e-4 arcsec.
    """
    dx = x if center_x is None else x - _column(center_x)
    dy = y if center_y is None else y - _column(center_y)
    dx, dy = torch.broadcast_tensors(dx, dy)
    shape = (r_eff.shape[0], *dx.shape[-2:])
    offsets = torch.stack([dx.expand(shape), dy.expand(shape)], dim=1).flatten(2)  # (N, 2, M)
    uv = _per_image(_ellipse(r_eff, q, phi), offsets)
    return _sersic_radial(uv, r_eff, n).reshape(shape)


def downsample(image: Tensor, ss: int) -> Tensor:
    """Average ss x ss blocks: (N, 1, n*ss, n*ss) -> (N, 1, n, n)."""
    return image if ss == 1 else F.avg_pool2d(image, ss)


def psf_blur(image: Tensor, config: RenderConfig) -> Tensor:
    """Convolve (N, 1, n, n) with the Gaussian PSF, edge pixels extended (scipy mode="nearest")."""
    if config.psf_sigma == 0:
        return image
    blur = _psf_matrix(
        image.shape[-1],
        config.psf_sigma / config.pixel_scale,
        config.psf_truncate,
        image.dtype,
        image.device,
    )
    # Separable: along x (columns) then along y (rows), as two products with B (banded);
    # on the CPU faster than a float64 convolution, and exact for kernels wider than the image.
    n = image.shape[-1]
    flat = image.reshape(-1, n, n)
    return _per_image(blur, _per_image(flat, blur.T)).view(image.shape)


def _to_image(surface: Tensor, config: RenderConfig) -> Tensor:
    """(N, m*m) sub-pixel surface brightness -> (N, 1, n, n) pixels after the PSF."""
    m = config.image_size * config.supersampling
    return psf_blur(downsample(surface.view(-1, 1, m, m), config.supersampling), config)


def render_arcs(batch: LensBatch, config: RenderConfig | None = None) -> Tensor:
    """Lensed source (N, 1, n, n), unit amplitude, after supersampling and PSF."""
    config = config or RenderConfig()
    c, basis = _grid(
        config.image_size, config.pixel_scale, config.supersampling, batch.dtype, batch.device
    )
    ellipse = _ellipse(batch.source_r_eff, batch.source_q, batch.source_phi)  # (N, 2, 2)
    coefficients = _macro_coefficients(batch)  # (N, 2, 5); the last column multiplies 1
    centre = torch.stack([batch.source_x, batch.source_y], dim=-1)  # (N, 2)
    coefficients = torch.cat([coefficients[:, :, :4], -centre[:, :, None]], dim=2)
    # (u, v) = E (beta - centre), beta = C basis - alpha: one product for the smooth lens.
    uv = _per_image(torch.bmm(ellipse, coefficients), basis)
    alpha = _subhalo_deflection(batch, c)
    if alpha is not None:
        uv = uv - torch.bmm(ellipse, alpha)
    return _to_image(_sersic_radial(uv, batch.source_r_eff, batch.source_n), config)


def render_lens_light(batch: LensBatch, config: RenderConfig | None = None) -> Tensor:
    """Lens light (N, 1, n, n), unit amplitude, after supersampling and PSF."""
    config = config or RenderConfig()
    _, basis = _grid(
        config.image_size, config.pixel_scale, config.supersampling, batch.dtype, batch.device
    )
    uv = _per_image(_ellipse(batch.lens_r_eff, batch.lens_q, batch.lens_phi), basis[:2])
    return _to_image(_sersic_radial(uv, batch.lens_r_eff, batch.lens_n), config)


def render_components(batch: LensBatch, config: RenderConfig | None = None) -> Components:
    """Arcs and lens light, each (N, 1, n, n), unit amplitude (1 at R_eff before the PSF)."""
    return Components(render_arcs(batch, config), render_lens_light(batch, config))


def combine(
    components: Components, source_amplitude: Tensor | float, lens_amplitude: Tensor | float
) -> Tensor:
    """source_amplitude * arcs + lens_amplitude * lens light: (N, 1, n, n).

    Amplitudes are floats or (N,) tensors in the units wanted for the image, e.g. counts/s
    per pixel at R_eff (the study's intensities: lens 1.2, source U[0.7, 0.9]).
    """

    def per_image(a: Tensor | float) -> Tensor | float:
        return a.reshape(-1, 1, 1, 1) if isinstance(a, Tensor) else a

    arcs, lens = components
    return arcs * per_image(source_amplitude) + lens * per_image(lens_amplitude)


__all__ = [
    "PARAMETERS",
    "Components",
    "LensBatch",
    "RenderConfig",
    "combine",
    "downsample",
    "point_mass_deflection",
    "psf_blur",
    "render_arcs",
    "render_components",
    "render_lens_light",
    "sersic",
    "source_plane",
]

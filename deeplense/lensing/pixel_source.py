"""A pixelated source for the flexible lens: the lensing operator and its regularisation.

The source is a grid of P x P pixels on the source plane, centred at the flexible
parameters' (source_x, source_y), of side 2 `half_width` arcsec: regular, or with a `core`
scale a, regular in asinh(offset / a) along each axis, so pixels of about a x dt at the
centre grow to about |offset| x dt in the wings (dt = 2 asinh(half_width / a) / P): compact
knots and cusps near the source centre get finer pixels than its faint extent, at the same
P. Interpolation is bilinear in grid index. Each image sub-pixel is
ray-traced to the source plane (`flexible.source_plane`) and takes the source's bilinear
interpolation there; sub-pixels are averaged to image pixels and convolved with the PSF.
Source values beyond the grid are zero (the same boundary the regularisation assumes), so a
ray landing within half a pixel outside the grid keeps the weights of its corners inside it.

The regularisation (Suyu et al. 2006, section 2.2) is the quadratic form s^T R s of the
source's gradient (forward differences) or curvature (second differences), both with zero
source beyond the grid, which makes R positive definite and its determinant finite.

Units: arcsec; the image grid is `flexible`'s (pixel centres at (i - (n - 1) / 2) *
pixel_scale, y along rows). Source pixels are numbered row-major (y along rows).
"""

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from deeplense.lensing.flexible import (
    INDEX,
    FlexibleConfig,
    clamp_parameters,
    image_grid,
    light_surfaces,
    source_plane,
    to_pixels,
)
from deeplense.lensing.psf import convolve

Regularisation = Literal["curvature", "gradient"]
REGULARISATIONS: tuple[Regularisation, ...] = ("curvature", "gradient")
_CHUNK = 256  # source columns convolved at once (FFT memory)
_ROUNDING = 1e-12  # FFT values below this share of a column's peak are zero


@dataclass(frozen=True)
class PixelSourceConfig:
    """The image grid and lens light (`flexible`), and the source grid."""

    flexible: FlexibleConfig
    source_pixels: int = 40  # P: source pixels per side
    half_width: float = 1.0  # arcsec: the grid spans source centre +- this, per axis
    regularisation: Regularisation = "curvature"
    core: float | None = None  # arcsec: the stretched grid's core scale a; None: regular

    def __post_init__(self) -> None:
        if self.regularisation not in REGULARISATIONS:
            raise ValueError(
                f"unknown regularisation {self.regularisation!r}; valid: {REGULARISATIONS}"
            )
        if self.source_pixels < 2 or not self.half_width > 0:
            raise ValueError("need source_pixels >= 2 and half_width > 0")
        if self.core is not None and not self.core > 0:
            raise ValueError(f"the core scale must be positive or None, got {self.core}")

    @property
    def step(self) -> float:
        """Grid step: arcsec (regular grid), or in asinh(offset / core) (stretched)."""
        if self.core is None:
            return 2.0 * self.half_width / self.source_pixels
        return 2.0 * math.asinh(self.half_width / self.core) / self.source_pixels

    def index(self, offset: Tensor) -> Tensor:
        """Fractional grid index (0 at the first pixel's centre) of offsets (arcsec) from
        the grid centre along one axis; any shape."""
        t = offset if self.core is None else self.core * torch.asinh(offset / self.core)
        scale = 1.0 if self.core is None else self.core
        return t / (scale * self.step) + (self.source_pixels - 1) / 2.0

    def offset(self, index: Tensor) -> Tensor:
        """The inverse of `index`: arcsec from the grid centre."""
        t = (index - (self.source_pixels - 1) / 2.0) * self.step
        return t if self.core is None else self.core * torch.sinh(t)

    @property
    def n_light(self) -> int:
        return len(self.flexible.light_sigmas)

    @property
    def n_source(self) -> int:
        return self.source_pixels**2

    @property
    def n_linear(self) -> int:
        """Columns: light Gaussians, source pixels, offset."""
        return self.n_light + self.n_source + 1


def source_pixel_centres(theta: Tensor, config: PixelSourceConfig) -> tuple[Tensor, Tensor]:
    """Source pixel centres x, y (N, P*P) arcsec, row-major, for parameters theta (N, 13)."""
    c = config.offset(torch.arange(config.source_pixels, dtype=theta.dtype, device=theta.device))
    y, x = torch.meshgrid(c, c, indexing="ij")
    cx, cy = theta[:, INDEX["source_x"], None], theta[:, INDEX["source_y"], None]
    return x.flatten()[None] + cx, y.flatten()[None] + cy


def bilinear_weights(
    bx: Tensor, by: Tensor, centre: tuple[float, float], config: PixelSourceConfig
) -> tuple[Tensor, Tensor]:
    """Source pixel indices and weights (R, 4) of rays at bx, by (R,) arcsec on one image's
    grid centred at `centre`; a corner outside the grid gets weight 0 (index clamped)."""
    p = config.source_pixels
    fx = config.index(bx - centre[0])  # fractional column
    fy = config.index(by - centre[1])  # fractional row
    i0, j0 = torch.floor(fx), torch.floor(fy)
    tx, ty = fx - i0, fy - j0
    i0, j0 = i0.long(), j0.long()
    index, weight = [], []
    for dj, wy in ((0, 1.0 - ty), (1, ty)):
        for di, wx in ((0, 1.0 - tx), (1, tx)):
            i, j = i0 + di, j0 + dj
            inside = (i >= 0) & (i < p) & (j >= 0) & (j < p)
            index.append(torch.where(inside, j * p + i, 0))
            weight.append(torch.where(inside, wx * wy, 0.0))
    return torch.stack(index, dim=1), torch.stack(weight, dim=1)


def lensing_operator(theta: Tensor, config: PixelSourceConfig, psf: Tensor) -> Tensor:
    """The source pixels seen in the image: (n*n, P*P) float64 for one image's parameters
    theta (13,) and PSF (k, k). Column j is the image of a unit source pixel j (bilinear
    interpolation, sub-pixel average, PSF); exactly zero below 1e-12 of its peak (beyond the
    PSF's reach of the pixels its rays land on)."""
    fc = config.flexible
    theta = clamp_parameters(theta.double()[None])
    x, y = image_grid(fc, theta)  # (1, m, m)
    bx, by = source_plane(theta, x, y)  # (1, m, m)
    m, n, ss = x.shape[-1], fc.image_size, fc.supersampling
    centre = (float(theta[0, INDEX["source_x"]]), float(theta[0, INDEX["source_y"]]))
    index, weight = bilinear_weights(bx.flatten(), by.flatten(), centre, config)  # (m*m, 4)
    rows = torch.arange(m, device=x.device)
    pixel = ((rows[:, None] // ss) * n + rows[None, :] // ss).flatten()  # (m*m,) image pixel
    raw = torch.zeros(n * n, config.n_source, dtype=torch.float64, device=x.device)
    raw.index_put_(
        (pixel[:, None].expand_as(index).flatten(), index.flatten()),
        weight.flatten() / ss**2,
        accumulate=True,
    )  # (n*n, P*P): sub-pixel average of the bilinear weights
    hit = (raw != 0).any(dim=0)  # (P*P,) source pixels some ray reaches
    out = torch.zeros_like(raw)
    used = torch.nonzero(hit).flatten()
    for start in range(0, len(used), _CHUNK):
        cols = used[start : start + _CHUNK]
        images = raw[:, cols].T.reshape(len(cols), 1, n, n)
        blurred = convolve(images, psf.double()).reshape(len(cols), n * n)
        # The FFT leaves rounding (~1e-16 of the peak) where the PSF does not reach: zero
        # it, so that rows no source pixel reaches drop out of the source block.
        peak = blurred.abs().amax(dim=1, keepdim=True)
        out[:, cols] = torch.where(blurred.abs() > _ROUNDING * peak, blurred, 0.0).T
    return out


def pixel_design(theta: Tensor, config: PixelSourceConfig, psf: Tensor) -> Tensor:
    """The linear bases of one image: (n*n, K) float64, K = config.n_linear, columns light
    Gaussians, source pixels, offset; theta (13,), psf (k, k)."""
    fc = config.flexible
    t = clamp_parameters(theta.double()[None])
    x, y = image_grid(fc, t)
    light = to_pixels(light_surfaces(t, x, y, fc), fc, psf.double())[0]  # (n*n, Kl)
    source = lensing_operator(theta, config, psf)
    return torch.cat([light, source, torch.ones_like(light[:, :1])], dim=1)


def _difference(p: int, order: int) -> Tensor:
    """(p, p) forward difference (order 1: zero beyond the last value) or second difference
    (order 2: zero beyond both ends) along one axis; both invertible."""
    eye = torch.eye(p, dtype=torch.float64)
    if order == 1:
        return torch.diag(torch.ones(p - 1, dtype=torch.float64), 1) - eye
    off = torch.diag(torch.ones(p - 1, dtype=torch.float64), 1)
    return off + off.T - 2.0 * eye


def regularisation_matrix(config: PixelSourceConfig) -> Tensor:
    """R (P*P, P*P) float64, positive definite: s^T R s is the source's summed squared
    gradient or curvature along x and y, with zero source beyond the grid."""
    p = config.source_pixels
    d = _difference(p, 1 if config.regularisation == "gradient" else 2)
    eye = torch.eye(p, dtype=torch.float64)
    along_x, along_y = torch.kron(eye, d), torch.kron(d, eye)  # row-major: x is the fast axis
    return along_x.T @ along_x + along_y.T @ along_y


__all__ = [
    "REGULARISATIONS",
    "PixelSourceConfig",
    "Regularisation",
    "bilinear_weights",
    "lensing_operator",
    "pixel_design",
    "regularisation_matrix",
    "source_pixel_centres",
]

"""Render an image with Model R's departures (`training.lensing.realism.RealParams`).

The pieces are the project's torch physics: `deeplense.lensing.epl` (the elliptical
power-law deflection), the renderer's point masses, Sersic light, supersampling and Gaussian
blur (`deeplense.lensing.torch_renderer`), and `deeplense.lensing.psf` (Moffat kernels).
Float64 on one torch thread, as `training.lensing.render`. At Model A's values (slope 2,
q 1, no offset, one source and one lens-light component, the nominal Gaussian PSF) the
image equals Model A's renderer's to rounding (tested).

Lens equation, all centred on the lens centre c = (lens_x, lens_y):
beta = theta - alpha_EPL(theta - c) - Gamma (theta - c) - sum_k alpha_k(theta), with the
subhalos already placed around c (`realism.draw`). Source light: the host Sersic (the
LensParams source fields) plus `source_components`, each its own elliptical Sersic at its
intensity. Lens light: the Sersic of the LensParams lens fields, plus the second component
when lens2_intensity > 0, both at c.
"""

import torch
from torch import Tensor

from deeplense.instrument import FWHM_PER_SIGMA
from deeplense.lensing import psf as psf_module
from deeplense.lensing import torch_renderer
from deeplense.lensing.epl import epl_deflection
from deeplense.lensing.torch_renderer import RenderConfig
from training.lensing.realism import RealParams
from training.lensing.render import Components, LensParams, SimConfig


def _t(*values: float) -> Tensor:
    return torch.tensor(values, dtype=torch.float64)


def _grid(config: RenderConfig) -> tuple[Tensor, Tensor, Tensor]:
    """Sub-pixel centres c (m,) and the grids x, y (1, m, m): the renderer's convention."""
    m = config.image_size * config.supersampling
    c = (torch.arange(m, dtype=torch.float64) - (m - 1) / 2.0) * (
        config.pixel_scale / config.supersampling
    )
    y, x = torch.meshgrid(c, c, indexing="ij")
    return c, x[None], y[None]


def _deflection(
    params: LensParams, real: RealParams, c: Tensor, x: Tensor, y: Tensor
) -> tuple[Tensor, Tensor]:
    """Total deflection (alpha_x, alpha_y), each (1, m, m) arcsec."""
    cx, cy = real.lens_x, real.lens_y
    ax, ay = epl_deflection(
        x,
        y,
        _t(params.theta_e),
        _t(real.mass_slope),
        _t(real.mass_q),
        _t(real.mass_phi),
        _t(cx),
        _t(cy),
    )
    dx, dy = x - cx, y - cy
    ax = ax + params.gamma1 * dx + params.gamma2 * dy
    ay = ay + params.gamma2 * dx - params.gamma1 * dy
    if params.subhalos and not params.subhalo_theta:  # K equal masses: one call
        positions = torch.tensor(params.subhalos, dtype=torch.float64)[None]  # (1, K, 2)
        alpha = torch_renderer.point_mass_deflection(c, _t(params.theta_sub), positions)
        ax, ay = ax + alpha[:, 0], ay + alpha[:, 1]
    elif params.subhalos:  # each its own mass, summed in place
        for theta, position in zip(params.subhalo_theta, params.subhalos, strict=True):
            alpha = torch_renderer.point_mass_deflection(c, _t(theta), _t(*position)[None, None])
            ax.add_(alpha[:, 0])
            ay.add_(alpha[:, 1])
    return ax, ay


def _light(x: Tensor, y: Tensor, parts: list[tuple[float, ...]]) -> Tensor:
    """Sum (1, m, m) of Sersics (x, y, r_eff, n, q, phi, intensity) at positions x, y."""
    cx, cy, r_eff, n, q, phi, amp = (_t(*column) for column in zip(*parts, strict=True))
    surface = torch_renderer.sersic(x, y, r_eff, n, q, phi, cx, cy)  # (K, m, m)
    return (surface * amp[:, None, None]).sum(dim=0, keepdim=True)


def _psf(image: Tensor, real: RealParams, config: SimConfig) -> Tensor:
    """(1, 1, n, n) through this image's PSF (the renderer's Gaussian, or a Moffat)."""
    fwhm = real.psf_fwhm or config.psf_sigma * FWHM_PER_SIGMA  # arcsec
    if real.psf == "gaussian":
        render = RenderConfig(
            image_size=config.image_size,
            pixel_scale=config.pixel_scale,
            supersampling=config.supersampling,
            psf_sigma=fwhm / FWHM_PER_SIGMA,
        )
        return torch_renderer.psf_blur(image, render)
    if real.psf == "moffat":
        kernel = psf_module.moffat_kernel(fwhm / config.pixel_scale, real.psf_beta)
        return psf_module.convolve(image, kernel)
    raise ValueError(f"unknown PSF {real.psf!r}; valid: gaussian, moffat")


def render_components(params: LensParams, config: SimConfig) -> Components:
    """Noiseless arcs and lens light (n, n) float64 in counts/s/pixel (intensities applied)."""
    real = params.realism or RealParams()
    render = config.render_config()
    with torch.no_grad():
        c, x, y = _grid(render)
        ax, ay = _deflection(params, real, c, x, y)
        host = (
            params.source_x,
            params.source_y,
            params.source_r_eff,
            params.source_n,
            params.source_q,
            params.source_phi,
            params.source_intensity,
        )
        source = _light(x - ax, y - ay, [host, *real.source_components])
        lens = [
            (
                real.lens_x,
                real.lens_y,
                params.lens_r_eff,
                params.lens_n,
                params.lens_q,
                params.lens_phi,
                params.lens_intensity,
            )
        ]
        if real.lens2_intensity > 0:
            lens.append(
                (
                    real.lens_x,
                    real.lens_y,
                    real.lens2_r_eff,
                    real.lens2_n,
                    real.lens2_q,
                    real.lens2_phi,
                    real.lens2_intensity,
                )
            )
        ss = render.supersampling
        arcs = _psf(torch_renderer.downsample(source[:, None], ss), real, config)
        light = _psf(torch_renderer.downsample(_light(x, y, lens)[:, None], ss), real, config)
    return Components(arcs=arcs[0, 0].numpy(), lens=light[0, 0].numpy())

"""The simulator's images: its parameters and instrument, the torch renderer, noise, [0, 1].

The physics (ray tracing, Sersic light, supersampling, PSF) is the project's one renderer,
`deeplense.lensing.torch_renderer`, run in float64 on the CPU on one torch thread: an image's
bits then depend neither on the process that renders it nor on the machine's core count.
`SimConfig.render_config` is the one mapping from the simulator's instrument to the
renderer's grid and PSF.

Model: a singular isothermal sphere (Einstein radius theta_e) plus external shear, both
centred on the optical axis, optionally with K point-mass subhalos (equal, or each with its
own Einstein radius in `LensParams.subhalo_theta`); lens light is an
elliptical Sersic at the lens centre; the source is an elliptical Sersic seen through the
lens equation (conventions in the renderer's docstring, lenstronomy's).

Photometry (the study's, REFERENCE.md "Photometry"): each Sersic's `intensity` is its surface
brightness at R_eff in counts/s per pixel, and a pixel's value is the profile's value there
(no pixel-area factor). The noise is Poisson at the image's own `exposure` over a sky of
`SimConfig.sky` counts/s/pixel (`training.lensing.noise`); nothing rescales it to an SNR.
"""

import dataclasses
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from deeplense.instrument import (
    STUDY_IMAGE_SIZE,
    STUDY_PIXEL_SCALE_ARCSEC,
    STUDY_PSF_SIGMA_ARCSEC,
    Instrument,
)
from deeplense.lensing import torch_renderer
from deeplense.lensing.torch_renderer import LensBatch, RenderConfig
from training.lensing.noise import min_max_scale, poisson_observation, snr_statistics

if TYPE_CHECKING:
    from training.lensing.realism import RealParams


@dataclass(frozen=True)
class SimConfig:
    """Instrument and grid: 150 x 150 pixels of 0.05" (7.5" field), PSF sigma 0.1", 300 s,
    sky 0.1 counts/s/pixel. `exposure` is the base exposure: Model A images use it as is,
    Model B images scale it to reach their drawn SNR (`LensParams.exposure` holds each one's)."""

    image_size: int = STUDY_IMAGE_SIZE  # pixels per side
    # arcsec per side; pixel scale = field_of_view / image_size (7.5")
    field_of_view: float = STUDY_IMAGE_SIZE * STUDY_PIXEL_SCALE_ARCSEC
    psf_sigma: float = STUDY_PSF_SIGMA_ARCSEC  # arcsec, Gaussian PSF standard deviation
    exposure: float = 300.0  # seconds
    sky: float = 0.1  # background, counts/s/pixel
    supersampling: int = 2  # sub-pixels per pixel per axis (2: < 0.07 sigma from exact)
    # Arcsec per pixel when set (the field is then image_size x this); None: field_of_view /
    # image_size, the study's 7.5" field whatever the image size.
    pixel_scale_arcsec: float | None = None

    @property
    def pixel_scale(self) -> float:
        """Arcsec per pixel."""
        if self.pixel_scale_arcsec is not None:
            return self.pixel_scale_arcsec
        return self.field_of_view / self.image_size

    def instrument(self) -> Instrument:
        """The instrument these images are seen through (recorded in the manifest)."""
        return Instrument(pixel_scale=self.pixel_scale, psf_sigma=self.psf_sigma)

    def render_config(self) -> RenderConfig:
        """The renderer's grid and PSF for this instrument (its PSF cut at 5 sigma, as
        lenstronomy's default)."""
        return RenderConfig(
            image_size=self.image_size,
            pixel_scale=self.pixel_scale,
            supersampling=self.supersampling,
            psf_sigma=self.psf_sigma,
        )


@dataclass(frozen=True)
class LensParams:
    """Everything that defines one image apart from its noise. Angles in arcsec, radians."""

    theta_e: float  # Einstein radius of the SIS
    gamma1: float  # external shear components
    gamma2: float
    lens_r_eff: float  # lens light half-light radius
    lens_n: float  # lens light Sersic index
    lens_q: float  # lens light axis ratio (minor/major)
    lens_phi: float  # lens light major-axis angle from +x
    source_x: float  # source centre (unlensed position)
    source_y: float
    source_r_eff: float
    source_n: float
    source_q: float
    source_phi: float
    lens_intensity: float  # lens light surface brightness at R_eff, counts/s/pixel
    source_intensity: float  # source surface brightness at R_eff, counts/s/pixel
    exposure: float = 300.0  # seconds, this image's (Model B scales it to reach snr_target)
    snr_target: float = 0.0  # the median arc S/N the exposure was scaled to; 0: not scaled
    # Einstein radius of each subhalo; with `subhalo_theta`, only a record: the equal-mass
    # equivalent sqrt(mean theta_i^2), so that K theta_sub^2 / theta_e^2 is the mass fraction
    theta_sub: float = 0.0
    subhalos: tuple[tuple[float, float], ...] = ()  # subhalo positions (x, y)
    subhalo_theta: tuple[float, ...] = ()  # per-subhalo Einstein radii; () when all theta_sub
    z_lens: float = 0.5  # redshifts (only recorded here: theta_e and sizes already follow)
    z_source: float = 1.0
    # Model R's departures (EPL mass, offset centre, lens light, PSF, source morphology);
    # None: Model A's physics, rendered by the path above unchanged
    realism: "RealParams | None" = None


def phi_q_to_e1e2(phi: float, q: float) -> tuple[float, float]:
    """Orientation (radians) and axis ratio to lenstronomy's ellipticity moduli (e1, e2)."""
    e = (1.0 - q) / (1.0 + q)
    return e * math.cos(2.0 * phi), e * math.sin(2.0 * phi)


@dataclass(frozen=True)
class Components:
    """A noiseless image split into its parts, rates in counts/s/pixel, each (n, n) float64."""

    arcs: np.ndarray  # lensed source after the PSF
    lens: np.ndarray  # lens light after the PSF

    @property
    def rate(self) -> np.ndarray:
        """Total noiseless rate (n, n)."""
        return self.arcs + self.lens

    def snr(self, exposure: float, sky: float) -> tuple[float, float]:
        """(median, peak) S/N of the arcs over their half-light region at `exposure`."""
        return snr_statistics(self.arcs, self.lens, exposure, sky)


@contextmanager
def _one_torch_thread() -> Iterator[None]:
    """Run the block on one torch CPU thread, then restore the caller's thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def render_components(params: LensParams, config: SimConfig) -> Components:
    """Noiseless arcs and lens light in counts/s/pixel at the params' Sersic intensities.

    One image per renderer call: at 150 x 150 with 2 x 2 sub-pixels a batch's arrays outgrow
    the CPU cache, and one image per call was measured the fastest (bench/bench_renderer.py).
    Subhalos of unequal masses (`subhalo_theta`) go through `_unequal_subhalo_arcs`;
    an image with departures (`realism`) through `training.lensing.realistic`.
    """
    if params.realism is not None:
        from training.lensing import realistic  # imports this module

        with _one_torch_thread():
            return realistic.render_components(params, config)
    with torch.no_grad(), _one_torch_thread():
        if params.subhalo_theta:
            smooth = LensBatch.from_records(
                [dataclasses.replace(params, subhalos=(), subhalo_theta=())], dtype=torch.float64
            )
            render = config.render_config()
            unit = torch_renderer.Components(
                _unequal_subhalo_arcs(smooth, params, render),
                torch_renderer.render_lens_light(smooth, render),
            )
        else:
            batch = LensBatch.from_records([params], dtype=torch.float64)
            unit = torch_renderer.render_components(batch, config.render_config())
    arcs = unit.arcs[0, 0].numpy() * params.source_intensity  # (n, n) float64
    lens = unit.lens[0, 0].numpy() * params.lens_intensity
    return Components(arcs=arcs, lens=lens)


def _unequal_subhalo_arcs(smooth: LensBatch, params: LensParams, config: RenderConfig) -> Tensor:
    """Lensed source (1, 1, n, n), unit amplitude, of the smooth lens `smooth` plus point
    masses at `params.subhalos` with Einstein radii `params.subhalo_theta` (arcsec).

    The renderer's LensBatch holds one Einstein radius per image, so its public pieces are
    put together here: the smooth lens's source plane, minus the masses' deflection (each
    mass through `point_mass_deflection` on its own, summed in place), through
    the source's Sersic, sub-pixel averaging and the PSF, as `render_arcs` does.
    """
    if len(params.subhalo_theta) != len(params.subhalos):
        raise ValueError(
            f"{len(params.subhalo_theta)} subhalo Einstein radii for "
            f"{len(params.subhalos)} subhalos"
        )
    m = config.image_size * config.supersampling
    # sub-pixel centres along x (columns) and y (rows), the renderer's convention
    c = (torch.arange(m, dtype=torch.float64) - (m - 1) / 2.0) * (
        config.pixel_scale / config.supersampling
    )
    theta = torch.tensor(params.subhalo_theta, dtype=torch.float64)[:, None]  # (K, 1)
    positions = torch.tensor(params.subhalos, dtype=torch.float64)[:, None, None, :]  # (K,1,1,2)
    alpha = torch.zeros(2, m, m, dtype=torch.float64)  # (alpha_x, alpha_y) arcsec
    for theta_k, position_k in zip(theta, positions, strict=True):  # in place: 2 (m, m) arrays
        alpha += torch_renderer.point_mass_deflection(c, theta_k, position_k)[0]
    beta_x, beta_y = torch_renderer.source_plane(smooth, config)  # (1, m, m) each
    surface = torch_renderer.sersic(
        beta_x - alpha[0],
        beta_y - alpha[1],
        smooth.source_r_eff,
        smooth.source_n,
        smooth.source_q,
        smooth.source_phi,
        smooth.source_x,
        smooth.source_y,
    )
    return torch_renderer.psf_blur(
        torch_renderer.downsample(surface[:, None], config.supersampling), config
    )


def observe(
    components: Components, exposure: float, config: SimConfig, rng: np.random.Generator | None
) -> np.ndarray:
    """Final image (n, n) float32 in [0, 1]: with Poisson noise drawn from `rng`, or noiseless."""
    rate = components.rate
    if rng is not None:
        rate = poisson_observation(rate, exposure, config.sky, rng)
    return min_max_scale(rate)


def render_image(
    params: LensParams, config: SimConfig, rng: np.random.Generator | None = None
) -> np.ndarray:
    """Final image (n, n) float32 in [0, 1] at the params' own exposure (see `observe`)."""
    return observe(render_components(params, config), params.exposure, config, rng)

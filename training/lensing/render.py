"""Render one lensing image from its parameters: ray-trace, light, PSF, noise, [0, 1] scaling.

Model: a singular isothermal sphere (Einstein radius theta_e) plus external shear, both
centred on the optical axis, optionally with K equal point-mass subhalos; lens light is an
elliptical Sersic at the lens centre; the source is an elliptical Sersic seen through the
lens equation. Surface brightness is evaluated on a grid supersampled `supersampling` times
per axis, averaged to pixels, then convolved with a Gaussian PSF (edge pixels extended, as
lenstronomy does).

Photometry (the study's, REFERENCE.md "Photometry"): each Sersic's `intensity` is its surface
brightness at R_eff in counts/s per pixel, and a pixel's value is the profile's value there
(no pixel-area factor). The noise is Poisson at the image's own `exposure` over a sky of
`SimConfig.sky` counts/s/pixel (`training.lensing.noise`); nothing rescales it to an SNR.
"""

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from training.lensing.grid import (
    downsample,
    point_mass_deflection_grid,
    radial_unit_vectors,
    supersampled_grid,
)
from training.lensing.noise import min_max_scale, poisson_observation, snr_statistics
from training.lensing.profiles import sersic

PSF_TRUNCATE = 5.0  # the Gaussian kernel is cut at 5 sigma, as lenstronomy's default


@dataclass(frozen=True)
class SimConfig:
    """Instrument and grid: 150 x 150 pixels of 0.05" (7.5" field), PSF sigma 0.1", 300 s,
    sky 0.1 counts/s/pixel. `exposure` is the base exposure: Model A images use it as is,
    Model B images scale it to reach their drawn SNR (`LensParams.exposure` holds each one's)."""

    image_size: int = 150  # pixels per side
    field_of_view: float = 7.5  # arcsec per side; pixel scale = field_of_view / image_size
    psf_sigma: float = 0.1  # arcsec, Gaussian PSF standard deviation
    exposure: float = 300.0  # seconds
    sky: float = 0.1  # background, counts/s/pixel
    supersampling: int = 2  # sub-pixels per pixel per axis (2: < 0.07 sigma from exact)

    @property
    def pixel_scale(self) -> float:
        """Arcsec per pixel."""
        return self.field_of_view / self.image_size


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
    theta_sub: float = 0.0  # Einstein radius of each subhalo
    subhalos: tuple[tuple[float, float], ...] = ()  # subhalo positions (x, y)
    z_lens: float = 0.5  # redshifts (only recorded here: theta_e and sizes already follow)
    z_source: float = 1.0


@dataclass(frozen=True)
class Components:
    """A noiseless image split into its parts, rates in counts/s/pixel, each (n, n)."""

    arcs: np.ndarray  # lensed source after the PSF
    lens: np.ndarray  # lens light after the PSF

    @property
    def rate(self) -> np.ndarray:
        """Total noiseless rate (n, n)."""
        return self.arcs + self.lens

    def snr(self, exposure: float, sky: float) -> tuple[float, float]:
        """(median, peak) S/N of the arcs over their half-light region at `exposure`."""
        return snr_statistics(self.arcs, self.lens, exposure, sky)


def macro_source_plane(params: LensParams, config: SimConfig) -> tuple[np.ndarray, np.ndarray]:
    """Source-plane positions (beta_x, beta_y), each (n*ss, n*ss) arcsec, of the sub-pixels,
    through the macro model alone (SIS + shear, no subhalos)."""
    n, ss = config.image_size, config.supersampling
    x, y = supersampled_grid(n, config.pixel_scale, ss)
    ux, uy = radial_unit_vectors(n, config.pixel_scale, ss)  # SIS at the origin: theta_e * u
    g1, g2 = params.gamma1, params.gamma2
    # beta = theta - alpha_SIS - alpha_shear, with alpha_shear = [[g1, g2], [g2, -g1]] theta
    bx = (1.0 - g1) * x
    bx -= g2 * y
    bx -= params.theta_e * ux
    by = (1.0 + g1) * y
    by -= g2 * x
    by -= params.theta_e * uy
    return bx, by


def source_plane(params: LensParams, config: SimConfig) -> tuple[np.ndarray, np.ndarray]:
    """Source-plane positions (beta_x, beta_y), each (n*ss, n*ss) arcsec, with subhalos."""
    bx, by = macro_source_plane(params, config)
    if params.subhalos:
        n, ss = config.image_size, config.supersampling
        px, py = point_mass_deflection_grid(
            n, config.pixel_scale, ss, params.theta_sub, np.array(params.subhalos)
        )
        bx -= px
        by -= py
    return bx, by


def source_light(params: LensParams, bx: np.ndarray, by: np.ndarray) -> np.ndarray:
    """Source surface brightness (1 at R_eff) at source-plane positions, float32."""
    # float32 halves the cost of the Sersic powers and exps; 1e-7 relative is far below noise.
    return sersic(
        bx.astype(np.float32),
        by.astype(np.float32),
        params.source_r_eff,
        params.source_n,
        params.source_q,
        params.source_phi,
        (params.source_x, params.source_y),
    )


def lens_light(params: LensParams, config: SimConfig) -> np.ndarray:
    """Lens surface brightness (1 at R_eff) on the supersampled grid, float32."""
    x, y = supersampled_grid(config.image_size, config.pixel_scale, config.supersampling)
    return sersic(
        x.astype(np.float32),
        y.astype(np.float32),
        params.lens_r_eff,
        params.lens_n,
        params.lens_q,
        params.lens_phi,
    )


def surface_brightness(params: LensParams, config: SimConfig) -> tuple[np.ndarray, np.ndarray]:
    """Lensed source and lens light, each (n*ss, n*ss), 1 at R_eff, before the PSF."""
    return source_light(params, *source_plane(params, config)), lens_light(params, config)


def psf(image: np.ndarray, config: SimConfig) -> np.ndarray:
    """Convolve a pixel image (n, n) with the Gaussian PSF (edge pixels extended outwards)."""
    sigma = config.psf_sigma / config.pixel_scale
    return ndimage.gaussian_filter(image, sigma, mode="nearest", truncate=PSF_TRUNCATE)


def render_components(params: LensParams, config: SimConfig) -> Components:
    """Noiseless arcs and lens light in counts/s/pixel at the params' Sersic intensities."""
    ss = config.supersampling
    arcs = psf(downsample(source_light(params, *source_plane(params, config)), ss), config)
    lens = psf(downsample(lens_light(params, config), ss), config)
    arcs *= params.source_intensity
    lens *= params.lens_intensity
    return Components(arcs=arcs, lens=lens)


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

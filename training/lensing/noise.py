"""Photon noise at a target signal-to-noise ratio, and the per-image [0, 1] scaling.

Units: images are rates in counts per second per pixel; `exposure` is seconds; `sky` is the
background rate (counts/s/pixel). An observation is N ~ Poisson(exposure * (signal + sky))
counts per pixel, returned sky-subtracted as N / exposure - sky (counts/s).

SNR definition: at the pixel where the lensed source (arcs, after the PSF) is brightest
(for the lens without subhalos, so that subhalos change the arcs and nothing else),
    SNR = S / sigma,  sigma = sqrt((S + L + sky) * exposure) / exposure,
with S the arc rate and L the lens-light rate at that pixel: the peak arc signal over the
Poisson noise standard deviation at that same pixel.
"""

import math

import numpy as np


def arc_peak_counts(snr: float, lens_fraction: float, sky_counts: float) -> float:
    """Counts S*t the brightest arc pixel needs so that its SNR is `snr`.

    `lens_fraction` = L / S at that pixel, `sky_counts` = sky * exposure. Solves
    snr^2 ((1 + lens_fraction) u + sky_counts) = u^2 for u = S * exposure.
    """
    if snr <= 0 or lens_fraction < 0 or sky_counts < 0:
        raise ValueError(
            f"need snr > 0, lens_fraction >= 0, sky_counts >= 0; got {snr}, "
            f"{lens_fraction}, {sky_counts}"
        )
    a = snr * snr * (1.0 + lens_fraction)
    return 0.5 * (a + math.sqrt(a * a + 4.0 * snr * snr * sky_counts))


def poisson_observation(
    rate: np.ndarray, exposure: float, sky: float, rng: np.random.Generator
) -> np.ndarray:
    """One noisy, sky-subtracted exposure (counts/s) of a noiseless `rate` image (counts/s)."""
    counts = rng.poisson(np.maximum(rate + sky, 0.0) * exposure)
    return counts / exposure - sky


def noise_sigma(rate: np.ndarray, exposure: float, sky: float) -> np.ndarray:
    """Per-pixel standard deviation (counts/s) of `poisson_observation`."""
    return np.sqrt(np.maximum(rate + sky, 0.0) * exposure) / exposure


def min_max_scale(image: np.ndarray) -> np.ndarray:
    """Scale an image linearly to [0, 1] (float32), as the published study did."""
    lo = image.min()
    span = image.max() - lo
    if not span > 0:
        raise ValueError("a constant image cannot be min-max scaled")
    return ((image - lo) / span).astype(np.float32)

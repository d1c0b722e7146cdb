"""Photon noise, the signal-to-noise statistics of an image, and the per-image [0, 1] scaling.

Units: images are rates in counts per second per pixel; `exposure` is seconds; `sky` is the
background rate (counts/s/pixel). An observation is N ~ Poisson(exposure * (signal + sky))
counts per pixel, returned sky-subtracted as N / exposure - sky (counts/s), the study's
photometry (REFERENCE.md, "Photometry").

SNR definition (`snr_statistics`): the per-pixel S/N of the lensed source, S / sigma with
sigma = sqrt((S + L + sky) * exposure) / exposure (S the arcs' rate, L the lens light's),
over the lensed source's half-light region: the brightest arc pixels that together hold
half of the arcs' total flux. The dataset's "SNR" is the median over that region; the
peak is its maximum. Every pixel's S/N grows as sqrt(exposure), so an exposure that reaches
a target median S/N is found in closed form (`exposure_for_snr`).
"""

import numpy as np

SNR_DEFINITION = (
    "per-pixel S/N of the lensed source, S * t / sqrt((S + L + sky) * t), with S the "
    "noiseless arcs' rate (counts/s/pixel), L the lens light's, "
    "t the exposure (s), over the lensed source's half-light region (its brightest pixels "
    "holding half of its flux): snr_median is the median there, snr_peak the maximum"
)


def poisson_observation(
    rate: np.ndarray, exposure: float, sky: float, rng: np.random.Generator
) -> np.ndarray:
    """One noisy, sky-subtracted exposure (counts/s) of a noiseless `rate` image (counts/s)."""
    counts = rng.poisson(np.maximum(rate + sky, 0.0) * exposure)
    return counts / exposure - sky


def noise_sigma(rate: np.ndarray, exposure: float, sky: float) -> np.ndarray:
    """Per-pixel standard deviation (counts/s) of `poisson_observation`."""
    return np.sqrt(np.maximum(rate + sky, 0.0) * exposure) / exposure


def half_light_region(arcs: np.ndarray) -> np.ndarray:
    """Boolean mask (same shape) of the brightest pixels holding half of the arcs' flux."""
    flat = np.asarray(arcs, dtype=np.float64).ravel()
    order = np.argsort(-flat, kind="stable")
    cumulative = np.cumsum(flat[order])
    count = int(np.searchsorted(cumulative, 0.5 * cumulative[-1])) + 1
    mask = np.zeros(flat.size, dtype=bool)
    mask[order[:count]] = True
    return mask.reshape(np.shape(arcs))


def snr_statistics(
    arcs: np.ndarray, lens: np.ndarray, exposure: float, sky: float
) -> tuple[float, float]:
    """(median, peak) per-pixel S/N of the arcs over their half-light region (module doc)."""
    region = half_light_region(arcs)
    snr = arcs[region] / noise_sigma(arcs[region] + lens[region], exposure, sky)
    return float(np.median(snr)), float(snr.max())


def exposure_for_snr(median_snr: float, target: float, exposure: float) -> float:
    """The exposure (s) that turns a median S/N of `median_snr` at `exposure` into `target`."""
    if median_snr <= 0 or target <= 0 or exposure <= 0:
        raise ValueError(
            f"need positive S/N, target and exposure; got {median_snr}, {target}, {exposure}"
        )
    return exposure * (target / median_snr) ** 2


def min_max_scale(image: np.ndarray) -> np.ndarray:
    """Scale an image linearly to [0, 1] (float32), as the published study did."""
    lo = image.min()
    span = image.max() - lo
    if not span > 0:
        raise ValueError("a constant image cannot be min-max scaled")
    return ((image - lo) / span).astype(np.float32)

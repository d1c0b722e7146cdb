"""Per-pixel noise of an image, estimated from the image alone (never from simulation truth).

A photon-counting image that was sky-subtracted and min-max scaled to [0, 1] has pixel
noise whose variance is linear in the clean pixel value x: with counts Poisson in
(rate + sky) * t and x = (rate - lo) / span,

    sigma^2 = a * x + b,   a = 1 / (t span),   b = (lo + sky) / (t span^2),

so two numbers per image describe its whole noise map (a: the gain, b: sky and read level).

`estimate_noise` fits them per image. The noise is seen through a high-pass filter, the
tensor product of second differences [1, -2, 1] x [1, -2, 1]: white noise of variance v
passes it with variance 36 v, while PSF-smooth light (a 2-pixel PSF, arcs and lens light
wider still) barely does (it responds to the mixed fourth derivative only). Pixels are
sorted by their clean level (the image smoothed by the PSF) into `BINS` equal-count bins;
in each bin the median of the squared high-pass, divided by the median of a chi-square
with one degree of freedom, estimates the variance robustly (the few pixels where sharp
structure leaks through, such as the lens-light cusp, do not move a median); a straight
line through the bins, weighted by their relative precision, gives a and b.

Why the smoothed image and not a model's reconstruction as the clean level: the noise map
then depends on the image only, so every model sees the same map for the same upload, and
a model that reconstructs badly cannot shrink its own chi-square by inflating the noise.
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor

BINS = 16
HIGH_PASS_1D = (1.0, -2.0, 1.0)
CHI2_1_MEDIAN = 0.454936423119572  # median of a chi-square with one degree of freedom
MIN_VARIANCE = 1e-12  # floor of sigma^2 in [0, 1] units (an all-zero region has no noise)


def gaussian_kernel_1d(sigma_pixels: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Normalised Gaussian taps (2R+1,), R = ceil(3 sigma) pixels."""
    radius = max(1, int(math.ceil(3.0 * sigma_pixels)))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64, device=device)
    kernel = torch.exp(-0.5 * (offsets / sigma_pixels) ** 2)
    return (kernel / kernel.sum()).to(dtype)


def smoothing_taps(
    sigma_pixels: float, height: int, width: int, dtype: torch.dtype, device: torch.device
) -> tuple[Tensor, Tensor]:
    """The (x, y) Gaussian taps `smooth` applies to an image of height x width: cut to the
    widest kernel that reflected padding allows (at most the side minus one)."""
    kernel = gaussian_kernel_1d(sigma_pixels, dtype, device)
    r = (kernel.numel() - 1) // 2
    pad_w, pad_h = min(r, width - 1), min(r, height - 1)
    return kernel[r - pad_w : r + pad_w + 1], kernel[r - pad_h : r + pad_h + 1]


def smooth(x: Tensor, sigma_pixels: float) -> Tensor:
    """Separable Gaussian smoothing of (N, 1, H, W) with reflected edges, same shape."""
    kx, ky = smoothing_taps(sigma_pixels, x.shape[-2], x.shape[-1], x.dtype, x.device)
    pad_w, pad_h = (kx.numel() - 1) // 2, (ky.numel() - 1) // 2
    y = F.conv2d(F.pad(x, (pad_w, pad_w, 0, 0), mode="reflect"), kx.view(1, 1, 1, -1))  # x
    return F.conv2d(F.pad(y, (0, 0, pad_h, pad_h), mode="reflect"), ky.view(1, 1, -1, 1))  # y


def high_pass(x: Tensor) -> Tensor:
    """[1, -2, 1] x [1, -2, 1] of (N, 1, H, W), valid part only: (N, 1, H-2, W-2)."""
    taps = torch.tensor(HIGH_PASS_1D, dtype=x.dtype, device=x.device)
    kernel = (taps[:, None] * taps[None, :]).view(1, 1, 3, 3)
    return F.conv2d(x, kernel)


def fit_noise_model(x: Tensor, sigma_pixels: float) -> tuple[Tensor, Tensor]:
    """Per-image (a, b), each (N,) float64, of sigma^2 = a * level + b (module doc)."""
    x = x.double()
    n = x.shape[0]
    gain = float(sum(t * t for t in HIGH_PASS_1D) ** 2)  # 36: variance gain on white noise
    variance = (high_pass(x) ** 2 / gain).flatten(1)  # (N, P) unbiased for white noise
    level = smooth(x, sigma_pixels)[..., 1:-1, 1:-1].flatten(1)  # (N, P) clean level
    per_bin = level.shape[1] // BINS
    order = torch.argsort(level, dim=1)[:, : per_bin * BINS]
    level_bins = torch.gather(level, 1, order).view(n, BINS, per_bin).mean(dim=2)  # (N, B)
    var_bins = torch.gather(variance, 1, order).view(n, BINS, per_bin)
    var_bins = var_bins.median(dim=2).values / CHI2_1_MEDIAN  # (N, B)
    # Weighted least squares of var = a * level + b; weight 1 / var^2 (relative errors).
    w = 1.0 / var_bins.clamp_min(MIN_VARIANCE) ** 2
    sw, swx, swy = w.sum(1), (w * level_bins).sum(1), (w * var_bins).sum(1)
    swxx, swxy = (w * level_bins**2).sum(1), (w * level_bins * var_bins).sum(1)
    det = sw * swxx - swx**2
    ok = det > 1e-30 * sw * swxx
    a = torch.where(ok, (sw * swxy - swx * swy) / torch.where(ok, det, 1.0), 0.0)
    b = torch.where(ok, (swxx * swy - swx * swxy) / torch.where(ok, det, 1.0), swy / sw)
    # A negative gain is not physical (e.g. a flat image): fall back to constant noise.
    flat = a < 0
    a = torch.where(flat, 0.0, a)
    b = torch.where(flat, swy / sw, b)
    return a, b.clamp_min(MIN_VARIANCE)


def estimate_noise(x: Tensor, sigma_pixels: float) -> Tensor:
    """Per-pixel noise sigma (N, 1, H, W) in the image's own [0, 1] units, from the image."""
    a, b = fit_noise_model(x, sigma_pixels)
    level = smooth(x.double(), sigma_pixels).clamp_min(0.0)
    variance = a.view(-1, 1, 1, 1) * level + b.view(-1, 1, 1, 1)
    return variance.clamp_min(MIN_VARIANCE).sqrt().to(x.dtype)

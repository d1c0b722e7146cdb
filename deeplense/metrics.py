"""Per-image metrics shared by evaluation and serving (so both report the same numbers)."""

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def column_w1(x: Tensor, x_hat: Tensor) -> Tensor:
    """First Wasserstein distance between the column sums of input and reconstruction.

    For each image the W column sums of x and of x_hat (summing over rows, i.e. the y axis)
    are treated as two samples of W values each, exactly as
    `scipy.stats.wasserstein_distance(x.sum(axis=0), x_hat.sum(axis=0))` on a 2-D image
    (REFERENCE.md). For equal-size samples W1 is the mean absolute difference of the sorted
    values. (N, 1, H, W) x 2 -> (N,), in summed-pixel units.
    """
    cols = x.double().sum(dim=-2).flatten(1).sort(dim=1).values  # (N, W), float64 sums
    cols_hat = x_hat.double().sum(dim=-2).flatten(1).sort(dim=1).values  # (N, W)
    return (cols - cols_hat).abs().mean(dim=1)


def smoothed_residual_error(x: Tensor, x_hat: Tensor, sigma_pixels: float) -> Tensor:
    """Mean squared residual after smoothing it with a Gaussian of `sigma_pixels` (a matched
    filter for PSF-sized features): (N, 1, H, W) x 2 -> (N,) float32.

    Pixel noise is white, a substructure's imprint is at least PSF-wide, so smoothing the
    residual by the PSF keeps most of the signal and removes most of the noise. Edges are
    reflected.
    """
    radius = max(1, int(math.ceil(3 * sigma_pixels)))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64, device=x.device)
    kernel = torch.exp(-0.5 * (offsets / sigma_pixels) ** 2)
    kernel = (kernel / kernel.sum()).float()
    r = x.float() - x_hat.float()  # (N, 1, H, W)
    r = F.pad(r, (radius, radius, radius, radius), mode="reflect")
    r = F.conv2d(r, kernel.view(1, 1, 1, -1))  # along x
    r = F.conv2d(r, kernel.view(1, 1, -1, 1))  # along y -> (N, 1, H, W)
    return r.pow(2).flatten(1).double().mean(dim=1).float()

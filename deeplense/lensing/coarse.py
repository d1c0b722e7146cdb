"""A coarse-to-fine start for the flexible fit: the first Levenberg-Marquardt steps on the
image binned 2 x 2, the last ones on its own pixels.

Most of a fit's steps walk from the encoder's guess into the basin; one step on a quarter of
the pixels costs about a quarter of one on all of them, and the basin is as wide there.
The fine steps that follow see every pixel, so the fitted lens (and the score) is still the
full-resolution model's.

The binned image is the mean of each 2 x 2 block (a trailing row and column of an odd side
are left out); its noise sigma is the mean's, sqrt(sum sigma^2) / 4, infinite (masked) where
any of the four is. Its model draws the flexible lens on the coarse grid at one ray per
coarse pixel, through a Gaussian PSF widened by the block's own blur: the fine model samples
each fine pixel's centre, and the block averages two of them per axis, half a fine pixel
either side of the block's centre (variance 1/4 fine pixel^2).

Grids are centred (`deeplense.lensing.flexible.sub_pixel_grid`): an even side's blocks fall
on the coarse grid's centres, but an odd side's, with its last row and column left out, lie
half a fine pixel below them. Every position parameter (the lens centre, the source centre)
is then shifted by that half pixel on the coarse grid and back after it: translating the
scene moves the source plane by the same amount (beta = x - alpha(x - c)).
"""

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from deeplense.lensing.flexible import INDEX

BLOCK = 2  # fine pixels per coarse pixel, per axis
POSITIONS = ("center_x", "center_y", "source_x", "source_y")  # arcsec on the grid


@dataclass(frozen=True)
class CoarseImage:
    """An image binned BLOCK x BLOCK: x and sigma (N, 1, n // 2, n // 2), the coarse pixel
    scale (arcsec), and the shift (arcsec) from fine positions to the coarse grid's."""

    x: Tensor
    sigma: Tensor
    pixel_scale: float
    shift: float

    def to_coarse(self, theta: Tensor) -> Tensor:
        """Parameters (N, 13) or a prior mean (13,) on the fine grid -> on the coarse grid."""
        return shift_positions(theta, self.shift)

    def to_fine(self, theta: Tensor) -> Tensor:
        """Parameters (N, 13) on the coarse grid -> on the fine grid."""
        return shift_positions(theta, -self.shift)


def coarse_image(x: Tensor, sigma: Tensor, pixel_scale: float, block: int = BLOCK) -> CoarseImage:
    """x and sigma (N, 1, n, n) on pixels of `pixel_scale` arcsec, binned (module doc)."""
    n = x.shape[-1]
    if n < 2 * block:
        raise ValueError(f"an image of {n} px is too small to bin {block} x {block}")
    variance = torch.nn.functional.avg_pool2d(sigma.pow(2), block)  # mean of sigma^2
    return CoarseImage(
        x=torch.nn.functional.avg_pool2d(x, block),
        sigma=variance.sqrt() / block,  # sqrt(sum sigma^2) / block^2; inf stays inf
        pixel_scale=block * pixel_scale,
        shift=0.5 * pixel_scale * (n % block),
    )


def coarse_psf_sigma(psf_sigma_pixels: float, block: int = BLOCK) -> float:
    """A Gaussian PSF of `psf_sigma_pixels` fine pixels, with the block's blur, in coarse
    pixels."""
    return math.sqrt(psf_sigma_pixels**2 + (block**2 - 1) / 12.0) / block


def shift_positions(theta: Tensor, shift: float) -> Tensor:
    """theta (..., 13) with every position parameter (POSITIONS) moved by `shift` arcsec."""
    if shift == 0.0:
        return theta
    moved = theta.clone()
    moved[..., [INDEX[name] for name in POSITIONS]] += shift
    return moved


__all__ = ["BLOCK", "CoarseImage", "coarse_image", "coarse_psf_sigma", "shift_positions"]

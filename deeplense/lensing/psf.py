"""PSF kernels beyond the renderer's Gaussian: a Moffat profile, and any kernel's convolution.

A Moffat PSF has surface brightness I(r) = (1 + (r / alpha)^2)^(-beta), of FWHM
2 alpha sqrt(2^(1/beta) - 1) and total flux pi alpha^2 / (beta - 1) I(0) (beta > 1); its
fraction of light within radius R is 1 - (1 + R^2 / alpha^2)^(1 - beta). Real PSFs
(seeing-limited, or a diffraction core with wings) are closer to Moffats of beta 2.5 to 5
than to Gaussians. lenstronomy's MOFFAT light profile is the same function.

Kernels follow `deeplense.instrument`'s convention: on the image's pixel grid, odd side,
centred on the middle pixel, unit sum. Lengths here are in pixels.
"""

import math

import torch
from torch import Tensor


def moffat_alpha(fwhm: float, beta: float) -> float:
    """The Moffat scale alpha (same unit as `fwhm`) of a profile of that FWHM and beta."""
    if not fwhm > 0 or not beta > 1:
        raise ValueError(f"need fwhm > 0 and beta > 1, got {fwhm}, {beta}")
    return fwhm / (2.0 * math.sqrt(2.0 ** (1.0 / beta) - 1.0))


def moffat_kernel(
    fwhm: float,
    beta: float,
    radius: int | None = None,
    supersampling: int = 5,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """A Moffat PSF (2 radius + 1, 2 radius + 1), unit sum; `fwhm` in pixels.

    Each pixel is the mean of the profile over `supersampling`^2 points inside it (the
    pixel-integrated PSF). `radius` defaults to 4 FWHM (beta 2.5 keeps 99.3% of its light
    there; the kernel is normalised to unit sum over what it holds).
    """
    alpha = moffat_alpha(fwhm, beta)
    radius = max(1, math.ceil(4.0 * fwhm)) if radius is None else radius
    s = supersampling
    sub = (torch.arange(s, dtype=torch.float64) - (s - 1) / 2.0) / s  # within a pixel
    centres = torch.arange(-radius, radius + 1, dtype=torch.float64)
    c = (centres[:, None] + sub[None, :]).reshape(-1)  # ((2r+1) s,)
    r2 = c[:, None] ** 2 + c[None, :] ** 2
    profile = (1.0 + r2 / alpha**2) ** (-beta)
    k = 2 * radius + 1
    kernel = profile.reshape(k, s, k, s).mean(dim=(1, 3))
    return (kernel / kernel.sum()).to(dtype)


# Padded values (real) transformed at once on a CPU: larger batches leave the cache (bench
# in `channels_per_transform`'s doc).
CPU_FFT_ELEMENTS = 2**17


def fast_fft_size(n: int) -> int:
    """The smallest m >= n whose prime factors are all 2, 3 or 5."""
    m = n
    while True:
        rest = m
        for p in (2, 3, 5):
            while rest % p == 0:
                rest //= p
        if rest == 1:
            return m
        m += 1


def convolve(image: Tensor, kernel: Tensor) -> Tensor:
    """(N, C, n, n) convolved with a (k, k) kernel, or with one (N, k, k) kernel per image
    (odd k), edge pixels extended (as scipy's mode="nearest"), by FFT: exact to rounding, and
    fast for kernels of many pixels."""
    k = kernel.shape[-1]
    if kernel.dim() not in (2, 3) or kernel.shape[-2] != k or k % 2 == 0:
        raise ValueError(
            f"kernel must be (k, k) or (N, k, k) with an odd side k, got {tuple(kernel.shape)}"
        )
    if kernel.dim() == 3 and kernel.shape[0] not in (1, image.shape[0]):
        raise ValueError(f"{kernel.shape[0]} kernels for {image.shape[0]} images")
    r = k // 2
    h, w = image.shape[-2:]
    padded = torch.nn.functional.pad(image, (r, r, r, r), mode="replicate")  # (N,C,h+2r,w+2r)
    # Circular convolution of the padded image: outputs from index 2r on never wrap around
    # once the transform holds the padded image (h + 2r), so no further zeros are needed;
    # the size is rounded up to a product of 2, 3 and 5, where FFTs are fastest.
    size = (fast_fft_size(h + 2 * r), fast_fft_size(w + 2 * r))
    kernel_spectrum = torch.fft.rfft2(kernel.to(image), s=size)
    if kernel.dim() == 3:
        kernel_spectrum = kernel_spectrum.unsqueeze(1)  # (N, 1, ., .): one per image
    step = channels_per_transform(image, size)
    out = image.new_empty(image.shape)  # each chunk written in place: no joining copy
    for i in range(0, image.shape[1], step):
        spectrum = torch.fft.rfft2(padded[:, i : i + step], s=size) * kernel_spectrum
        out[:, i : i + step] = torch.fft.irfft2(spectrum, s=size)[
            ..., 2 * r : 2 * r + h, 2 * r : 2 * r + w
        ]
    return out


def channels_per_transform(image: Tensor, size: tuple[int, int]) -> int:
    """Channels of `image` (N, C, ., .) transformed together at FFT size `size`: all of them
    on an accelerator; on a CPU as many as keep about CPU_FFT_ELEMENTS padded values in cache
    (one thread, 150 px, 147 channels of 180^2: 204 ms in one transform, 56 ms in fours)."""
    if image.device.type != "cpu":
        return max(1, image.shape[1])
    return max(1, CPU_FFT_ELEMENTS // (image.shape[0] * size[0] * size[1]))


__all__ = ["channels_per_transform", "convolve", "fast_fft_size", "moffat_alpha", "moffat_kernel"]

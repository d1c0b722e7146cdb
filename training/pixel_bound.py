"""The flexible bound with a pixelated source (issue 21): each test image's light and source
re-solved on a source pixel grid whose regularisation strength the image's own Bayesian
evidence chooses (`deeplense.lensing.pixel_evidence`), at nonlinear parameters (mass, light
ellipticity, source centre) given: the truth, or a shapelet refit's (`flexible_bound`).

Besides the residual's scores (`deeplense.scores`), two scores of the fit itself, higher =
more anomalous (`PIXEL_SCORES`): the penalised cost chi2 + lambda s^T R s, and minus the
log evidence.
"""

from dataclasses import dataclass

import numpy as np
import torch

from deeplense.lensing.pixel_evidence import fit_pixel_source
from deeplense.lensing.pixel_source import PixelSourceConfig
from deeplense.noise import estimate_noise
from training.flexible_bound import pad_to, psf_kernel, truth_theta

PIXEL_SCORES = ("pixel_cost", "neg_log_evidence")


@dataclass
class PixelFits:
    """Images and their refits (N, 1, n, n), the parameters used (N, 13), and per image
    (N,): log lambda, chi2, and the scores `PIXEL_SCORES`."""

    images: np.ndarray
    refit: np.ndarray
    theta: np.ndarray
    log_lambda: np.ndarray
    chi2: np.ndarray
    scores: dict[str, np.ndarray]


def pixel_refit(
    images: np.ndarray,
    rows: list[dict[str, str]],
    config: PixelSourceConfig,
    nominal_psf_sigma: float,
    theta: np.ndarray | None = None,
    chunk: int = 4,
) -> PixelFits:
    """The evidence-optimal pixelated-source fit of each image (N, 1, n, n) with its true PSF
    (`rows`: its parameters), at `theta` (N, 13), the true lenses where None."""
    pixel_scale = config.flexible.pixel_scale
    x_all = torch.from_numpy(np.asarray(images, dtype=np.float64))
    theta = np.stack([truth_theta(r) for r in rows]) if theta is None else theta
    parts = []
    for i in range(0, len(rows), chunk):
        x = x_all[i : i + chunk]
        sigma = estimate_noise(x, nominal_psf_sigma / pixel_scale)  # as `flexible_refit`
        kernels = [psf_kernel(r, pixel_scale, nominal_psf_sigma) for r in rows[i : i + chunk]]
        side = max(k.shape[-1] for k in kernels)
        psf = torch.stack([pad_to(k, side) for k in kernels])  # (B, k, k)
        parts.append(
            fit_pixel_source(torch.from_numpy(theta[i : i + chunk]), x, sigma, psf, config)
        )
    cat = {name: torch.cat([getattr(p, name) for p in parts]).numpy() for name in (
        "model", "log_lambda", "log_evidence", "chi2", "penalty")}  # fmt: skip
    return PixelFits(
        images=np.asarray(images, dtype=np.float32),
        refit=cat["model"].astype(np.float32),
        theta=np.asarray(theta),
        log_lambda=cat["log_lambda"],
        chi2=cat["chi2"],
        scores={
            "pixel_cost": cat["chi2"] + cat["penalty"],
            "neg_log_evidence": -cat["log_evidence"],
        },
    )


__all__ = ["PIXEL_SCORES", "PixelFits", "pixel_refit"]

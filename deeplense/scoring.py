"""Batched scoring used by the service, the `score` CLI and evaluation alike.

One function turns prepared images into reconstruction losses, W1 distances and
reconstructions, so a served score equals the evaluated score for the same input.
"""

from dataclasses import dataclass

import numpy as np
import torch

from deeplense.metrics import column_w1, smoothed_residual_error
from models.base import AnomalyModel, reconstruction_error


@dataclass
class ScoredBatch:
    """Scores of N images: loss and w1 are (N,) float64; reconstruction (N, 1, H, W) float32
    and smoothed_loss (N,) are None when not requested."""

    loss: np.ndarray
    w1: np.ndarray
    reconstruction: np.ndarray | None
    smoothed_loss: np.ndarray | None = None


@torch.inference_mode()
def score_array(
    model: AnomalyModel,
    images: np.ndarray,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    keep_reconstructions: bool = False,
    smoothing_sigma_pixels: float | None = None,
) -> ScoredBatch:
    """Score (N, 1, H, W) float32 images in [0, 1] with `model` (put in eval mode).

    With `smoothing_sigma_pixels`, also the PSF-matched-filter residual error
    (`deeplense.metrics.smoothed_residual_error`), an experimental, noise-suppressing score.
    """
    model.eval()
    losses, w1s, recons, smoothed = [], [], [], []
    for start in range(0, len(images), batch_size):
        # A copy: `images` may be a read-only memmap, which torch will not wrap.
        batch = np.array(images[start : start + batch_size], dtype=np.float32)  # (B, 1, H, W)
        x = torch.from_numpy(batch).to(device=device, non_blocking=True)
        x_hat = model.reconstruct(x)
        losses.append(reconstruction_error(x, x_hat).double().cpu().numpy())
        w1s.append(column_w1(x, x_hat).double().cpu().numpy())
        if keep_reconstructions:
            recons.append(x_hat.float().cpu().numpy())
        if smoothing_sigma_pixels is not None:
            err = smoothed_residual_error(x, x_hat, smoothing_sigma_pixels)
            smoothed.append(err.double().cpu().numpy())
    empty = np.zeros(0, dtype=np.float64)
    return ScoredBatch(
        loss=np.concatenate(losses) if losses else empty,
        w1=np.concatenate(w1s) if w1s else empty,
        reconstruction=np.concatenate(recons) if keep_reconstructions and recons else None,
        smoothed_loss=(
            (np.concatenate(smoothed) if smoothed else empty)
            if smoothing_sigma_pixels is not None
            else None
        ),
    )

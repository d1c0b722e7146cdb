"""Batched inference used by the service, the `score` CLI and evaluation alike.

One function turns prepared images into the named scores of `deeplense.scores` (the study's
MSE always among them, as `loss`), W1 distances, and optionally reconstructions and one
score's residual map, so a served score equals the evaluated score for the same input.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from deeplense.instrument import DEFAULT_PSF_SIGMA_PIXELS
from deeplense.metrics import column_w1
from deeplense.scores import compute_scores

MSE = "mse"


class Reconstructor(Protocol):
    """What scoring needs of a model: (N, 1, H, W) in [0, 1] -> reconstruction, same shape.

    Every `models.base.AnomalyModel` is one; the ground floor needs no more of it.
    """

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor: ...


@dataclass
class ScoredBatch:
    """Scores of N images: loss (the MSE) and w1 are (N,) float64, `scores` maps each
    requested score name to (N,) float64; reconstruction and residual_map are (N, 1, H, W)
    float32, or None when not requested."""

    loss: np.ndarray
    w1: np.ndarray
    reconstruction: np.ndarray | None = None
    scores: dict[str, np.ndarray] = field(default_factory=dict)
    residual_map: np.ndarray | None = None


@torch.inference_mode()
def score_array(
    model: Reconstructor,
    images: np.ndarray,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    keep_reconstructions: bool = False,
    scores: Sequence[str] = (MSE,),
    psf_sigma_pixels: float = DEFAULT_PSF_SIGMA_PIXELS,
    map_of: str | None = None,
) -> ScoredBatch:
    """Score (N, 1, H, W) float32 images in [0, 1] with `model` (a module is put in eval mode).

    `scores` names the scores to compute (the MSE is always computed, as `loss`);
    `psf_sigma_pixels` sets the noise-aware scores' matched filter (the checkpoint's
    `input.psf_sigma_pixels`); `map_of` keeps that score's residual map.
    """
    if isinstance(model, torch.nn.Module):
        model.eval()  # BatchNorm's running statistics, no sampling: deterministic scores
    names = list(dict.fromkeys([MSE, *scores]))
    values: dict[str, list[np.ndarray]] = {n: [] for n in names}
    w1s, recons, maps = [], [], []
    for start in range(0, len(images), batch_size):
        # A copy: `images` may be a read-only memmap, which torch will not wrap.
        batch = np.array(images[start : start + batch_size], dtype=np.float32)  # (B, 1, H, W)
        x = torch.from_numpy(batch).to(device=device, non_blocking=True)
        x_hat = model.reconstruct(x)
        scored = compute_scores(x, x_hat, names, psf_sigma_pixels, map_of=map_of)
        for n in names:
            values[n].append(scored.values[n].cpu().numpy())
        w1s.append(column_w1(x, x_hat).double().cpu().numpy())
        if keep_reconstructions:
            recons.append(x_hat.float().cpu().numpy())
        if scored.residual_map is not None:
            maps.append(scored.residual_map.float().cpu().numpy())
    empty = np.zeros(0, dtype=np.float64)
    joined = {n: np.concatenate(v) if v else empty for n, v in values.items()}
    return ScoredBatch(
        loss=joined[MSE],
        w1=np.concatenate(w1s) if w1s else empty,
        reconstruction=np.concatenate(recons) if keep_reconstructions and recons else None,
        scores=joined,
        residual_map=np.concatenate(maps) if maps else None,
    )

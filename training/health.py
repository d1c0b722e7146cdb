"""Does a model really reconstruct its input? Loud warnings for a collapsed model.

A model can reach a low training loss by drawing (nearly) one image for every input, the
mean image or a black one: its "reconstruction error" is then just the image's distance
from that fixed picture, and its anomaly flags mean nothing. Two numbers catch it:

- spread ratio: how much the reconstructions vary between images, relative to how much
  the inputs do (per-pixel standard deviation across images, averaged over pixels). A
  working autoencoder is near 1; a collapsed one near 0.
- loss ratio: the model's mean squared error over that of the mean training image used as
  the reconstruction of every input. A model that learned anything is well below 1.
"""

from dataclasses import dataclass, field

import numpy as np
import torch

from deeplense.inference import score_array
from models.base import AnomalyModel

MIN_SPREAD_RATIO = 0.2  # below: the reconstructions barely depend on the input
MAX_LOSS_RATIO = 0.9  # above: no better than drawing the mean image for every input
SAMPLE = 256  # images used for the check (a fixed, evenly spaced subset)


@dataclass
class Health:
    """The two numbers and the warnings they raise (empty when the model is healthy)."""

    spread_ratio: float
    loss_ratio: float
    warnings: list[str] = field(default_factory=list)

    @property
    def numbers(self) -> dict[str, float]:
        return {"spread_ratio": self.spread_ratio, "loss_ratio": self.loss_ratio}


def _subset(images: np.ndarray) -> np.ndarray:
    step = max(1, len(images) // SAMPLE)
    return np.array(images[::step][:SAMPLE], dtype=np.float32)  # (M, 1, S, S)


def health_of(x: np.ndarray, x_hat: np.ndarray, mean_image: np.ndarray) -> Health:
    """Health from inputs and reconstructions (M, 1, S, S) and a mean image (1, S, S)."""
    x64, xh64 = x.astype(np.float64), x_hat.astype(np.float64)
    spread_in = float(x64.std(axis=0).mean())
    spread_out = float(xh64.std(axis=0).mean())
    spread = spread_out / spread_in if spread_in > 0 else 1.0
    loss = float(np.mean((x64 - xh64) ** 2))
    baseline = float(np.mean((x64 - mean_image.astype(np.float64)[None]) ** 2))
    ratio = loss / baseline if baseline > 0 else 0.0
    warnings = []
    if spread < MIN_SPREAD_RATIO:
        warnings.append(
            f"COLLAPSED: the reconstructions barely depend on the input (spread ratio "
            f"{spread:.3f} < {MIN_SPREAD_RATIO}): the model draws nearly one image for every "
            "input, so its anomaly scores measure each image's distance to that picture, not "
            "substructure, and its flags mean nothing. Expected after a smoke-test run (an "
            "epoch or two on a few hundred images); for real use train longer on more images "
            "(README, Training and reproduction), and if it stays, check the learning rates."
        )
    if ratio > MAX_LOSS_RATIO:
        warnings.append(
            f"NO BETTER THAN THE MEAN IMAGE: reconstruction MSE is {ratio:.2f} x that of the "
            f"mean training image (limit {MAX_LOSS_RATIO}); the model has learned little. "
            "Expected after a smoke-test run; for real use train longer on more images."
        )
    return Health(spread_ratio=spread, loss_ratio=ratio, warnings=warnings)


def reconstruction_health(
    model: AnomalyModel,
    images: np.ndarray,
    reference: np.ndarray,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
) -> Health:
    """Health of `model` on (a subset of) `images`, against the mean of `reference` images
    (the training set), each (N, 1, S, S) in [0, 1]."""
    x = _subset(images)
    scored = score_array(model, x, device=device, batch_size=batch_size, keep_reconstructions=True)
    assert scored.reconstruction is not None
    mean_image = _subset(reference).mean(axis=0)  # (1, S, S)
    return health_of(x, scored.reconstruction, mean_image)

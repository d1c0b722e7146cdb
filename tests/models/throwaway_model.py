"""A throwaway model, added exactly as the README's "Add a model" says: this one file.

`tests/models/test_add_a_model.py` imports it (as `models/__init__.py` imports a real model)
and runs it through fit, calibrate, evaluate, the `score` CLI and the service. Nothing
outside this file names it.
"""

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from models.base import TINY_IMAGE_SIZE, AnomalyModel, ModelConfig
from models.registry import register_model


@dataclass
class ThrowawayConfig(ModelConfig):
    """A blur-and-rescale autoencoder: `width` channels of one 5x5 conv each way."""

    width: int = 8

    tiny = classmethod(lambda cls: cls(image_size=TINY_IMAGE_SIZE, width=2))  # the tiny line


@register_model("throwaway")
class Throwaway(AnomalyModel):
    """(N, 1, H, W) -> conv -> ReLU -> conv -> sigmoid: a reconstruction of the same shape."""

    Config = ThrowawayConfig

    def __init__(self, config: ThrowawayConfig) -> None:
        super().__init__(config)
        self.net = nn.Sequential(
            nn.Conv2d(1, config.width, 5, padding=2),
            nn.ReLU(),
            nn.Conv2d(config.width, 1, 5, padding=2),
        )

    def reconstruct(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.net(x))  # (N, 1, H, W) in [0, 1]

    def loss(self, x: Tensor) -> dict[str, Tensor]:
        mse = (self.reconstruct(x) - x).pow(2).mean()
        return {"loss": mse, "mse": mse}

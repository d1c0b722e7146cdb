"""Deep convolutional autoencoder (DCAE): conv encoder, BatchNorm'd linear bottleneck,
conv decoder, trained on MSE."""

from dataclasses import dataclass

from torch import Tensor, nn

from models.base import AnomalyModel
from models.layers import ConvDecoder, ConvEncoder, ConvNetConfig
from models.registry import register_model


@dataclass
class DCAEConfig(ConvNetConfig):
    """The shared conv geometry; nothing else to set."""


@register_model("dcae")
class DeepConvAutoencoder(AnomalyModel):
    """Encoder (no ReLU after its last conv) -> Linear(flat->latent) -> BatchNorm1d ->
    Linear(latent->flat) -> decoder, as published."""

    Config = DCAEConfig

    def __init__(self, config: DCAEConfig) -> None:
        super().__init__(config)
        self.encoder = ConvEncoder(config, relu_after_last=False)
        self.bottleneck = nn.Sequential(
            nn.Linear(config.flat_dim, config.latent_dim),
            nn.BatchNorm1d(config.latent_dim),
            nn.Linear(config.latent_dim, config.flat_dim),
        )
        self.decoder = ConvDecoder(config)

    def reconstruct(self, x: Tensor) -> Tensor:
        return self.decoder(self.bottleneck(self.encoder(x)))  # (N, 1, H, W)

    def loss(self, x: Tensor) -> dict[str, Tensor]:
        mse = (self.reconstruct(x) - x).pow(2).mean()
        return {"loss": mse, "mse": mse}

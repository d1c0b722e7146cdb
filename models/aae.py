"""Adversarial autoencoder (AAE): a conv autoencoder whose latent code is pushed towards a
Gaussian prior N(0, prior_std^2 I) by a discriminator on z.

This module holds the networks only. The three-step update of each batch (reconstruction,
discriminator, generator) lives in `training/aae_step.py`; it reads the learning rates from
this config, so they are real settings that travel in the checkpoint (the original code
ignored its learning-rate argument).
"""

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from models.base import AnomalyModel
from models.layers import ConvDecoder, ConvEncoder, ConvNetConfig
from models.registry import register_model


@dataclass
class AAEConfig(ConvNetConfig):
    """Shared conv geometry, prior width, discriminator width and the three learning rates."""

    prior_std: float = 5.0  # std of the Gaussian prior on z, latent units
    discriminator_hidden: int = 256
    lr_autoencoder: float = 1e-3  # reconstruction step: encoder + decoder
    lr_discriminator: float = 1e-3  # discriminator step
    lr_generator: float = 1e-4  # regularisation step: encoder only, fooling the discriminator

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.prior_std <= 0:
            raise ValueError(f"prior_std must be positive, got {self.prior_std}")
        if self.discriminator_hidden < 1:
            raise ValueError(f"discriminator_hidden must be >= 1, got {self.discriminator_hidden}")
        for name in ("lr_autoencoder", "lr_discriminator", "lr_generator"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")


@register_model("aae", training_step="training.aae_step:AdversarialStep")
class AdversarialAutoencoder(AnomalyModel):
    """Encoder -> Linear(flat->latent) = z -> Linear(latent->flat) -> decoder; a discriminator
    Linear(latent->256)-ReLU-Linear(256->256)-ReLU-Linear(256->1) tells prior samples from z.

    The discriminator returns logits (no sigmoid): the trainer uses BCE-with-logits, which is
    numerically safe under mixed precision where sigmoid + BCE is not.
    """

    training_only = ("discriminator.",)  # the adversary: training only, not shipped

    Config = AAEConfig

    def __init__(self, config: AAEConfig) -> None:
        super().__init__(config)
        self.encoder = ConvEncoder(config)
        self.to_latent = nn.Linear(config.flat_dim, config.latent_dim)
        self.from_latent = nn.Linear(config.latent_dim, config.flat_dim)
        self.decoder = ConvDecoder(config)
        hidden = config.discriminator_hidden
        self.discriminator = nn.Sequential(
            nn.Linear(config.latent_dim, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, 1),
        )

    def encode(self, x: Tensor) -> Tensor:
        """(N, 1, H, W) -> latent code z (N, latent_dim)."""
        return self.to_latent(self.encoder(x))

    def decode(self, z: Tensor) -> Tensor:
        """(N, latent_dim) -> image (N, 1, H, W) in [0, 1]."""
        return self.decoder(self.from_latent(z))

    def discriminate(self, z: Tensor) -> Tensor:
        """Latent codes (N, latent_dim) -> logits (N,) that z came from the prior."""
        return self.discriminator(z).squeeze(1)

    def sample_prior(self, n: int, device: torch.device | str) -> Tensor:
        """n draws from the prior N(0, prior_std^2 I): (n, latent_dim)."""
        return torch.randn(n, self.config.latent_dim, device=device) * self.config.prior_std

    def autoencoder_parameters(self) -> list[nn.Parameter]:
        """Parameters of the reconstruction path (encoder and decoder, no discriminator)."""
        modules = (self.encoder, self.to_latent, self.from_latent, self.decoder)
        return [p for m in modules for p in m.parameters()]

    def generator_parameters(self) -> list[nn.Parameter]:
        """Parameters that produce z (the 'generator' of the adversarial game)."""
        return [*self.encoder.parameters(), *self.to_latent.parameters()]

    def reconstruct(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x))  # (N, 1, H, W)

    def loss(self, x: Tensor) -> dict[str, Tensor]:
        """Reconstruction MSE only (validation); the adversarial parts live in training."""
        mse = (self.reconstruct(x) - x).pow(2).mean()
        return {"loss": mse, "mse": mse}

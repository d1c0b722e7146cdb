"""Convolutional variational autoencoder (VAE): the shared encoder with two heads (mu and
log-variance of q(z|x)), the reparameterisation trick while training, the shared decoder.

Loss = MSE + beta * KL, both per pixel: MSE is the mean over pixels, KL(q(z|x) || N(0, I)) is
summed over the latent units and divided by the number of pixels. For a Gaussian likelihood
N(x_hat, s^2) per pixel, the negative ELBO per pixel is MSE / (2 s^2) + KL / n_pixels (+ const),
so `MSE + beta * KL / n_pixels` with beta = 2 s^2 is exactly that ELBO times 2 s^2.

beta = 2e-4, i.e. s = 0.01: the measured pixel noise of the simulated Model A no_sub images
(first 500 training images, residual from a 3x3 mean: 0.008 on the background, 0.011 overall,
0.02-0.04 on the brightest arcs), so the loss is the proper ELBO for that noise level.
beta = 1 would mean s = 0.7, a likelihood wider than the whole pixel range: a code carrying a
few hundred nats per image costs ~1e-2 per pixel, more than the mean image's MSE (3.5e-3 on
the same images), so the KL would win and blur every reconstruction towards the mean image.
The original's beta = 0 was no VAE at all. Chosen from the noise, not tuned on AUC; set it
with `--arch-arg beta=...`.

In eval mode z = mu, so reconstructions and scores are deterministic.
"""

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from models.base import AnomalyModel
from models.layers import ConvDecoder, ConvEncoder, ConvNetConfig
from models.registry import register_model

# exp(logvar) must stay finite (and not underflow to a zero std) whatever the encoder emits.
_LOGVAR_RANGE = (-30.0, 20.0)


@dataclass
class VAEConfig(ConvNetConfig):
    """Shared conv geometry and the KL weight beta (2 s^2 for a pixel likelihood std s)."""

    beta: float = 2e-4

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.beta < 0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")


@register_model("vae")
class VariationalAutoencoder(AnomalyModel):
    """Encoder -> (mu, logvar) heads Linear(flat->latent) -> z -> Linear(latent->flat) ->
    decoder."""

    # Scoring decodes the mean of z (eval mode): the log-variance head is training only.
    training_only = ("to_logvar.",)

    Config = VAEConfig

    def __init__(self, config: VAEConfig) -> None:
        super().__init__(config)
        self.encoder = ConvEncoder(config)
        self.to_mu = nn.Linear(config.flat_dim, config.latent_dim)
        self.to_logvar = nn.Linear(config.flat_dim, config.latent_dim)
        self.from_latent = nn.Linear(config.latent_dim, config.flat_dim)
        self.decoder = ConvDecoder(config)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(N, 1, H, W) -> mu (N, latent_dim), logvar (N, latent_dim) in float32."""
        h = self.encoder(x)  # (N, flat_dim)
        mu = self.to_mu(h).float()
        logvar = self.to_logvar(h).float().clamp(*_LOGVAR_RANGE)
        return mu, logvar

    def latent(self, mu: Tensor, logvar: Tensor) -> Tensor:
        """A sample mu + sigma * eps while training; the mean mu in eval mode."""
        if not self.training:
            return mu
        return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)

    def decode(self, z: Tensor) -> Tensor:
        """(N, latent_dim) -> image (N, 1, H, W) in [0, 1]."""
        return self.decoder(self.from_latent(z))

    def reconstruct(self, x: Tensor) -> Tensor:
        mu, logvar = self.encode(x)
        return self.decode(self.latent(mu, logvar))  # (N, 1, H, W)

    def loss(self, x: Tensor) -> dict[str, Tensor]:
        mu, logvar = self.encode(x)
        x_hat = self.decode(self.latent(mu, logvar))
        mse = (x_hat.float() - x.float()).pow(2).mean()
        n_pixels = x[0].numel()
        # KL(N(mu, sigma^2) || N(0, 1)) summed over latent units, per pixel, batch mean.
        kl = (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(dim=1)).mean() / n_pixels
        return {"loss": mse + self.config.beta * kl, "mse": mse, "kl": kl}

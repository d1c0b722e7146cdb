"""The start-up steps of `ModelService`: check the checkpoint folders before the server
answers, then load and warm up each model (in the start-up thread, `app.startup.Startup`)."""

import logging
from collections.abc import Mapping
from pathlib import Path

import torch

from app.ensemble import ENSEMBLE
from app.served import ModelState, ServedModel, load_served, warm_up
from deeplense.errors import UnknownModelError
from models.checkpoint import read_config
from models.selection import choose_default_model

logger = logging.getLogger(__name__)


def check_configs(found: Mapping[str, Path], default_model: str | None) -> None:
    """Validate each config.json (CheckpointError naming the file) and the default model's
    name (UnknownModelError), in milliseconds, before any weights are read."""
    for path in found.values():
        read_config(path)
    if default_model is not None and default_model != ENSEMBLE and default_model not in found:
        raise UnknownModelError(default_model, sorted(found))


def load_all(
    found: Mapping[str, Path], device: torch.device, states: dict[str, ModelState]
) -> dict[str, ServedModel]:
    """Load and warm up every checkpoint in turn, recording each one's state in `states`."""
    loaded = {}
    for name, path in found.items():
        states[name] = ModelState.LOADING
        served = load_served(name, path, device)
        states[name] = ModelState.WARMING
        warm_up(served, device)
        loaded[name] = served
        states[name] = ModelState.READY
        logger.info(
            "loaded %s (%s, %d parameters, %dx%d) on %s in %.2f s",
            name, served.checkpoint.config.architecture, served.parameters,
            served.size, served.size, device, served.load_seconds,
        )  # fmt: skip
    return loaded


def pick_default(
    models: Mapping[str, ServedModel], choices: list[str], wanted: str | None
) -> tuple[str, str]:
    """The default model and why: `wanted` (one of `choices`), else the best validated."""
    if wanted is None:
        choice = choose_default_model({name: m.checkpoint.config for name, m in models.items()})
        return choice.model, choice.reason
    if wanted not in choices:
        raise UnknownModelError(wanted, choices)
    return wanted, "set by DEEPLENSE_DEFAULT_MODEL (--default-model)"


def describe_loading(states: Mapping[str, ModelState]) -> str:
    """What start-up is busy with, in words: 'lensfit (warming), vae (pending); 3 of 5 ready'."""
    waiting = [f"{n} ({s.value})" for n, s in states.items() if s is not ModelState.READY]
    ready = len(states) - len(waiting)
    doing = ", ".join(waiting) if waiting else "choosing the default model"
    return f"{doing}; {ready} of {len(states)} models ready"

"""The model registry: `register_model`, `create_model`, `list_models` and nothing else."""

from collections.abc import Callable
from typing import Any, TypeVar

from deeplense.errors import UnknownModelError
from models.base import AnomalyModel

_REGISTRY: dict[str, type[AnomalyModel]] = {}

M = TypeVar("M", bound=type[AnomalyModel])


def register_model(name: str, training_step: str | None = None) -> Callable[[M], M]:
    """Class decorator: make a model constructible by `name` (also sets `cls.architecture`).

    `training_step` names the model's own training step as "module:Class" (imported only by
    the training code, so the service never loads it); None trains with the standard step.
    """

    def decorate(cls: M) -> M:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        cls.architecture = name
        cls.training_step = training_step
        _REGISTRY[name] = cls
        return cls

    return decorate


def model_class(name: str) -> type[AnomalyModel]:
    """The registered class for `name`; raises UnknownModelError listing the valid names."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownModelError(name, list_models()) from None


def create_model(name: str, **arguments: Any) -> AnomalyModel:
    """Build a registered model from its config arguments (those stored in config.json)."""
    cls = model_class(name)
    return cls(cls.Config(**arguments))


def list_models() -> list[str]:
    """Registered model names, sorted."""
    return sorted(_REGISTRY)

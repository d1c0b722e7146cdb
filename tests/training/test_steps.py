"""Each model trains with the step its registry entry declares; the loop knows no names."""

from typing import Any

import pytest
import torch
from torch import Tensor

from models.aae import AdversarialAutoencoder
from models.base import AnomalyModel
from tests.conftest import TINY_GEOMETRY, tiny_model
from training.aae_step import AdversarialStep
from training.steps import Precision, StandardStep, StepSettings, make_step, step_class


class CountingStep:
    """A step of our own: counts its calls and leaves the model alone."""

    def __init__(self, model: AnomalyModel, settings: StepSettings) -> None:
        self.model = model
        self.calls = 0

    def __call__(self, x: Tensor) -> dict[str, Tensor]:
        self.calls += 1
        return {"loss": torch.zeros(())}

    def state_dict(self) -> dict[str, Any]:
        return {"calls": self.calls}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.calls = state["calls"]


def test_registered_steps_are_what_the_models_declare() -> None:
    assert AdversarialAutoencoder.training_step == "training.aae_step:AdversarialStep"
    precision = Precision("cpu")
    aae, dcae = tiny_model("aae"), tiny_model("dcae")
    assert isinstance(make_step(aae, 1e-3, 0.0, 10, precision), AdversarialStep)
    assert isinstance(make_step(dcae, 1e-3, 0.0, 10, precision), StandardStep)


def test_a_new_model_brings_its_own_step_without_touching_the_loop() -> None:
    base = type(tiny_model("dcae"))

    class WithOwnStep(base):  # type: ignore[misc, valid-type]
        training_step = "tests.training.test_steps:CountingStep"

    model = WithOwnStep(base.Config(**TINY_GEOMETRY))
    step = make_step(model, 1e-3, 0.0, 10, Precision("cpu"))
    assert isinstance(step, CountingStep)
    step(torch.zeros((2, 1, 32, 32)))
    assert step.state_dict() == {"calls": 1}


def test_a_step_that_cannot_be_imported_is_named() -> None:
    base = type(tiny_model("dcae"))

    class Broken(base):  # type: ignore[misc, valid-type]
        training_step = "training.nowhere:Step"

    with pytest.raises(TypeError, match="training.nowhere:Step"):
        step_class(Broken(base.Config(**TINY_GEOMETRY)))

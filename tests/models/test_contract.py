"""The contract every registered model honours, run over `models.list_models()`."""

import numpy as np
import pytest
import torch

import models
from deeplense.errors import UnknownModelError
from models.base import is_training_only
from models.checkpoint import config_for, load_checkpoint, save_checkpoint
from tests.conftest import TINY_SIZE, tiny_images, tiny_model


def _batch(n: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(tiny_images(n, seed=seed))  # (n, 1, 32, 32)


def test_the_five_models_are_registered() -> None:
    assert models.list_models() == ["aae", "dcae", "lensfit", "rbm", "vae"]


def test_reconstruct_keeps_shape_and_unit_range(model_name: str) -> None:
    model = tiny_model(model_name)
    x = _batch()
    with torch.no_grad():
        x_hat = model.reconstruct(x)
    assert x_hat.shape == x.shape
    assert x_hat.dtype == torch.float32
    assert float(x_hat.min()) >= 0.0
    assert float(x_hat.max()) <= 1.0


def test_score_is_finite_per_image(model_name: str) -> None:
    model = tiny_model(model_name)
    with torch.no_grad():
        scores = model.score(_batch(5))
    assert scores.shape == (5,)
    assert torch.isfinite(scores).all()
    assert (scores >= 0).all()


def test_eval_mode_is_deterministic(model_name: str) -> None:
    model = tiny_model(model_name)
    x = _batch()
    with torch.no_grad():
        first, second = model.score(x), model.score(x)
        recon_a, recon_b = model.reconstruct(x), model.reconstruct(x)
        loss_a, loss_b = model.loss(x)["loss"], model.loss(x)["loss"]
    assert torch.equal(first, second)
    assert torch.equal(recon_a, recon_b)
    assert torch.equal(loss_a, loss_b)


def test_score_does_not_depend_on_the_rest_of_the_batch(model_name: str) -> None:
    model = tiny_model(model_name)
    x = _batch(6)
    with torch.no_grad():
        together = model.score(x)
        alone = torch.cat([model.score(x[i : i + 1]) for i in range(len(x))])
    # An iterative per-image fit (LensFit's Levenberg-Marquardt) runs batched float32 linear
    # algebra whose rounding depends on the batch size, and its accept/reject steps can
    # amplify that to ~1e-4 relative; leaking batch statistics would change scores by far more.
    iterative = getattr(getattr(model, "config", None), "refine_steps", 0) > 0
    torch.testing.assert_close(together, alone, rtol=1e-3 if iterative else 1e-5, atol=1e-7)


def test_safetensors_round_trip_gives_identical_scores(model_name: str, tmp_path) -> None:
    model = tiny_model(model_name)
    if model_name == "rbm":
        # Give the buffers (the running pixel mean) non-default values so they are tested too.
        model.train()
        model.loss(_batch(8, seed=3))
        model.eval()
    x = _batch()
    with torch.no_grad():
        before = model.score(x)
    save_checkpoint(model, config_for(model), tmp_path / model_name)
    loaded = load_checkpoint(tmp_path / model_name)
    assert not loaded.model.training
    assert loaded.config.architecture == model_name
    assert loaded.config.input.height == TINY_SIZE
    with torch.no_grad():
        after = loaded.model.score(x)
    assert torch.equal(before, after)
    for key, value in model.state_dict().items():
        if not is_training_only(model, key):  # training-only tensors are not stored
            assert torch.equal(value, loaded.model.state_dict()[key]), key


def test_loss_backward_gives_finite_nonzero_gradients(model_name: str) -> None:
    model = tiny_model(model_name).train()
    parts = model.loss(_batch(8))
    assert "loss" in parts
    assert parts["loss"].dim() == 0
    assert all(torch.isfinite(v).all() for v in parts.values())
    parts["loss"].backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads, "no parameter received a gradient"
    assert all(torch.isfinite(g).all() for g in grads)
    assert any(float(g.abs().max()) > 0 for g in grads)


def test_arguments_rebuild_the_same_architecture(model_name: str) -> None:
    model = tiny_model(model_name)
    rebuilt = models.create_model(model_name, **model.arguments())
    assert rebuilt.arguments() == model.arguments()
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()
    }


def test_default_geometry_takes_150_pixel_images(model_name: str) -> None:
    model = models.create_model(model_name).eval()
    assert model.image_size == 150
    x = torch.rand(2, 1, 150, 150)
    with torch.no_grad():
        assert model.reconstruct(x).shape == (2, 1, 150, 150)


def test_unknown_model_name_lists_the_valid_names() -> None:
    with pytest.raises(UnknownModelError) as info:
        models.create_model("resnet")
    message = str(info.value)
    assert "resnet" in message
    for name in models.list_models():
        assert name in message


def test_a_few_training_steps_lower_the_score(
    model_name: str,
) -> None:
    """A few optimiser steps on ring images must already help: a sanity check of each loss."""
    torch.manual_seed(0)
    model = tiny_model(model_name).train()
    x = _batch(32, seed=5)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.eval()
    with torch.no_grad():
        before = float(model.score(x).mean())
    for _ in range(40):
        model.train()
        optimiser.zero_grad()
        model.loss(x)["loss"].backward()
        optimiser.step()
    model.eval()
    with torch.no_grad():
        after = float(model.score(x).mean())
    assert np.isfinite(after)
    assert after < before

"""The contract every registered model honours, run over `models.list_models()`.

Scores are taken through the production path, `deeplense.inference.score_array` (what the
service, the `score` CLI and evaluation call), for every registered score; training goes
through the model's own training step (`training.steps.make_step`), as `fit` runs it.
"""

import numpy as np
import pytest
import torch

import models
from deeplense.errors import ScoreNotOfferedError, UnknownModelError
from deeplense.fit_drawn import FINDINGS
from deeplense.inference import score_array
from deeplense.scores import SCORES, scores_for
from models.base import AnomalyModel, is_training_only
from models.card import config_for
from models.checkpoint import load_checkpoint, save_checkpoint
from tests.conftest import TINY_SIZE, tiny_images, tiny_model
from training.steps import Precision, make_step


def _batch(n: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(tiny_images(n, seed=seed))  # (n, 1, 32, 32)


def _scores(model: AnomalyModel, x: torch.Tensor, batch_size: int = 64) -> dict[str, np.ndarray]:
    """Every score the model offers of each image, (N,) float64 each, as production computes
    it."""
    scored = score_array(model, x.numpy(), batch_size=batch_size, scores=scores_for(model))
    return {"w1": scored.w1, **scored.scores}


def test_models_are_registered_with_a_tiny_config() -> None:
    assert len(models.list_models()) >= 5  # the study's four and LensFit, at least
    for name in models.list_models():
        model = tiny_model(name)
        assert model.architecture == name
        assert model.image_size == TINY_SIZE


def test_reconstruct_keeps_shape_and_unit_range(model_name: str) -> None:
    model = tiny_model(model_name)
    x = _batch()
    with torch.no_grad():
        x_hat = model.reconstruct(x)
    assert x_hat.shape == x.shape
    assert x_hat.dtype == torch.float32
    assert float(x_hat.min()) >= 0.0
    assert float(x_hat.max()) <= 1.0


def test_every_score_is_finite_per_image(model_name: str) -> None:
    model = tiny_model(model_name)
    for name, values in _scores(model, _batch(5)).items():
        assert values.shape == (5,), name
        assert np.isfinite(values).all(), name
        assert (values >= 0).all(), name


def test_scores_drawn_by_the_fit_come_from_the_reconstructions_fit_or_are_refused(
    model_name: str,
) -> None:
    """A score drawn by a model's fit is the sum of squares of the map it draws, with the very
    reconstruction the model gives without it; a model refuses one it does not draw."""
    model = tiny_model(model_name)
    x = _batch(3).numpy()
    drawn = [n for n, s in SCORES.items() if s.drawn_by_fit]
    offered = [n for n in drawn if n in scores_for(model)]
    assert offered == [n for n in drawn if n in model.fit_scores]
    plain = score_array(model, x, keep_reconstructions=True).reconstruction
    for name in drawn:
        if name not in offered:
            with pytest.raises(ScoreNotOfferedError, match=name):
                score_array(model, x, scores=[name])
            continue
        scored = score_array(model, x, scores=[name], map_of=name, keep_reconstructions=True)
        assert isinstance(scored.residual_map, np.ndarray) and scored.residual_map.shape == x.shape
        sums = np.square(scored.residual_map.astype(np.float64)).reshape(3, -1).sum(axis=1)
        np.testing.assert_allclose(scored.scores[name], sums, rtol=1e-5, err_msg=name)
        assert np.isfinite(scored.scores[name]).all() and (scored.scores[name] > 0).all()
        np.testing.assert_array_equal(scored.reconstruction, plain, err_msg=name)
        # the fit's findings: only names the one table knows, one per image, finite where
        # they must be; none without a score drawn by the fit
        assert scored.findings and set(scored.findings) <= set(FINDINGS), name
        for key, values in scored.findings.items():
            assert values.shape == (3,), key
        if {"tension", "blob_gain"} <= set(scored.findings):
            total = scored.findings["tension"] + scored.findings["blob_gain"]
            np.testing.assert_allclose(total, scored.scores[name], rtol=1e-5, err_msg=name)
    assert score_array(model, x, scores=["chi2"]).findings == {}


def test_eval_mode_is_deterministic(model_name: str) -> None:
    model = tiny_model(model_name)
    x = _batch()
    first, second = _scores(model, x), _scores(model, x)
    with torch.no_grad():
        recon_a, recon_b = model.reconstruct(x), model.reconstruct(x)
        loss_a, loss_b = model.loss(x)["loss"], model.loss(x)["loss"]
    for name in first:
        np.testing.assert_array_equal(first[name], second[name], err_msg=name)
    assert torch.equal(recon_a, recon_b)
    assert torch.equal(loss_a, loss_b)


def test_score_does_not_depend_on_the_rest_of_the_batch(model_name: str) -> None:
    model = tiny_model(model_name)
    x = _batch(6)
    together = _scores(model, x)
    alone = _scores(model, x, batch_size=1)
    # An iterative per-image fit (LensFit's Levenberg-Marquardt) runs batched float32 linear
    # algebra whose rounding depends on the batch size, and its accept/reject steps can
    # amplify that (measured: up to 2e-3 relative in the noise-weighted scores of the tiny
    # random-weight model); leaking batch statistics would change scores by far more.
    iterative = getattr(getattr(model, "config", None), "refine_steps", 0) > 0
    for name in together:
        np.testing.assert_allclose(
            together[name], alone[name], rtol=5e-3 if iterative else 1e-5, atol=1e-7,
            err_msg=name,
        )  # fmt: skip


def test_safetensors_round_trip_gives_identical_scores(model_name: str, tmp_path) -> None:
    model = tiny_model(model_name)
    # One training-mode pass gives running buffers (BatchNorm statistics, the RBM's pixel
    # mean, LensFit's prior) non-default values, so that they are tested too.
    model.train()
    with torch.no_grad():
        model.loss(_batch(8, seed=3))
    model.eval()
    x = _batch()
    before = _scores(model, x)
    save_checkpoint(model, config_for(model), tmp_path / model_name)
    loaded = load_checkpoint(tmp_path / model_name)
    assert not loaded.model.training
    assert loaded.config.architecture == model_name
    assert loaded.config.input.height == TINY_SIZE
    after = _scores(loaded.model, x)
    for name in before:
        np.testing.assert_array_equal(before[name], after[name], err_msg=name)
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


def test_a_few_training_steps_lower_the_reconstruction_error(model_name: str) -> None:
    """40 steps of the model's own training step (as `fit` runs it) on ring images must
    already help: a sanity check of each loss and each step."""
    torch.manual_seed(0)
    model = tiny_model(model_name)
    x = _batch(32, seed=5)
    before = float(_scores(model, x)["mse"].mean())
    step = make_step(model, 3e-3, 0.0, total_steps=40, precision=Precision("cpu"))
    model.train()
    for _ in range(40):
        step(x)
    model.eval()
    after = float(_scores(model, x)["mse"].mean())
    assert np.isfinite(after)
    assert after < before

"""LensFit draws with the images' own PSF when scoring hands it one, and only for that call."""

import pytest
import torch

from deeplense.noise import estimate_noise
from tests.conftest import tiny_images, tiny_model


def test_a_given_psf_changes_the_drawing_for_that_call_only() -> None:
    model = tiny_model("lensfit")
    x = torch.from_numpy(tiny_images(3, seed=4))
    sigma = estimate_noise(x, model.psf_sigma_pixels)
    before = model.render_config
    with torch.no_grad():
        own = model.reconstruct_with_noise(x, sigma)
        same = model.reconstruct_with_noise(x, sigma, model.psf_sigma_pixels)
        wider = model.reconstruct_with_noise(x, sigma, 1.5 * model.psf_sigma_pixels)
    assert torch.equal(own, same)
    assert not torch.allclose(own, wider)
    assert model.render_config is before  # restored


def test_the_psf_is_restored_after_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_model("lensfit")
    before = model.render_config

    def broken(*args: object) -> torch.Tensor:
        raise RuntimeError("mid-fit")

    monkeypatch.setattr(model, "refine", broken)
    x = torch.from_numpy(tiny_images(2, seed=1))
    with pytest.raises(RuntimeError, match="mid-fit"):
        model.reconstruct_with_noise(x, torch.ones_like(x) * 0.05, 3.0)
    assert model.render_config is before


def test_learning_the_prior_restores_it_after_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_model("lensfit").train()
    mean, var = model.prior_mean.clone(), model.prior_var.clone()

    def broken(*args: object) -> torch.Tensor:
        raise RuntimeError("mid-fit")

    monkeypatch.setattr(model, "_refine_gauss_newton", broken)
    with pytest.raises(RuntimeError, match="mid-fit"):
        model.after_training(torch.from_numpy(tiny_images(4, seed=2)))
    assert torch.equal(model.prior_var, var) and torch.equal(model.prior_mean, mean)
    assert model.training  # its mode restored too

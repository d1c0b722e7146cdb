"""LensFit draws with the images' own PSF, and on their own pixel grid, when scoring hands it
them, and only for that call."""

from dataclasses import replace

import pytest
import torch

from deeplense.lensing.torch_renderer import RenderConfig, render_components
from deeplense.noise import estimate_noise
from models.lensfit import NAMES, LensFit, LensFitConfig
from tests.conftest import tiny_images, tiny_model

SIGMA = 0.01  # noise of the drawn images, [0, 1] units


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


def test_it_draws_an_image_of_another_pixel_scale_on_that_images_own_grid() -> None:
    # The model: 32 pixels of 0.1" (3.2"). The image: the same field in 16 pixels of 0.2",
    # drawn by LensFit's renderer there (PSF 0.1" = 0.5 own pixels), with noise SIGMA.
    config = replace(LensFitConfig.tiny(), pixel_scale=0.1, psf_sigma=0.1, refine_steps=0)
    torch.manual_seed(0)
    model = LensFit(config).eval()
    physical = {"theta_e": 0.9, "source_r_eff": 0.3, "lens_r_eff": 0.4, "source_x": 0.05}
    unit = torch.tensor([0.5] * len(NAMES))
    for name, value in physical.items():
        i = NAMES.index(name)
        unit[i] = (value - float(model.lo[i])) / float(model.span[i])
    with torch.no_grad():  # the encoder answers these parameters for every image
        model.head[-1].weight.zero_()
        model.head[-1].bias.copy_(torch.logit(unit))
        raw = model.head[-1].bias.expand(2, -1)
        own = RenderConfig(image_size=16, pixel_scale=0.2, supersampling=2, psf_sigma=0.1)
        arcs, light = render_components(model.lens_batch(raw), own)
    clean = arcs + 0.3 * light
    clean = clean / clean.amax(dim=(1, 2, 3), keepdim=True)
    x = clean + SIGMA * torch.randn(clean.shape, generator=torch.Generator().manual_seed(1))
    sigma = torch.full_like(x, SIGMA)
    with torch.no_grad():
        fitted = model.reconstruct_with_noise(x, sigma, 0.5, pixel_scale=0.2)
        wrong = model.reconstruct_with_noise(x, sigma, 0.5)  # read as 0.1" pixels
    chi2 = ((x - fitted) / SIGMA).pow(2).mean(dim=(1, 2, 3))
    assert fitted.shape == (2, 1, 16, 16)
    assert (chi2 < 1.5).all()
    assert (((x - wrong) / SIGMA).pow(2).mean(dim=(1, 2, 3)) > 10 * chi2).all()
    assert model.render_config.image_size == 32  # restored

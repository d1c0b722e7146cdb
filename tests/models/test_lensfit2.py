"""LensFit 2 beyond the contract: its refinement fits the lens it draws, the prior holds what
it should, masked pixels and the given PSF count as they should. Tiny images (32 px)."""

import math
from dataclasses import replace
from typing import Any

import pytest
import torch

import models
from deeplense.instrument import gaussian_kernel
from deeplense.lensing.flexible import INDEX, NAMES, FlexibleLens, design_matrix
from deeplense.lensing.flexible_fit import FlexibleFit
from deeplense.noise import estimate_noise
from models import lensfit2
from models.lensfit2 import LensFit2, LensFit2Config
from tests.conftest import tiny_images, tiny_model
from tests.lenses import flexible_lenses

SIGMA = 0.01  # noise of the drawn images, [0, 1] units


def small_model(**changes: object) -> LensFit2:
    """A tiny LensFit 2 on a 3.2" field (0.1"/px), so a 1" Einstein ring fits inside."""
    config = replace(LensFit2Config.tiny(), pixel_scale=0.1, psf_sigma=0.1, **changes)
    torch.manual_seed(0)
    return models.create_model("lensfit2", **LensFit2(config).arguments()).eval()  # type: ignore[return-value]


def aim_encoder(model: LensFit2, theta: torch.Tensor) -> None:
    """Make the encoder guess `theta` (13,) for every image: zero weights, bias at its logit."""
    last = model.head[-1]
    unit = ((theta.float() - model.lo) / model.span).clamp(1e-4, 1 - 1e-4)
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.logit(unit))


def off_truth() -> torch.Tensor:
    """A guess off the truth as a trained encoder's might be: (13,)."""
    guess = truth(1)[0].clone()
    guess[INDEX["theta_e"]] += 0.08
    guess[INDEX["center_x"]] -= 0.03
    guess[INDEX["mass_e1"]] -= 0.05
    guess[INDEX["source_x"]] += 0.05
    return guess


def truth(n: int = 2) -> torch.Tensor:
    """(n, 13) elliptical, sheared, off-centre lenses."""
    return flexible_lenses(n, theta_e=0.9, slope=2.05, mass_e1=0.1, log_beta=math.log(0.2))


def drawn(
    model: LensFit2,
    theta: torch.Tensor,
    seed: int = 0,
    lens: FlexibleLens | None = None,
    psf: torch.Tensor | None = None,
) -> torch.Tensor:
    """Images (n, 1, 32, 32) float32 the model's family draws (on `lens`'s grid through
    `psf`: None, the model's), with Gaussian noise SIGMA."""
    config = (model.lens if lens is None else lens).config
    kernel = model.psf_kernel().double() if psf is None else psf
    design = design_matrix(theta, config, kernel)  # (n, M, K)
    coef = torch.zeros(theta.shape[0], config.n_linear, dtype=torch.float64)
    coef[:, 2] = 0.4  # lens light: one Gaussian
    coef[:, len(config.light_sigmas)] = 1.0  # the source's round shapelet
    coef[:, len(config.light_sigmas) + 1] = 0.3  # and a lopsided one
    image = (design @ coef.unsqueeze(2)).view(-1, 1, config.image_size, config.image_size)
    image = image / image.amax(dim=(1, 2, 3), keepdim=True)
    g = torch.Generator().manual_seed(seed)
    return (image + SIGMA * torch.randn(image.shape, generator=g, dtype=image.dtype)).float()


def chi2(model: LensFit2, x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    return ((x - x_hat) / SIGMA).pow(2).mean(dim=(1, 2, 3))


@pytest.mark.parametrize(
    "schedule",
    [{"refine_steps": 8}, {"coarse_steps": 6, "refine_steps": 1}],
    ids=["full_steps", "coarse_steps_then_one_full"],
)
def test_refinement_fits_the_lens_it_draws_from_an_encoders_guess(
    schedule: dict[str, int],
) -> None:
    model, guess_only = small_model(**schedule), small_model(coarse_steps=0, refine_steps=0)
    for m in (model, guess_only):
        aim_encoder(m, off_truth())
    x = drawn(model, truth())
    sigma = torch.full_like(x, SIGMA)
    with torch.no_grad():
        guess_only = guess_only.reconstruct_with_noise(x, sigma)
        refined = model.reconstruct_with_noise(x, sigma)
    assert (chi2(model, x, refined) < 1.3).all()  # about 1 at the noise
    assert (chi2(model, x, refined) < 0.5 * chi2(model, x, guess_only)).all()


def test_an_images_fit_does_not_depend_on_its_batch_mates() -> None:
    """Each image is refined alone (REFINE_CHUNK): its reconstruction in a batch of three is
    its reconstruction alone, bit for bit."""
    model = small_model(refine_steps=3)
    aim_encoder(model, off_truth())
    x = drawn(model, flexible_lenses(3, theta_e=0.9, slope=2.05, log_beta=math.log(0.2)))
    sigma = torch.full_like(x, SIGMA)
    with torch.no_grad():
        together = model.reconstruct_with_noise(x, sigma)
        alone = torch.cat(
            [model.reconstruct_with_noise(x[i : i + 1], sigma[i : i + 1]) for i in range(3)]
        )
    assert torch.equal(together, alone)


def test_an_images_start_does_not_depend_on_its_batch_mates(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The encoder's guess of an image is its guess alone: a batched matrix product rounds
    with the batch's size (2e-7 in the shipped Model R head, 5e-6 of a score after
    refinement). The encoder stands in here for one whose rounding follows its batch."""
    model = tiny_model("lensfit2")
    assert isinstance(model, LensFit2)
    guess = model.guess
    monkeypatch.setattr(model, "guess", lambda view: guess(view) + 1e-4 * len(view))
    x = torch.from_numpy(tiny_images(9, seed=5))  # (9, 1, H, W)
    with torch.no_grad():
        together = model.encoder_start(x)
        alone = torch.cat([model.encoder_start(x[i : i + 1]) for i in range(len(x))])
    assert torch.equal(together, alone)


def test_a_gpu_sized_chunk_fits_each_image_as_it_would_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A GPU refines images in chunks (refine_chunk); the damping is per image, so three
    images refined together match each refined alone to rounding, coarse steps and full."""
    assert lensfit2.refine_chunk(torch.device("cpu")) == lensfit2.REFINE_CHUNK == 1
    assert lensfit2.refine_chunk(torch.device("cuda")) == lensfit2.GPU_REFINE_CHUNK > 1
    model = small_model(refine_steps=3)
    aim_encoder(model, off_truth())
    x = drawn(model, flexible_lenses(3, theta_e=0.9, slope=2.05, log_beta=math.log(0.2)))
    sigma = torch.full_like(x, SIGMA)
    batches: list[int] = []
    fit = lensfit2.fit_flexible

    def counted(lens: FlexibleLens, x: torch.Tensor, *args: Any) -> FlexibleFit:
        batches.append(len(x))
        return fit(lens, x, *args)

    monkeypatch.setattr(lensfit2, "fit_flexible", counted)
    with torch.no_grad():
        alone = model.reconstruct_with_noise(x, sigma)
        monkeypatch.setattr(lensfit2, "REFINE_CHUNK", 3)  # the CPU takes the GPU's path
        together = model.reconstruct_with_noise(x, sigma)
    assert batches == [1, 1, 1] * 2 + [3, 3]  # coarse steps, then full ones
    # rounding: a batched product sums in another order, and the steps after carry it
    # (1.4e-5 here, 0.0014 of the noise SIGMA)
    torch.testing.assert_close(together, alone, rtol=0, atol=3e-5)


def test_a_narrow_prior_holds_the_parameters_at_its_mean() -> None:
    model = small_model(refine_steps=8, prior_width=1e-4)
    prior_at_truth(model)
    assert (fitted_chi2(model, truth()) < 1.3).all()
    assert_holds_the_einstein_radius(model)


def test_a_narrow_mass_prior_holds_the_mass_and_leaves_the_source_free() -> None:
    model = small_model(refine_steps=8, prior_width=1e4, mass_prior_width=1e-4)
    widths = model.prior_widths()
    assert widths[INDEX["theta_e"]] == widths[INDEX["gamma2"]] == 1e-4
    assert widths[INDEX["source_x"]] == widths[INDEX["light_e1"]] == 1e4
    prior_at_truth(model)
    assert (fitted_chi2(model, moved("source_x", 0.05)) < 1.3).all()
    assert_holds_the_einstein_radius(model)
    assert "0.0001 for the mass" in model.card()["prior_note"]


def test_a_prior_narrowed_by_name_holds_those_parameters_and_leaves_the_shear_free() -> None:
    # Model A's lenses share one Einstein radius but not one external shear
    named = {"theta_e": 1e-4, "slope": 1e-4}
    model = small_model(refine_steps=8, prior_width=1e4, mass_prior_width=1e4, prior_widths=named)
    widths = model.prior_widths()
    assert widths[INDEX["theta_e"]] == widths[INDEX["slope"]] == 1e-4
    assert widths[INDEX["gamma1"]] == widths[INDEX["source_x"]] == 1e4
    prior_at_truth(model)
    assert (fitted_chi2(model, moved("gamma1", 0.05)) < 1.3).all()
    assert_holds_the_einstein_radius(model)
    assert model.card()["prior_note"].endswith("except theta_e 0.0001, slope 0.0001")


@pytest.mark.parametrize(
    ("widths", "message"),
    [
        ({"thetaE": 0.1}, "prior_widths: no parameter thetaE; valid: theta_e, slope"),
        ({"slope": 0}, r"prior_widths\[slope\] must be a positive number, got 0"),
        ([0.1], "prior_widths must map parameter names to widths"),
    ],
)
def test_a_prior_width_by_name_that_is_not_one_is_refused(widths: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LensFit2Config(prior_widths=widths)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "change", [{"prior_width": 0}, {"mass_prior_width": -1.0}, {"mass_prior_width": "abc"}]
)
def test_a_prior_width_that_is_not_a_positive_number_is_refused(change: dict) -> None:
    ((name, value),) = change.items()
    with pytest.raises(ValueError, match=f"{name} must be a positive number, got {value!r}"):
        LensFit2Config(**change)


def assert_holds_the_einstein_radius(model: LensFit2) -> None:
    """Held at a wrong Einstein radius the fit is poor, where a broad prior lets it move."""
    wrong_radius = moved("theta_e", 0.05)
    assert (fitted_chi2(model, wrong_radius) > 2 * fitted_chi2(broad(model), wrong_radius)).all()


def prior_at_truth(model: LensFit2) -> None:
    """The encoder guessing off the truth, the prior centred on it (variance 0.01)."""
    aim_encoder(model, off_truth())
    model.prior_mean.copy_(truth(1)[0].float())
    model.prior_var.fill_(0.01)


def moved(name: str, by: float) -> torch.Tensor:
    """truth() with parameter `name` moved by `by`: (2, 13)."""
    theta = truth()
    theta[:, INDEX[name]] += by
    return theta


def fitted_chi2(model: LensFit2, theta: torch.Tensor) -> torch.Tensor:
    """chi2 per pixel (n,) of the model's fit to the lenses theta (n, 13) it draws."""
    x = drawn(model, theta)
    with torch.no_grad():
        return chi2(model, x, model.reconstruct_with_noise(x, torch.full_like(x, SIGMA)))


def broad(model: LensFit2) -> LensFit2:
    """The same model under a prior 1e4 times wider on every parameter."""
    return replace_width(model, 1e4)


def replace_width(model: LensFit2, width: float) -> LensFit2:
    """The same weights and prior under another prior width."""
    wider = LensFit2(
        replace(model.config, prior_width=width, mass_prior_width=None, prior_widths=None)
    ).eval()
    wider.load_state_dict(model.state_dict())
    return wider


def test_after_training_learns_the_prior_from_refits() -> None:
    model = small_model(prior_fit_images=4, prior_fit_steps=8).train()
    aim_encoder(model, off_truth())
    before = model.prior_mean.clone()
    thetas = truth(4)
    thetas[:, INDEX["theta_e"]] += torch.tensor([-0.1, -0.05, 0.05, 0.1], dtype=torch.float64)
    model.after_training(drawn(model, thetas, seed=3))
    assert model.training  # its mode restored
    assert not torch.equal(model.prior_mean, before)
    # the Einstein radius the images share on average, and their spread
    assert abs(float(model.prior_mean[INDEX["theta_e"]]) - 0.9) < 0.03
    assert 0.003 < float(model.prior_var[INDEX["theta_e"]].sqrt()) < 0.2


def test_masked_pixels_do_not_change_the_fit() -> None:
    model = small_model(refine_steps=8)
    aim_encoder(model, off_truth())
    x = drawn(model, truth())
    sigma = torch.full_like(x, SIGMA)
    sigma[..., :, :4] = math.inf  # a masked strip
    corrupted = x.clone()
    corrupted[..., :, :4] = 1.0
    with torch.no_grad():
        clean = model.reconstruct_with_noise(x, sigma)
        dirty = model.reconstruct_with_noise(corrupted, sigma)
    inside = (slice(None), slice(None), slice(None), slice(4, None))
    assert torch.allclose(clean[inside], dirty[inside], atol=1e-5)
    assert (chi2(model, x[inside], dirty[inside]) < 1.3).all()


def test_a_given_psf_changes_the_drawing() -> None:
    model = tiny_model("lensfit2")
    x = torch.from_numpy(tiny_images(2, seed=4))
    sigma = estimate_noise(x, model.psf_sigma_pixels)
    with torch.no_grad():
        own = model.reconstruct_with_noise(x, sigma)
        same = model.reconstruct_with_noise(x, sigma, model.psf_sigma_pixels)
        wider = model.reconstruct_with_noise(x, sigma, 2.0 * model.psf_sigma_pixels)
    assert torch.equal(own, same)
    assert not torch.allclose(own, wider)


def test_card_reports_the_prior_in_physical_units() -> None:
    model = small_model()
    card = model.card()
    assert set(card["prior"]) == set(NAMES)
    assert card["prior"]["theta_e"]["mean"] == round(float(model.prior_mean[0]), 5)
    assert card["source"]["parameters"] == model.lens.config.n_linear


def test_it_fits_an_image_on_its_own_coarser_grid() -> None:
    # The same 3.2" field in 16 pixels of 0.2" (the model's: 32 of 0.1"); the PSF, 0.1", is
    # half an own pixel. Drawn there by the flexible family, fitted there.
    model = small_model(refine_steps=8)
    aim_encoder(model, off_truth())
    coarse = FlexibleLens(model.config.flexible(16, 0.2))
    psf = torch.from_numpy(gaussian_kernel(0.5, truncate=5.0)).double()
    x = drawn(model, truth(), lens=coarse, psf=psf)
    sigma = torch.full_like(x, SIGMA)
    with torch.no_grad():
        own = model.reconstruct_with_noise(x, sigma, 0.5, pixel_scale=0.2)
        wrong = model.reconstruct_with_noise(x, sigma, 0.5)  # read as 0.1" pixels: 1.6"
    assert own.shape == (2, 1, 16, 16)
    assert (chi2(model, x, own) < 1.5).all()
    assert (chi2(model, x, wrong) > 3 * chi2(model, x, own)).all()
    assert coarse.config.supersampling == 2 * model.config.supersampling

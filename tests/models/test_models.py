"""Model-specific behaviour: the AAE's parts, the VAE's KL and mean scoring, the RBM's energy."""

import itertools
import math

import pytest
import torch

import models
from models.aae import AdversarialAutoencoder
from models.rbm import GaussianBernoulliRBM
from models.vae import VariationalAutoencoder
from tests.conftest import TINY_GEOMETRY, tiny_images, tiny_model


def _batch(n: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(tiny_images(n, seed=seed))


# --- AAE ---------------------------------------------------------------------------------


def test_aae_learning_rates_are_config() -> None:
    model = models.create_model("aae", **TINY_GEOMETRY, lr_generator=3e-5)
    assert model.arguments()["lr_generator"] == 3e-5
    assert model.arguments()["lr_autoencoder"] == 1e-3
    with pytest.raises(ValueError, match="lr_discriminator"):
        models.create_model("aae", **TINY_GEOMETRY, lr_discriminator=0.0)


def test_aae_parameter_groups_split_the_networks() -> None:
    model = tiny_model("aae")
    assert isinstance(model, AdversarialAutoencoder)
    ae = {id(p) for p in model.autoencoder_parameters()}
    gen = {id(p) for p in model.generator_parameters()}
    disc = {id(p) for p in model.discriminator.parameters()}
    assert gen < ae
    assert not ae & disc
    assert ae | disc == {id(p) for p in model.parameters()}


def test_aae_discriminator_gives_one_logit_per_code_and_prior_has_its_width() -> None:
    model = tiny_model("aae")
    assert isinstance(model, AdversarialAutoencoder)
    torch.manual_seed(0)
    z = model.sample_prior(4000, "cpu")
    assert z.shape == (4000, TINY_GEOMETRY["latent_dim"])
    assert float(z.std()) == pytest.approx(5.0, rel=0.05)
    assert model.discriminate(z[:7]).shape == (7,)
    assert model.encode(_batch(3)).shape == (3, TINY_GEOMETRY["latent_dim"])


# --- VAE ---------------------------------------------------------------------------------


def _vae() -> VariationalAutoencoder:
    model = tiny_model("vae")
    assert isinstance(model, VariationalAutoencoder)
    return model


def test_vae_scores_at_the_mean_in_eval_and_samples_in_training() -> None:
    model = _vae()
    x = _batch()
    with torch.no_grad():
        mu, _ = model.encode(x)
        assert torch.equal(model.reconstruct(x), model.decode(mu))
        model.train()
        torch.manual_seed(1)
        a = model.reconstruct(x)
        b = model.reconstruct(x)
    assert not torch.equal(a, b)


def test_vae_kl_vanishes_at_the_prior_and_is_weighted_by_beta() -> None:
    model = _vae()
    with torch.no_grad():
        for head in (model.to_mu, model.to_logvar):
            head.weight.zero_()
            head.bias.zero_()
        parts = model.eval().loss(_batch())
        assert float(parts["kl"]) == 0.0
        model.to_mu.bias.fill_(1.0)  # every latent mean at 1: KL = latent_dim / 2 per image
        parts = model.loss(_batch())
    expected_kl = TINY_GEOMETRY["latent_dim"] / 2 / (32 * 32)
    assert float(parts["kl"]) == pytest.approx(expected_kl, rel=1e-6)
    beta = model.config.beta
    assert beta > 0
    assert float(parts["loss"]) == pytest.approx(float(parts["mse"]) + beta * expected_kl)


def test_vae_beta_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="beta"):
        models.create_model("vae", **TINY_GEOMETRY, beta=-1.0)


# --- RBM ---------------------------------------------------------------------------------


def _tiny_rbm(n_hidden: int = 3, image_size: int = 2) -> GaussianBernoulliRBM:
    torch.manual_seed(0)
    model = models.create_model("rbm", image_size=image_size, n_hidden=n_hidden, init_std=0.5)
    assert isinstance(model, GaussianBernoulliRBM)
    with torch.no_grad():
        model.visible_bias.normal_()
        model.hidden_bias.normal_()
    return model


def test_rbm_free_energy_matches_brute_force_sum_over_hidden_states() -> None:
    model = _tiny_rbm()
    u = torch.randn(5, 4, dtype=torch.float64)
    w, b, c = (t.detach().double() for t in (model.weight, model.visible_bias, model.hidden_bias))
    expected = []
    for row in u:
        energies = [
            0.5 * float((row - b).pow(2).sum())
            - float(c @ torch.tensor(h, dtype=torch.float64))
            - float(row @ w @ torch.tensor(h, dtype=torch.float64))
            for h in itertools.product([0.0, 1.0], repeat=3)
        ]
        expected.append(-math.log(sum(math.exp(-e) for e in energies)))
    got = model.free_energy(u.float())
    torch.testing.assert_close(
        got.double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-5, atol=1e-5
    )


def test_rbm_reconstruction_is_mean_field_not_a_sample() -> None:
    model = tiny_model("rbm").train()
    x = _batch(8)
    model.loss(x)  # sets the running pixel mean
    model.eval()
    with torch.no_grad():
        x_hat = model.reconstruct(x)
        u = model._visible(x)
        expected = model.visible_mean(model.hidden_probs(u)) * model.config.sigma
        expected = (expected + model.pixel_mean).clamp(0, 1).view_as(x)
    torch.testing.assert_close(x_hat, expected)
    # A binary sample would put every pixel at 0 or 1.
    assert ((x_hat > 0.01) & (x_hat < 0.99)).float().mean() > 0.5


def test_rbm_pixel_mean_follows_training_batches_only() -> None:
    model = tiny_model("rbm")
    x = _batch(8)
    model.loss(x)  # eval mode: no update
    assert float(model.pixel_mean.abs().max()) == 0.0
    model.train()
    model.loss(x[:4])
    model.loss(x[4:])
    torch.testing.assert_close(model.pixel_mean, x.flatten(1).mean(0))
    assert int(model.n_batches_seen) == 2


def test_rbm_cd_gradient_of_visible_bias_is_the_moment_difference() -> None:
    model = _tiny_rbm(n_hidden=5, image_size=3).eval()  # eval: mean-field negative phase
    x = torch.rand(6, 1, 3, 3)
    model.loss(x)["loss"].backward()
    with torch.no_grad():
        u = model._visible(x)
        u_model = model.gibbs_step(u)
        expected = (u_model.mean(0) - u.mean(0)) / 9
    assert model.visible_bias.grad is not None
    torch.testing.assert_close(model.visible_bias.grad, expected)


def test_rbm_default_checkpoint_stays_small() -> None:
    model = models.create_model("rbm")
    n_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    assert model.config.n_visible == 22_500
    assert 22e6 < n_bytes < 24e6


@pytest.mark.parametrize("replicate", [True, False])
def test_decoder_edges_get_as_many_kernel_taps_as_the_interior(replicate: bool) -> None:
    """All-ones weights and features count the taps behind each output pixel: with edge
    replication no border pixel gets fewer than the interior; without, corners get none."""
    from models.layers import ConvDecoder, ConvNetConfig

    cfg = ConvNetConfig(replicate_edges=replicate)
    decoder = ConvDecoder(cfg)
    for layer in decoder.net:
        if isinstance(layer, torch.nn.ConvTranspose2d):
            torch.nn.init.ones_(layer.weight)
            torch.nn.init.zeros_(layer.bias)
    with torch.no_grad():
        taps = decoder.net(torch.ones(1, *decoder.shape))[0, 0]  # (150, 150) before sigmoid
    assert taps.shape == (150, 150)
    interior = taps[10:-10, 10:-10]
    border = torch.cat([taps[:3].flatten(), taps[-3:].flatten(), taps[:, :3].flatten(),
                        taps[:, -3:].flatten()])  # fmt: skip
    if replicate:
        assert border.min() >= interior.min() and border.max() <= interior.max()
    else:
        assert border.min() < 0.01 * interior.min()  # the old decoder's starved frame


def test_format_1_conv_checkpoints_keep_their_decoder() -> None:
    from models.card import CheckpointConfig

    raw = {"format_version": 1, "architecture": "dcae", "arguments": {"image_size": 150},
           "input": {"height": 150, "width": 150}}  # fmt: skip
    assert CheckpointConfig.model_validate(raw).arguments["replicate_edges"] is False
    raw2 = {**raw, "format_version": 2}
    assert "replicate_edges" not in CheckpointConfig.model_validate(raw2).arguments


def test_lensfit_refines_under_inference_mode_after_a_plain_inference_call() -> None:
    """The scoring path runs in torch.inference_mode: the renderer's cached grids must stay
    usable by the refinement's autograd even when first built there."""
    from deeplense.lensing import torch_renderer

    torch_renderer._grid.cache_clear()
    torch_renderer._psf_matrix.cache_clear()
    model = tiny_model("lensfit")
    x = torch.from_numpy(tiny_images(3, seed=5))
    model.config.refine_steps = 0
    with torch.inference_mode():
        plain = model.reconstruct(x)  # fills the caches in inference mode
    model.config.refine_steps = 3
    with torch.inference_mode():
        refined = model.reconstruct(x)
    assert refined.shape == plain.shape and not torch.equal(refined, plain)


def test_lensfit_gauss_newton_never_raises_an_images_cost() -> None:
    """Levenberg-Marquardt accepts only steps that lower each image's MAP cost."""
    from deeplense.noise import estimate_noise

    model = tiny_model("lensfit")
    x = torch.from_numpy(tiny_images(4, seed=9))
    sigma = estimate_noise(x, model.psf_sigma_pixels)
    raw = model.encode(x).detach()

    def cost(r: torch.Tensor) -> torch.Tensor:
        res = ((x - model.draw(r, x, sigma)) / sigma).flatten(1)
        return 0.5 * res.pow(2).sum(dim=1) + model.prior_penalty(r)

    with torch.no_grad():
        before = cost(raw)
        after = cost(model._refine_gauss_newton(raw, x, sigma, steps=3))
    assert torch.all(after <= before) and torch.any(after < before)
    model.config.refine_method = "newton"
    model.config.refine_steps = 1
    with pytest.raises(ValueError, match="adam or gauss_newton"):
        model.reconstruct(x)


def test_lensfit_jacobian_is_the_residuals_derivative_however_its_directions_are_stacked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The forward-mode Jacobian is the whitened residual's central difference, and the same
    with its directions one a pass (JACOBIAN_ROWS 1), some (5) or all (64) together."""
    import models.lensfit as lensfit_module
    from deeplense.noise import estimate_noise
    from models.lensfit import NAMES

    model = tiny_model("lensfit")
    x = torch.from_numpy(tiny_images(2, seed=5))
    sigma = estimate_noise(x, model.psf_sigma_pixels)
    with torch.no_grad():
        # away from round profiles (e1 = e2 = 0), where the axis ratio has a kink
        raw = model.encode(x) + 0.5 * torch.randn(
            2, len(NAMES), generator=torch.Generator().manual_seed(1)
        )
        jacobians = {}
        for rows in (1, 5, 64):
            monkeypatch.setattr(lensfit_module, "JACOBIAN_ROWS", rows)
            jacobians[rows] = model._jacobian(raw, x, sigma)  # (N, M, P)
        n, p = raw.shape
        one = jacobians[1]
        assert one.shape == (n, x[0].numel(), p) and one.abs().max() > 0
        for rows in (5, 64):
            torch.testing.assert_close(jacobians[rows], one, rtol=1e-5, atol=1e-6 * one.abs().max())
        h = 1e-2  # the renderer is float32: a step well above its rounding
        for k in range(p):
            step = torch.zeros_like(raw)
            step[:, k] = h
            central = model._whitened(raw + step, x, sigma) - model._whitened(raw - step, x, sigma)
            column = one[:, :, k]
            error = (column - central / (2 * h)).norm() / column.norm()
            assert error < 0.05, f"parameter {NAMES[k]}: {float(error):.3f} off its difference"


def test_lensfit_learns_its_prior_from_refined_fits_of_training_images() -> None:
    model = tiny_model("lensfit").train()
    before_mean, before_var = model.prior_mean.clone(), model.prior_var.clone()
    model.after_training(torch.from_numpy(tiny_images(12, seed=11)))
    assert not torch.equal(model.prior_mean, before_mean)
    assert not torch.equal(model.prior_var, before_var)
    assert torch.all(model.prior_var >= model.config.prior_floor)
    assert model.training  # the model's mode is left as it was


def test_lensfit_fit_variance_is_the_inverse_fisher_diagonal_and_scales_with_the_noise() -> None:
    from deeplense.noise import estimate_noise

    model = tiny_model("lensfit")
    x = torch.from_numpy(tiny_images(3, seed=4))
    sigma = estimate_noise(x, model.psf_sigma_pixels)
    raw = model.encode(x).detach()
    var = model.fit_variance(raw, x, sigma)
    assert var.shape == raw.shape and torch.all(var > 0) and torch.all(torch.isfinite(var))
    # The whitened Jacobian is proportional to 1 / sigma: twice the noise, four times the
    # variance of every parameter.
    torch.testing.assert_close(model.fit_variance(raw, x, 2 * sigma), 4 * var, rtol=2e-3, atol=0)


def test_lensfit_deconvolved_prior_lies_between_its_floor_share_and_the_plain_one() -> None:
    images = torch.from_numpy(tiny_images(12, seed=11))
    plain = tiny_model("lensfit")
    plain.config.prior_deconvolve = False
    plain.after_training(images)
    narrow = tiny_model("lensfit")
    assert narrow.config.prior_deconvolve  # the default
    narrow.after_training(images)
    torch.testing.assert_close(narrow.prior_mean, plain.prior_mean)
    share = narrow.config.prior_min_share
    assert torch.all(narrow.prior_var <= plain.prior_var * (1 + 1e-6))
    assert torch.all(narrow.prior_var >= share * plain.prior_var * (1 - 1e-6))
    assert torch.any(narrow.prior_var < plain.prior_var)  # some noise was taken out

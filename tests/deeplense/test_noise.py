"""The noise map estimated from an image alone, against the simulator's true sigma."""

import numpy as np
import pytest
import torch

from deeplense.noise import estimate_noise, fit_noise_model
from training.lensing.noise import noise_sigma, poisson_observation
from training.lensing.render import SimConfig, render_components
from training.simulate import DATASETS, image_rngs, simulate_image

CONFIG = SimConfig()


def true_and_estimated(dataset: str, cls: str, index: int) -> tuple[np.ndarray, np.ndarray]:
    """(true sigma, estimated sigma), each (150, 150), in the scaled image's units."""
    one = simulate_image(DATASETS[dataset], CONFIG, 11, "test", cls, index)
    components = render_components(one.params, CONFIG)
    _, noise_rng = image_rngs(11, "test", cls, index)  # the same draw as the stored image
    noisy = poisson_observation(components.rate, one.params.exposure, CONFIG.sky, noise_rng)
    span = noisy.max() - noisy.min()
    true = noise_sigma(components.rate, one.params.exposure, CONFIG.sky) / span
    x = torch.from_numpy(one.image)[None, None]
    psf_pixels = CONFIG.psf_sigma / CONFIG.pixel_scale
    return true, estimate_noise(x, psf_pixels)[0, 0].double().numpy()


@pytest.mark.parametrize("dataset", ["model_a", "model_b"])
def test_noise_estimate_matches_the_true_sigma(dataset: str) -> None:
    ratios, bright_ratios = [], []
    for cls in ("no_sub", "sphere", "vort"):
        for index in range(3):
            true, estimated = true_and_estimated(dataset, cls, index)
            ratio = estimated / true
            ratios.append(np.median(ratio))
            bright = true > np.quantile(true, 0.95)  # the arcs and the lens light
            bright_ratios.append(np.median(ratio[bright]))
    ratios_a = np.array(ratios)
    assert np.all(np.abs(ratios_a - 1) < 0.25)  # each image's median ratio within 25%
    assert ratios_a.max() / ratios_a.min() < 1.10  # the same for every image within 10%
    assert np.all(np.abs(np.array(bright_ratios) - 1) < 0.25)  # also where the light is


def test_flat_noise_gives_a_constant_map_of_the_right_level() -> None:
    g = torch.Generator().manual_seed(3)
    x = 0.5 + 0.01 * torch.randn((2, 1, 80, 80), generator=g)
    a, b = fit_noise_model(x, 2.0)
    sigma = estimate_noise(x, 2.0)
    assert torch.all(a.abs() < 1e-3)  # no dependence on the (flat) level
    np.testing.assert_allclose(sigma.double().median().item(), 0.01, rtol=0.05)


def test_gain_and_sky_are_recovered() -> None:
    # sigma^2 = a x + b with a = 4e-5, b = 1e-6 on a smooth gradient image.
    g = torch.Generator().manual_seed(4)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 120), torch.linspace(0, 1, 120), indexing="ij")
    clean = (0.9 * torch.exp(-((xx - 0.5) ** 2 + (yy - 0.5) ** 2) / 0.1)).double()[None, None]
    sigma = torch.sqrt(4e-5 * clean + 1e-6)
    x = clean + sigma * torch.randn(clean.shape, generator=g, dtype=torch.float64)
    a, b = fit_noise_model(x, 2.0)
    assert a.item() == pytest.approx(4e-5, rel=0.1)
    assert b.item() == pytest.approx(1e-6, rel=0.3)

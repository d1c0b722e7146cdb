"""LensFit 2's coarse-to-fine refinement: its first steps on the image binned 2 x 2
(deeplense.lensing.coarse) reach the lens the full-resolution steps reach, on even and odd
sides. Tiny images (32-33 px)."""

import math
from dataclasses import replace

import pytest
import torch

from deeplense.lensing import coarse
from deeplense.lensing.coarse import coarse_image, coarse_psf_sigma, shift_positions
from deeplense.lensing.flexible import INDEX
from models import lensfit2
from models.lensfit2 import LensFit2Config
from tests.models.test_lensfit2 import (
    SIGMA,
    drawn,
    off_truth,
    small_model,
    truth,
)


def test_binning_averages_each_block_and_its_noise() -> None:
    x = torch.arange(36, dtype=torch.float64).view(1, 1, 6, 6)
    sigma = torch.full_like(x, 0.2)
    sigma[0, 0, 5, 0] = math.inf  # masked: its block's mean is unknown
    binned = coarse_image(x, sigma, pixel_scale=0.05)
    assert binned.x.shape == (1, 1, 3, 3)
    assert binned.x[0, 0, 0, 0] == (0 + 1 + 6 + 7) / 4
    assert binned.pixel_scale == pytest.approx(0.1)
    assert binned.shift == 0.0
    assert math.isinf(binned.sigma[0, 0, 2, 0])
    finite = torch.isfinite(binned.sigma)
    assert int(finite.sum()) == 8
    assert torch.allclose(binned.sigma[finite], torch.tensor(0.1, dtype=torch.float64))


def test_an_odd_side_drops_its_last_row_and_shifts_positions_by_half_a_pixel() -> None:
    x = torch.rand(1, 1, 7, 7, dtype=torch.float64)
    binned = coarse_image(x, torch.ones_like(x), pixel_scale=0.1)
    assert binned.x.shape == (1, 1, 3, 3)
    assert torch.allclose(binned.x[0, 0, 2, 2], x[0, 0, 4:6, 4:6].mean())
    assert binned.shift == pytest.approx(0.05)
    theta = truth(1)
    moved = binned.to_coarse(theta)
    for name in coarse.POSITIONS:
        assert moved[0, INDEX[name]] == pytest.approx(float(theta[0, INDEX[name]]) + 0.05)
    assert moved[0, INDEX["theta_e"]] == theta[0, INDEX["theta_e"]]
    assert torch.allclose(binned.to_fine(moved), theta)
    assert shift_positions(theta, 0.0) is theta


def test_the_coarse_psf_adds_the_blocks_own_blur() -> None:
    # a 2-sample mean half a pixel either side: variance 1/4 fine pixel^2
    assert coarse_psf_sigma(1.0) == pytest.approx(math.sqrt(1.25) / 2)
    assert coarse_psf_sigma(0.0, block=3) == pytest.approx(math.sqrt(8 / 12) / 3)


def test_too_small_an_image_is_refused() -> None:
    with pytest.raises(ValueError, match="too small"):
        coarse_image(torch.zeros(1, 1, 3, 3), torch.ones(1, 1, 3, 3), 0.1)


@pytest.mark.parametrize("side", [32, 33])
def test_the_coarse_fit_lands_on_the_drawn_lens_on_even_and_odd_sides(
    side: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The coarse steps alone, from a guess off the truth: the lens centre within 0.015" (a
    seventh of a fine pixel) of the truth on either side. An odd side's coarse grid lies half a
    fine pixel off the fine one's: without the shift its centre lands about that far off."""
    model = small_model(coarse_steps=10, refine_steps=0)
    theta = truth(1)
    x = drawn(model, theta, lens=model.lens_on(side)).double()
    sigma = torch.full_like(x, SIGMA)
    centre = [INDEX["center_x"], INDEX["center_y"]]

    def centre_error() -> float:
        fitted = model.coarse_refine(x, sigma, off_truth()[None], model.psf_sigma_pixels, 0.1)
        return float((fitted[0, centre] - theta[0, centre].float()).abs().max())

    assert centre_error() < 0.015
    if side % 2:
        unshifted = lambda *a: replace(coarse_image(*a), shift=0.0)  # noqa: E731
        monkeypatch.setattr(lensfit2, "coarse_image", unshifted)
        assert centre_error() > 0.04


@pytest.mark.parametrize("steps", [-1, 1.5, True, "2"])
def test_a_step_count_that_is_not_a_whole_number_is_refused(steps: object) -> None:
    for name in ("coarse_steps", "refine_steps"):
        with pytest.raises(ValueError, match=name):
            LensFit2Config(**{name: steps})  # type: ignore[arg-type]


def test_card_reports_the_coarse_steps() -> None:
    card = small_model(coarse_steps=3, refine_steps=1).card()
    assert card["refinement"]["coarse_steps"] == 3
    assert card["refinement"]["steps"] == 1

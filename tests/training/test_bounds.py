"""The detection-bounds helpers: parameter round trip, and the exact smooth-lens fit."""

import numpy as np
import pytest

from training.bounds import FREE, _params, _vector, exact_reconstruction
from training.lensing.render import SimConfig, render_image
from training.simulate import DATASETS, draw_params, image_rngs


@pytest.mark.parametrize("dataset", ["model_a", "model_b"])
def test_free_parameters_round_trip(dataset: str) -> None:
    params = draw_params(DATASETS[dataset], "no_sub", image_rngs(1, "test", "no_sub", 3)[0])
    back = _params(params, FREE[dataset], _vector(params, FREE[dataset]))
    for name in ("source_q", "source_phi", "lens_q", "lens_phi", "gamma1", "theta_e"):
        assert getattr(back, name) == pytest.approx(getattr(params, name), abs=1e-12), name


def test_exact_reconstruction_of_a_noiseless_image_is_the_image() -> None:
    config = SimConfig(image_size=48)
    params = draw_params(DATASETS["model_a"], "no_sub", image_rngs(2, "test", "no_sub", 0)[0])
    x = render_image(params, config).astype(np.float64)  # noiseless, [0, 1]
    assert np.abs(exact_reconstruction(x, params, config) - x).max() < 1e-5

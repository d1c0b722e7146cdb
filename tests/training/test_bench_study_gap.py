"""bench/study_gap.py: the noiseless truths it re-renders and its per-image decomposition."""

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.bench_scripts import load_bench
from training.simulate import simulate_dataset


class Fixed(torch.nn.Module):
    """A 'model' that draws given images, whatever it is shown: (n, H, W) -> (n, 1, H, W)."""

    def __init__(self, images: np.ndarray) -> None:
        super().__init__()
        self.images = torch.from_numpy(images)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.images[:, None].clone()


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return simulate_dataset(
        "model_a", tmp_path_factory.mktemp("gap") / "d", n_train=0, n_val=0, n_test=2, seed=3,
        workers=1, progress=False, substructure="study",
    )  # fmt: skip


def test_truths_regenerate_the_images_and_their_noise(study: Path) -> None:
    bench = load_bench("study_gap")
    for cls in ("no_sub", "sphere"):
        t = bench.render_truths(study, cls, 2)
        assert t.mismatch == 0.0  # the stored images, bit for bit
        stats = bench.image_stats(t)
        # the realised noise is the Poisson variance, to a few per cent over 22,500 pixels
        np.testing.assert_allclose(stats["noise_mse"], stats["noise_var"], rtol=0.05)
        assert np.all(stats["noise_mse_8bit"] > stats["noise_mse"])  # quantisation adds noise
        if cls == "no_sub":
            assert np.all(stats["signal"] == 0.0)
            np.testing.assert_array_equal(stats["exact_mse"], stats["noise_mse"])
        else:
            assert np.all(stats["signal"] > 1e-7)
            assert np.all(stats["exact_mse"] > stats["noise_mse"])


def test_a_model_that_draws_the_truth_or_the_smooth_lens(study: Path) -> None:
    bench = load_bench("study_gap")
    t = bench.render_truths(study, "sphere", 2)
    truth = bench.model_stats(Fixed(t.truth), t)
    np.testing.assert_allclose(truth["captured"], 1.0, rtol=1e-6)
    np.testing.assert_allclose(truth["error"], 0.0, atol=1e-12)
    np.testing.assert_allclose(truth["mse"], bench.image_stats(t)["noise_mse"], rtol=1e-5)
    smooth = bench.model_stats(Fixed(t.smooth), t)
    np.testing.assert_allclose(smooth["captured"], 0.0, atol=1e-6)
    # the score splits into noise + error vs the truth - 2 * the noise the model copies
    blurred = bench.model_stats(Fixed(0.9 * t.x + 0.05), t)
    noise = bench.image_stats(t)["noise_mse"]
    np.testing.assert_allclose(
        blurred["mse"], noise + blurred["error"] - 2 * blurred["cross"], rtol=1e-5
    )

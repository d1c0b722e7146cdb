"""One elliptical, sheared, off-centre lens in the flexible model's 13 parameters, for the
tests of the flexible lens and of LensFit 2; and a tiny simulated Model R set, for the tests
of the flexible and pixelated-source bounds."""

import math
from pathlib import Path

import torch

from deeplense.lensing.flexible import NAMES, FlexibleConfig
from training.lensing.render import SimConfig
from training.simulate import simulate_dataset

SMALL = SimConfig(image_size=48, field_of_view=4.8)  # 0.1"/px
# The flexible lens on SMALL's grid, at a test's cost (order-4 shapelets, no sub-pixels).
FLEXIBLE = FlexibleConfig(image_size=48, pixel_scale=0.1, shapelet_order=4, supersampling=1)

LENS = dict.fromkeys(NAMES, 0.0) | {
    "theta_e": 1.0, "slope": 2.1, "mass_e1": 0.12, "mass_e2": -0.05, "center_x": 0.03,
    "center_y": -0.02, "gamma1": 0.03, "gamma2": 0.02, "source_x": 0.05, "source_y": 0.08,
    "log_beta": math.log(0.25), "light_e1": 0.1, "light_e2": 0.05,
}  # fmt: skip


def flexible_lenses(n: int, **changes: float) -> torch.Tensor:
    """(n, 13) float64: `LENS` with `changes`, the same for every image."""
    values = LENS | changes
    return torch.tensor([[values[k] for k in NAMES]] * n, dtype=torch.float64)


def tiny_model_r(folder: Path, n_train: int = 0, n_test: int = 2, seed: int = 5) -> Path:
    """A Model R dataset of SMALL images in `folder`: n_train and n_test per class."""
    return simulate_dataset(
        "model_r", folder, n_train=n_train, n_val=0, n_test=n_test, seed=seed, workers=1,
        progress=False, config=SMALL,
    )  # fmt: skip

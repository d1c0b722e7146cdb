"""One elliptical, sheared, off-centre lens in the flexible model's 13 parameters, for the
tests of the flexible lens and of LensFit 2."""

import math

import torch

from deeplense.lensing.flexible import NAMES

LENS = dict.fromkeys(NAMES, 0.0) | {
    "theta_e": 1.0, "slope": 2.1, "mass_e1": 0.12, "mass_e2": -0.05, "center_x": 0.03,
    "center_y": -0.02, "gamma1": 0.03, "gamma2": 0.02, "source_x": 0.05, "source_y": 0.08,
    "log_beta": math.log(0.25), "light_e1": 0.1, "light_e2": 0.05,
}  # fmt: skip


def flexible_lenses(n: int, **changes: float) -> torch.Tensor:
    """(n, 13) float64: `LENS` with `changes`, the same for every image."""
    values = LENS | changes
    return torch.tensor([[values[k] for k in NAMES]] * n, dtype=torch.float64)

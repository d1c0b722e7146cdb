"""The flexible-model bound: a flexible smooth lens (`deeplense.lensing.flexible`) refitted to
each test image, started at the true smooth lens, with each image's true PSF.

`training.bounds` refits the dataset's own rigid family; this refit is the gravitational-
imaging modeller's: elliptical power-law mass with shear and a free centre, multi-Gaussian
lens light and a shapelet source, the linear parts solved exactly. What it leaves in the
residual is what any smooth-lens model of that freedom can detect; what it absorbs, a
flexible source and lens can mimic. Started at the truth, it measures the model family, not
an optimiser's luck.

A `MassPrior` (optional) adds a Gaussian prior on the 8 mass parameters to the refit: each
one's standard deviation is `width` times its spread across a lens population (a dataset's
training split), centred at the image's true lens (an oracle: how much the mass's freedom
absorbs) or at the population mean (what a prior learnt from that population would be).
"""

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from deeplense.lensing.flexible import INDEX, MASS, NAMES, FlexibleConfig, FlexibleLens
from deeplense.lensing.flexible_fit import GaussianPrior, fit_flexible
from deeplense.noise import estimate_noise
from training.image_psfs import psf_kernel
from training.simulate import PARAMETERS_FILE, read_rows

BETA_PER_R_EFF = 0.7  # the shapelet scale's start, in units of the true source R_eff
# The least population spread a mass prior is built on (arcsec for theta_e and the centre,
# dimensionless otherwise): a parameter the population holds constant (Model R's Einstein
# radius, 1.2") is then pinned to within width x 0.01, not infinitely.
MASS_STD_FLOOR = 0.01


def _value(row: dict[str, str], name: str, default: float) -> float:
    text = row.get(name, "")
    return float(text) if text not in ("", None) else default


def _e1e2(q: float, phi: float) -> tuple[float, float]:
    e = (1.0 - q) / (1.0 + q)
    return e * math.cos(2.0 * phi), e * math.sin(2.0 * phi)


def truth_theta(row: dict[str, str]) -> np.ndarray:
    """The flexible model's 13 parameters at an image's true smooth lens (Model A, B or R)."""
    v = dict.fromkeys(NAMES, 0.0)
    v["theta_e"] = float(row["theta_e"])
    v["slope"] = _value(row, "mass_slope", 2.0)
    v["mass_e1"], v["mass_e2"] = _e1e2(_value(row, "mass_q", 1.0), _value(row, "mass_phi", 0.0))
    v["center_x"], v["center_y"] = _value(row, "lens_x", 0.0), _value(row, "lens_y", 0.0)
    v["gamma1"], v["gamma2"] = float(row["gamma1"]), float(row["gamma2"])
    v["source_x"], v["source_y"] = float(row["source_x"]), float(row["source_y"])
    v["log_beta"] = math.log(BETA_PER_R_EFF * float(row["source_r_eff"]))
    v["light_e1"], v["light_e2"] = _e1e2(float(row["lens_q"]), float(row["lens_phi"]))
    return np.array([v[name] for name in NAMES])


@dataclass(frozen=True)
class MassPrior:
    """A Gaussian prior on the flexible model's mass parameters (`flexible.MASS`).

    Standard deviation: `width` x the population's (floored at `MASS_STD_FLOOR`); centre:
    each image's true lens ("truth") or the population mean ("population"). The other five
    parameters stay free (zero inverse variance)."""

    centre: Literal["truth", "population"]
    width: float
    population_mean: np.ndarray  # (13,)
    population_std: np.ndarray  # (13,), floored on the mass parameters

    def mean(self, start: np.ndarray) -> np.ndarray:
        """The prior's centre for images started at `start` (N, 13): (N, 13)."""
        if self.centre == "truth":
            return start
        return np.repeat(self.population_mean[None], len(start), axis=0)

    def inverse_variance(self) -> np.ndarray:
        """(13,): 1 / (width x std)^2 on the mass parameters, 0 elsewhere."""
        out = np.zeros(len(NAMES))
        mass = [INDEX[name] for name in MASS]
        out[mass] = 1.0 / (self.width * self.population_std[mass]) ** 2
        return out


def mass_prior(
    population: Path, centre: Literal["truth", "population"], width: float
) -> tuple[MassPrior, str]:
    """A `MassPrior` from the true lenses of `population`'s train split (its val split where
    the train split is empty), and the split it used."""
    if centre not in ("truth", "population"):
        raise ValueError(f"unknown prior centre {centre!r}; valid: 'truth', 'population'")
    if not width > 0:
        raise ValueError(f"the prior's width must be positive, got {width}")
    for split in ("train", "val"):
        rows = read_rows(population, split, n=2**62)
        if rows:
            break
    else:
        raise ValueError(f"{population / PARAMETERS_FILE} has no train or val rows")
    theta = np.stack([truth_theta(r) for r in rows.values()])  # (R, 13)
    std = theta.std(axis=0)
    mass = [INDEX[name] for name in MASS]
    std[mass] = np.maximum(std[mass], MASS_STD_FLOOR)
    return MassPrior(centre, width, theta.mean(axis=0), std), split


@dataclass
class FlexibleFits:
    """Images (N, 1, n, n), their flexible refits (same shape), and each fit's parameters."""

    images: np.ndarray
    refit: np.ndarray
    theta: np.ndarray  # (N, 13)
    start: np.ndarray  # (N, 13), the truth


def flexible_refit(
    images: np.ndarray,
    rows: list[dict[str, str]],
    config: FlexibleConfig,
    nominal_psf_sigma: float,
    steps: int = 10,
    chunk: int = 4,
    prior: MassPrior | None = None,
) -> FlexibleFits:
    """Refit each image (N, 1, n, n) from its true smooth lens (`rows`: its parameters),
    under `prior` on the mass where given."""
    lens = FlexibleLens(config)
    psf_pixels = nominal_psf_sigma / config.pixel_scale
    x_all = torch.from_numpy(np.asarray(images, dtype=np.float64))
    start = np.stack([truth_theta(r) for r in rows])
    fitted, thetas = [], []
    for i in range(0, len(rows), chunk):
        x = x_all[i : i + chunk]
        sigma = estimate_noise(x, psf_pixels)
        kernels = [
            psf_kernel(r, config.pixel_scale, nominal_psf_sigma) for r in rows[i : i + chunk]
        ]
        side = max(k.shape[-1] for k in kernels)
        psf = torch.stack([pad_to(k, side) for k in kernels])  # (B, k, k)
        gaussian = None
        if prior is not None:
            gaussian = GaussianPrior(
                mean=torch.from_numpy(prior.mean(start[i : i + chunk])),
                inverse_variance=torch.from_numpy(prior.inverse_variance()),
            )
        theta0 = torch.from_numpy(start[i : i + chunk])
        fit = fit_flexible(lens, x, sigma, psf, theta0, steps, prior=gaussian)
        fitted.append(fit.model.numpy())
        thetas.append(fit.theta.numpy())
    return FlexibleFits(
        images=np.asarray(images, dtype=np.float32),
        refit=np.concatenate(fitted).astype(np.float32),
        theta=np.concatenate(thetas),
        start=start,
    )


def pad_to(kernel: torch.Tensor, side: int) -> torch.Tensor:
    pad = (side - kernel.shape[-1]) // 2
    return torch.nn.functional.pad(kernel, (pad, pad, pad, pad))


__all__ = [
    "INDEX",
    "FlexibleFits",
    "MassPrior",
    "flexible_refit",
    "mass_prior",
    "psf_kernel",
    "read_rows",
    "truth_theta",
]

"""Detection bounds: how well could any reconstruction-based detector do on a simulated set?

For a test image with known parameters, two ideal "reconstructions" of the smooth lens (the
image without its subhalos) bound what a model can reach:

- `exact_reconstruction`: the noiseless smooth lens rendered from the true parameters,
  mapped to the image's [0, 1] scale by a linear least-squares fit (x ~ alpha * clean + c).
  No model can do better: it has to guess the smooth lens from the noisy image. It is drawn
  for every simulated set, Model R and the mismatch suite included (their departures are
  re-rendered from parameters.csv and source_components.csv).
- `refit_reconstruction`: a weighted least-squares refit of the smooth model to the image,
  started at the truth, with the parameters the dataset keeps fixed held (Model A: the
  Einstein radius, every Sersic index and radius; Model B lets the Einstein radius and the
  radii vary with redshift, so they are free). Amplitudes and the [0, 1] offset are solved
  linearly at every step (variable projection). A subhalo's effect that the smooth model can
  mimic (mostly extra mass inside the ring) is absorbed here, as it would be by any model
  that reconstructs smooth lenses well: this is the realistic bound. Model A and Model B
  only (`FREE`): the flexible refit (`training.flexible_bound`) is the realistic sets' one.

Both are scored with the project's own score functions (`deeplense.scores`), with the
noise map estimated from the image (`deeplense.noise`).
"""

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.optimize import least_squares

from deeplense.noise import estimate_noise
from deeplense.vocabulary import read_manifest
from training.lensing.render import LensParams, SimConfig, phi_q_to_e1e2, render_components
from training.simulate import read_split_parameters, simulate_dataset

# Free parameters of the refit, per dataset (all others held at their true values).
SHAPE = ("gamma1", "gamma2", "source_x", "source_y", "source_e1", "source_e2")
LENS_SHAPE = ("lens_e1", "lens_e2")
FREE: dict[str, tuple[str, ...]] = {
    "model_a": (*SHAPE, *LENS_SHAPE),
    "model_b": ("theta_e", *SHAPE, "source_r_eff", *LENS_SHAPE, "lens_r_eff"),
}


def load_test_params(directory: Path, n: int) -> dict[tuple[str, int], LensParams]:
    """Parameters of the first n test images of each class, subhalos dropped (smooth lens);
    with their departures from Model A (`realism`) on Model R and the mismatch suite."""
    return {
        key: dataclasses.replace(params, theta_sub=0.0, subhalos=(), subhalo_theta=())
        for key, params in read_split_parameters(Path(directory), "test").items()
        if key[1] < n
    }


def sim_config(directory: Path) -> SimConfig:
    """The SimConfig a simulated dataset was made with (from its manifest)."""
    return SimConfig(**read_manifest(Path(directory))["config"])


def _weighted_fit(columns: list[np.ndarray], x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Model image from the weighted linear fit x ~ sum_k c_k columns_k + offset: (H, W)."""
    design = np.stack([*(c.ravel() for c in columns), np.ones(x.size)], axis=1)  # (P, K+1)
    coef, *_ = np.linalg.lstsq(design * w.ravel()[:, None], x.ravel() * w.ravel(), rcond=None)
    return (design @ coef).reshape(x.shape)


def exact_reconstruction(x: np.ndarray, params: LensParams, config: SimConfig) -> np.ndarray:
    """The true smooth lens on the image's [0, 1] scale: (H, W) float64."""
    clean = render_components(params, config).rate
    return _weighted_fit([clean], x, np.ones_like(x))


def _to_q_phi(e1: float, e2: float) -> tuple[float, float]:
    e = min(math.hypot(e1, e2), 0.95)
    return (1.0 - e) / (1.0 + e), 0.5 * math.atan2(e2, e1)


def _vector(params: LensParams, free: tuple[str, ...]) -> np.ndarray:
    se1, se2 = phi_q_to_e1e2(params.source_phi, params.source_q)
    le1, le2 = phi_q_to_e1e2(params.lens_phi, params.lens_q)
    values = {**dataclasses.asdict(params), "source_e1": se1, "source_e2": se2}
    values.update(lens_e1=le1, lens_e2=le2)
    return np.array([values[name] for name in free], dtype=np.float64)


def _params(start: LensParams, free: tuple[str, ...], v: np.ndarray) -> LensParams:
    values = dict(zip(free, map(float, v), strict=True))
    update: dict[str, Any] = {
        k: val for k, val in values.items() if k in {f.name for f in dataclasses.fields(LensParams)}
    }
    if "source_e1" in values:
        update["source_q"], update["source_phi"] = _to_q_phi(
            values["source_e1"], values["source_e2"]
        )
    if "lens_e1" in values:
        update["lens_q"], update["lens_phi"] = _to_q_phi(values["lens_e1"], values["lens_e2"])
    for name in ("theta_e", "source_r_eff", "lens_r_eff"):
        if name in update:
            update[name] = max(update[name], 0.05)
    return dataclasses.replace(start, **update)


def refit_reconstruction(
    x: np.ndarray,
    start: LensParams,
    config: SimConfig,
    free: tuple[str, ...],
    sigma: np.ndarray,
    max_evaluations: int = 300,
) -> np.ndarray:
    """Weighted least-squares refit of the smooth lens to image x (H, W), started at `start`,
    varying only `free`; returns the fitted model on x's scale (H, W) float64."""
    w = 1.0 / sigma

    def model(v: np.ndarray) -> np.ndarray:
        p = dataclasses.replace(_params(start, free, v), source_intensity=1.0, lens_intensity=1.0)
        c = render_components(p, config)
        return _weighted_fit([c.arcs, c.lens], x, w)

    def whitened(v: np.ndarray) -> np.ndarray:
        return ((x - model(v)) * w).ravel()

    v0 = _vector(start, free)
    fit = least_squares(whitened, v0, method="trf", diff_step=1e-3, x_scale=0.1,
                        max_nfev=max_evaluations)  # fmt: skip
    return model(fit.x)


@dataclass
class BoundImages:
    """One class's test images (N, 1, H, W) and the two ideal reconstructions of each."""

    images: np.ndarray
    exact: np.ndarray
    refit: np.ndarray | None


def bound_reconstructions(
    directory: Path, cls: str, n: int, refit: bool, free: tuple[str, ...] | None = None
) -> BoundImages:
    """The first n test images of `cls` in a simulated dataset and their ideal reconstructions."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    config = sim_config(directory)
    free = free or FREE.get(manifest["dataset"], FREE["model_b"])
    params = load_test_params(directory, n)
    stack = np.load(directory / "test" / f"{cls}.npy", mmap_mode="r", allow_pickle=False)
    count = min(n, len(stack))
    images = np.array(stack[:count], dtype=np.float32)  # (N, 1, H, W)
    psf_pixels = config.psf_sigma / config.pixel_scale
    exact = np.empty_like(images)
    fitted = np.empty_like(images) if refit else None
    for i in range(count):
        x = images[i, 0].astype(np.float64)
        exact[i, 0] = exact_reconstruction(x, params[(cls, i)], config)
        if fitted is not None:
            sigma = estimate_noise(torch.from_numpy(images[i : i + 1]), psf_pixels)
            fitted[i, 0] = refit_reconstruction(
                x, params[(cls, i)], config, free, sigma[0, 0].double().numpy()
            )
    return BoundImages(images=images, exact=exact, refit=fitted)


def signal_snr2(directory: Path, cls: str, n: int) -> np.ndarray:
    """(N,) each test image's subhalo signal: the squared S/N, summed over pixels, of the
    noiseless change its subhalos make ((with - without) / sigma, on the image's [0, 1]
    scale, sigma estimated from the image as the scores do). What a detector that knows the
    smooth lens exactly has to work with: the exact bound's likelihood-ratio S/N squared."""
    directory = Path(directory)
    config = sim_config(directory)
    params = read_split_parameters(directory, "test")
    stack = np.load(directory / "test" / f"{cls}.npy", mmap_mode="r", allow_pickle=False)
    images = np.array(stack[: min(n, len(stack))], dtype=np.float32)  # (N, 1, H, W)
    sigma = estimate_noise(torch.from_numpy(images), config.psf_sigma / config.pixel_scale)
    out = np.empty(len(images))
    for i in range(len(images)):
        full = params[(cls, i)]
        smooth = dataclasses.replace(full, theta_sub=0.0, subhalos=(), subhalo_theta=())
        without = render_components(smooth, config).rate
        change = render_components(full, config).rate - without
        x = images[i, 0].astype(np.float64)
        alpha = np.linalg.lstsq(
            np.stack([without.ravel(), np.ones(x.size)], axis=1), x.ravel(), rcond=None
        )[0][0]  # rate -> the image's [0, 1] scale
        out[i] = float((((alpha * change) / sigma[i, 0].double().numpy()) ** 2).sum())
    return out


def fraction_test_set(base: Path, work: Path, fraction: float, n: int) -> Path:
    """`base`'s test set (n per class) at another subhalo mass fraction, simulated into `work`
    once and reused: the same dataset and seed, so the same no_sub images and lenses; `base`
    itself at its own fraction."""
    manifest = read_manifest(base)
    if abs(float(manifest.get("subhalo_mass_fraction", 0.01)) - fraction) < 1e-12:
        return base
    out = work / f"{manifest['dataset']}_seed{manifest['seed']}_f{fraction:g}_n{n}"
    if not (out / "manifest.json").is_file():
        simulate_dataset(
            manifest["dataset"], out, n_train=0, n_val=0, n_test=n, seed=int(manifest["seed"]),
            workers=1, progress=False, subhalo_mass_fraction=fraction, overwrite=out.exists(),
        )  # fmt: skip
    return out

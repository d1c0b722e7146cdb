"""Simulated Model A / Model B datasets: parameter draws, parallel rendering, atomic writing.

Layout written by `simulate_dataset` (N = images, each (1, n, n) float32 in [0, 1]):
    DIR/train/no_sub.npy  DIR/val/no_sub.npy  DIR/test/{no_sub,sphere,vort}.npy
    DIR/manifest.json     DIR/parameters.csv  DIR/subhalos.csv
`parameters.csv` holds one row per image (split, class, index and every `LensParams`
field); `subhalos.csv` one row per subhalo (split, class, index, k, x, y; with
`substructure="study"` also theta_sub, its Einstein radius in arcsec, and mass_msun). With
the seed they regenerate any image exactly (`regenerate_image`).

Rendering: every image's noiseless light comes from the project's torch renderer
(`deeplense.lensing.torch_renderer`, through `training.lensing.render`), float64 on one torch
thread; the Poisson noise is NumPy's. Workers are spawned processes with one torch thread
each and OMP_WAIT_POLICY=PASSIVE (unless set), so W workers keep to W cores.

Determinism: image `index` of (split, class) draws its parameters and its noise from
numpy SeedSequence(seed, spawn_key=(split code, class code, index)), children 0 and 1, and
is rendered alone on one thread, so the files do not depend on the number of workers or on
chunking.

Photometry (both datasets; the study's, REFERENCE.md "Photometry"): lens light an elliptical
Sersic of intensity 1.2 counts/s/pixel at R_eff, n 2.5, R_eff 0.5", axis ratio U[0.5, 1];
source an elliptical Sersic of intensity U[0.7, 0.9], n 1.5, R_eff 0.5", axis ratio U[0.7, 1];
exposure 300 s, sky 0.1 counts/s/pixel, Poisson noise, then per-image min-max scaling.
Model A: z_lens = 0.5, z_source = 1.0, theta_E = 1.2", and nothing rescales the noise: its
median arc S/N (definition in `training.lensing.noise`) comes out near 19 by itself.
Model B: z_lens ~ U[0.3, 0.7], z_source ~ U[0.9, 1.5] (so z_source >= z_lens + 0.2 always),
theta_E = 1.2" * (D_ls/D_s) / (D_ls/D_s at 0.5, 1.0) (fixed velocity dispersion),
galaxy angular sizes scaled by D_A (fixed physical size), and a median arc S/N drawn
U[10, 30] per image, reached by scaling that image's exposure.
Both: shear |gamma| ~ U[0, 0.3] at a random angle; source at radius U[0, theta_E]; subhalos
(sphere, vort) are 25 point masses, sphere at radius U[0, 1"] from the centre, vort evenly
along a line centred within 0.5" of the Einstein ring at a random azimuth and orientation;
lengths in " are for theta_E = 1.2" and scale with theta_E. Their masses (`substructure`):
- "stated" (the default; REFERENCE.md): 25 equal masses of theta_E * sqrt(f / 25) each, a
  fraction f of the lens mass (1% unless `subhalo_mass_fraction` says otherwise); the vort
  line is 1" long.
- "study" (the study's own code, issue 18; `STUDY`): sphere masses m_i drawn from
  dN/dm ~ m^-0.9 on [1e6, 1e10] Msun, each of Einstein radius theta_E * sqrt(m_i / 1e12 Msun)
  (3.8% of the lens on average); vort: a fraction U[3%, 5.5%] shared by 25 equal masses
  on a line U[0.5", 2"] long. These draws come after all of "stated"'s from the same
  parameter stream, so an image has the same lens, source, subhalo positions (sphere) and
  line centre and angle (vort) under both, and no_sub images are the same bytes.
Model R ("realistic", issue 21; docs/model_r.md): Model A's photometry, classes and
draws, then departures drawn after them from the same stream (`training.lensing.realism`):
an elliptical power-law mass with an offset centre, a varied (optionally two-component)
lens light, a Gaussian or Moffat PSF per image, and procedural sources of realistic
morphology. The mismatch suite is Model A with one departure (or all) on top:
`get_spec("model_a+NAME")`, NAME in `realism.DEPARTURES`; the same seed gives Model A's
lens, source position and subhalos image by image. Their extra parameters are more columns
of parameters.csv (`realism.SCALAR_FIELDS`, among them each image's PSF: psf, psf_fwhm,
psf_beta) and one row per extra source component in source_components.csv.
Cosmology: FlatLambdaCDM(H0=70, Om0=0.3).
"""

import csv
import dataclasses
import hashlib
import json
import logging
import math
import multiprocessing
import multiprocessing.pool
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.lib.format import open_memmap
from tqdm import tqdm

from deeplense.atomic import atomic_directory
from deeplense.errors import DatasetError, OutputExistsError
from deeplense.instrument import STUDY_PSF_SIGMA_ARCSEC
from deeplense.vocabulary import (
    CLASSES,
    MANIFEST_FILE,
    MANIFEST_FORMAT,
    read_manifest,
)
from training.lensing import cosmology, realism
from training.lensing.noise import SNR_DEFINITION, exposure_for_snr
from training.lensing.parameter_grid import ParameterGrid, draw_grid, grid_record, uniform_draw
from training.lensing.realism import RealismSpec
from training.lensing.render import (
    LensParams,
    SimConfig,
    observe,
    render_components,
    render_image,
)

logger = logging.getLogger(__name__)

SIMULATOR_NAME = "deeplense-lensing"
# 2.3: model_r and the departures (model_a and model_b write what 2.2 wrote); 2.2:
# substructure "study" ("stated", the default, writes what 2.1 wrote); 2.1: rendered by the
# torch renderer (2.0: NumPy). 2.3 also writes --parameter-grid sets (manifest key
# parameter_grid); without it the files are 2.3's as before.
SIMULATOR_VERSION = "2.3.0"
SPLITS = ("train", "val", "test")
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
CLASS_CODES = {"no_sub": 0, "sphere": 1, "vort": 2}
PARAMETERS_FILE = "parameters.csv"
PER_IMAGE_PSF = "per-image"  # the manifest's instrument.psf when each image draws its own
SUBHALOS_FILE = "subhalos.csv"
CHUNK = 32  # images per task sent to a worker process
SNR_COLUMNS = ("snr_median", "snr_peak")  # measured per image, after the params in the CSV
SUBSTRUCTURES = ("stated", "study")  # how the subhalos' masses are set (module docstring)
SUBHALO_FIELDS = ("subhalos", "subhalo_theta")  # LensParams' fields kept in subhalos.csv
SOURCE_COMPONENTS_FILE = "source_components.csv"  # Model R's extra source components
DEPARTURE_SEPARATOR = "+"  # "model_a+wide_psf": Model A with one departure


@dataclass(frozen=True)
class StudySubstructure:
    """The substructure of the study's own code (issue 18): masses in Msun, lengths in arcsec
    at theta_E = 1.2" (they scale with theta_E).

    A subhalo of mass m has Einstein radius theta_E * sqrt(m / lens_mass), the issue's
    1.2" * sqrt(m / 1e12 Msun) at theta_E = 1.2". (At z 0.5 / 1.0 a 1e12 Msun point mass
    would have 1.66"; the SIS of 1.2" holds 5.2e11 Msun within its ring. lens_mass is the
    study's normalisation, not that mass.) Mean sphere mass, with p = slope + 1 = 0.1 on
    [a, b] = [1e6, 1e10]: E[m] = p / (p + 1) (b^(p+1) - a^(p+1)) / (b^p - a^p) = 1.510e9
    Msun, so 25 subhalos hold 25 E[m] / 1e12 = 3.78% of the lens on average.
    """

    mass_range: tuple[float, float] = (1e6, 1e10)  # Msun, each sphere subhalo
    mass_slope: float = -0.9  # dN/dm ~ m^mass_slope
    lens_mass: float = 1e12  # Msun; theta_i = theta_E sqrt(m_i / lens_mass)
    vortex_mass_fraction: tuple[float, float] = (0.03, 0.055)  # of the lens, all 25 together
    vortex_length: tuple[float, float] = (0.5, 2.0)  # arcsec at theta_E = 1.2"

    def mean_mass(self) -> float:
        """Analytic mean (Msun) of one sphere subhalo's mass (class docstring)."""
        (a, b), p = self.mass_range, self.mass_slope + 1.0
        return p / (p + 1.0) * (b ** (p + 1.0) - a ** (p + 1.0)) / (b**p - a**p)


STUDY = StudySubstructure()


def draw_power_law(
    rng: np.random.Generator, size: int, lo: float, hi: float, slope: float
) -> np.ndarray:
    """(size,) draws from dN/dm ~ m^slope on [lo, hi] (slope != -1) by the inverse CDF:
    F(m) = (m^p - lo^p) / (hi^p - lo^p), p = slope + 1."""
    p = slope + 1.0
    u = rng.uniform(size=size)
    return np.asarray((lo**p + u * (hi**p - lo**p)) ** (1.0 / p), dtype=np.float64)


@dataclass(frozen=True)
class DatasetSpec:
    """Parameter ranges of one dataset; (lo, hi) pairs are uniform draws, lengths arcsec."""

    name: str
    z_lens: tuple[float, float]
    z_source: tuple[float, float]
    snr: tuple[float, float] | None = None  # median arc S/N drawn per image; None: no scaling
    theta_e_ref: float = 1.2  # Einstein radius at the reference redshifts
    z_ref: tuple[float, float] = (0.5, 1.0)  # (lens, source) reference redshifts
    shear: tuple[float, float] = (0.0, 0.3)  # magnitude; angle U[0, pi)
    lens_r_eff: float = 0.5  # at z_ref[0]
    lens_n: float = 2.5
    lens_q: tuple[float, float] = (0.5, 1.0)  # angle U[0, pi)
    lens_intensity: float = 1.2  # counts/s/pixel at R_eff
    source_r_eff: float = 0.5  # at z_ref[1]
    source_n: float = 1.5
    source_q: tuple[float, float] = (0.7, 1.0)  # angle U[0, pi)
    source_intensity: tuple[float, float] = (0.7, 0.9)  # counts/s/pixel at R_eff
    source_radius: tuple[float, float] = (0.0, 1.2)  # azimuth U[0, 2 pi); scales with theta_E
    n_subhalos: int = 25
    subhalo_mass_fraction: float = 0.01  # of the lens mass, all subhalos together
    sphere_radius: tuple[float, float] = (0.0, 1.0)  # azimuth U[0, 2 pi); scales with theta_E
    vortex_length: float = 1.0  # scales with theta_E; orientation U[0, pi)
    vortex_ring_offset: tuple[float, float] = (-0.5, 0.5)  # centre radius - theta_E; scales
    substructure: str = "stated"  # SUBSTRUCTURES: "study" draws the masses and length (STUDY)
    realism: RealismSpec | None = None  # Model R's departures; None: Model A's physics
    grid: ParameterGrid | None = None  # the study's sampler (K values per parameter); None: U

    def theta_sub(self, theta_e: float) -> float:
        """Einstein radius of one subhalo: theta_E * sqrt(mass fraction / count)."""
        return theta_e * math.sqrt(self.subhalo_mass_fraction / self.n_subhalos)


DATASETS: dict[str, DatasetSpec] = {
    "model_a": DatasetSpec(name="model_a", z_lens=(0.5, 0.5), z_source=(1.0, 1.0)),
    "model_b": DatasetSpec(
        name="model_b", z_lens=(0.3, 0.7), z_source=(0.9, 1.5), snr=(10.0, 30.0)
    ),
    "model_r": DatasetSpec(
        name="model_r", z_lens=(0.5, 0.5), z_source=(1.0, 1.0), realism=realism.MODEL_R
    ),
}
DEPARTURES = tuple(realism.DEPARTURES)


def _base_spec(name: str) -> DatasetSpec:
    """DATASETS[name], or for "BASE+DEPARTURE" that dataset with the departure on top."""
    base, _, departure = name.partition(DEPARTURE_SEPARATOR)
    if base not in DATASETS:
        raise DatasetError(f"unknown dataset {base!r}; valid: {', '.join(sorted(DATASETS))}")
    if not departure:
        return DATASETS[base]
    if departure not in realism.DEPARTURES:
        raise DatasetError(f"unknown departure {departure!r}; valid: {', '.join(DEPARTURES)}")
    if DATASETS[base].realism is not None:
        raise DatasetError(f"{base} has its own departures; add one to model_a or model_b")
    return dataclasses.replace(DATASETS[base], name=name, realism=realism.DEPARTURES[departure])


def dataset_name(name: str, departure: str | None = None) -> str:
    """The name of dataset `name` with `departure` on top ("model_a+wide_psf")."""
    return name if departure is None else f"{name}{DEPARTURE_SEPARATOR}{departure}"


def get_spec(
    name: str, substructure: str = "stated", subhalo_mass_fraction: float | None = None
) -> DatasetSpec:
    """The DatasetSpec called `name` (a DATASETS key, or "BASE+DEPARTURE") with that
    substructure (and, for "stated", that mass fraction instead of 1%); DatasetError listing
    the valid choices otherwise."""
    base = _base_spec(name)
    if substructure not in SUBSTRUCTURES:
        raise DatasetError(
            f"unknown substructure {substructure!r}; valid: {', '.join(SUBSTRUCTURES)}"
        )
    spec = dataclasses.replace(base, substructure=substructure)
    if subhalo_mass_fraction is None:
        return spec
    if substructure == "study":
        raise DatasetError(
            "--subhalo-mass-fraction sets the stated substructure's mass; --substructure "
            "study draws its own masses: give one of them"
        )
    if not 0 < subhalo_mass_fraction < 1:
        raise ValueError(f"subhalo_mass_fraction must lie in (0, 1), got {subhalo_mass_fraction}")
    return dataclasses.replace(spec, subhalo_mass_fraction=subhalo_mass_fraction)


def image_rngs(
    seed: int, split: str, cls: str, index: int
) -> tuple[np.random.Generator, np.random.Generator]:
    """(parameter generator, noise generator) of one image, independent of all others."""
    root = np.random.SeedSequence(seed, spawn_key=(SPLIT_CODES[split], CLASS_CODES[cls], index))
    params_seq, noise_seq = root.spawn(2)
    return np.random.default_rng(params_seq), np.random.default_rng(noise_seq)


def draw_params(
    spec: DatasetSpec,
    cls: str,
    rng: np.random.Generator,
    exposure: float = 300.0,
    psf_sigma: float = STUDY_PSF_SIGMA_ARCSEC,
) -> LensParams:
    """Draw one image's parameters for class `cls` (no_sub, sphere or vort).

    `exposure` is the base exposure (s); with `spec.snr` the drawn target is recorded in
    `snr_target` and `simulate_image` scales the exposure to reach it. With `spec.realism`
    its departures are drawn after all of Model A's draws (`psf_sigma`, arcsec, is the
    instrument's nominal PSF, which Model R's PSF widths multiply).
    """
    params = _draw_model_a(spec, cls, rng, exposure)
    if spec.realism is None:
        return params
    return realism.draw(spec.realism, rng, params, psf_sigma)


def grid_ranges(spec: DatasetSpec) -> dict[str, tuple[float, float]]:
    """The range of each of Model A's (and B's) uniform draws, by its grid name
    (`parameter_grid.GRID_PARAMETERS`); radians for angles, arcsec at theta_E = 1.2"."""
    return {
        "z_lens": spec.z_lens,
        "z_source": spec.z_source,
        "shear": spec.shear,
        "shear_angle": (0.0, math.pi),
        "source_radius": spec.source_radius,
        "source_azimuth": (0.0, 2.0 * math.pi),
        "lens_q": spec.lens_q,
        "lens_phi": (0.0, math.pi),
        "source_q": spec.source_q,
        "source_phi": (0.0, math.pi),
        "source_intensity": spec.source_intensity,
        "snr": spec.snr or (0.0, 0.0),
    }


def _draw_model_a(
    spec: DatasetSpec, cls: str, rng: np.random.Generator, exposure: float
) -> LensParams:
    """Model A's (and B's) draws of one image, in their fixed order."""
    if cls not in CLASS_CODES:
        raise ValueError(f"unknown class {cls!r}; valid: {', '.join(CLASSES)}")
    ranges = grid_ranges(spec)
    draw = uniform_draw(spec.grid, cls, rng)  # rng.uniform, or the study's grid (issue 18)
    z_lens = draw("z_lens", *ranges["z_lens"])
    z_source = draw("z_source", *ranges["z_source"])
    theta_e = cosmology.einstein_radius(z_lens, z_source, spec.theta_e_ref, spec.z_ref)
    scale = theta_e / spec.theta_e_ref  # lengths tied to the ring scale with it
    gamma = draw("shear", *ranges["shear"])
    shear_angle = draw("shear_angle", *ranges["shear_angle"])
    radius = draw("source_radius", *ranges["source_radius"]) * scale
    azimuth = draw("source_azimuth", *ranges["source_azimuth"])
    params = LensParams(
        theta_e=theta_e,
        gamma1=gamma * math.cos(2.0 * shear_angle),
        gamma2=gamma * math.sin(2.0 * shear_angle),
        lens_r_eff=cosmology.angular_size(spec.lens_r_eff, z_lens, spec.z_ref[0]),
        lens_n=spec.lens_n,
        lens_q=draw("lens_q", *ranges["lens_q"]),
        lens_phi=draw("lens_phi", *ranges["lens_phi"]),
        source_x=radius * math.cos(azimuth),
        source_y=radius * math.sin(azimuth),
        source_r_eff=cosmology.angular_size(spec.source_r_eff, z_source, spec.z_ref[1]),
        source_n=spec.source_n,
        source_q=draw("source_q", *ranges["source_q"]),
        source_phi=draw("source_phi", *ranges["source_phi"]),
        lens_intensity=spec.lens_intensity,
        source_intensity=draw("source_intensity", *ranges["source_intensity"]),
        exposure=exposure,
        snr_target=0.0 if spec.snr is None else draw("snr", *spec.snr),
        z_lens=z_lens,
        z_source=z_source,
    )
    if cls == "no_sub":
        return params
    k = spec.n_subhalos
    study = spec.substructure == "study"
    theta_sub = spec.theta_sub(theta_e)
    subhalo_theta: tuple[float, ...] = ()  # () for equal masses
    if cls == "sphere":
        r = rng.uniform(*spec.sphere_radius, size=k) * scale
        a = rng.uniform(0.0, 2.0 * math.pi, size=k)
        xy = np.stack([r * np.cos(a), r * np.sin(a)], axis=1)  # (K, 2)
        if study:  # drawn after every stated draw: the positions stay the same
            masses = draw_power_law(rng, k, *STUDY.mass_range, STUDY.mass_slope)  # (K,) Msun
            thetas = theta_e * np.sqrt(masses / STUDY.lens_mass)  # (K,) arcsec
            theta_sub = float(np.sqrt(np.mean(thetas**2)))  # the equal-mass equivalent
            subhalo_theta = tuple(map(float, thetas))
    else:  # vort: a line of k masses, centred near the Einstein ring
        centre_r = theta_e + float(rng.uniform(*spec.vortex_ring_offset)) * scale
        centre_a = float(rng.uniform(0.0, 2.0 * math.pi))
        orientation = float(rng.uniform(0.0, math.pi))
        length = spec.vortex_length
        if study:  # drawn after every stated draw: the centre and angle stay the same
            length = float(rng.uniform(*STUDY.vortex_length))
            fraction = float(rng.uniform(*STUDY.vortex_mass_fraction))
            theta_sub = theta_e * math.sqrt(fraction / k)  # equal masses: the renderer's own
        t = np.linspace(-0.5, 0.5, k) * length * scale  # (K,) along the line
        xy = np.stack(
            [
                centre_r * math.cos(centre_a) + t * math.cos(orientation),
                centre_r * math.sin(centre_a) + t * math.sin(orientation),
            ],
            axis=1,
        )
    subhalos = tuple((float(x), float(y)) for x, y in xy)
    return dataclasses.replace(
        params, theta_sub=theta_sub, subhalos=subhalos, subhalo_theta=subhalo_theta
    )


def subhalo_rows(params: LensParams, substructure: str) -> list[list[float]]:
    """`subhalos.csv`'s values after (split, class, index) for one image: k, x, y, and for
    "study" the subhalo's Einstein radius (arcsec) and mass (Msun, STUDY's normalisation)."""
    if substructure != "study":
        return [[k, x, y] for k, (x, y) in enumerate(params.subhalos)]
    thetas = params.subhalo_theta or (params.theta_sub,) * len(params.subhalos)
    return [
        [k, x, y, theta, STUDY.lens_mass * (theta / params.theta_e) ** 2]
        for k, ((x, y), theta) in enumerate(zip(params.subhalos, thetas, strict=True))
    ]


@dataclass(frozen=True)
class Simulated:
    """One image (n, n) float32 in [0, 1], its parameters and its arcs' S/N statistics."""

    image: np.ndarray
    params: LensParams
    snr_median: float
    snr_peak: float


def simulate_image(
    spec: DatasetSpec, config: SimConfig, seed: int, split: str, cls: str, index: int
) -> Simulated:
    """One image, fully determined by the key; Model B's exposure reaches its drawn SNR."""
    params_rng, noise_rng = image_rngs(seed, split, cls, index)
    params = draw_params(spec, cls, params_rng, config.exposure, config.psf_sigma)
    components = render_components(params, config)
    median, peak = components.snr(params.exposure, config.sky)
    if params.snr_target > 0:
        exposure = exposure_for_snr(median, params.snr_target, params.exposure)
        scale = (exposure / params.exposure) ** 0.5  # every pixel's S/N grows as sqrt(t)
        params = dataclasses.replace(params, exposure=exposure)
        median, peak = median * scale, peak * scale
    image = observe(components, params.exposure, config, noise_rng)
    return Simulated(image=image, params=params, snr_median=median, snr_peak=peak)


def substructure_signal(
    name: str,
    cls: str,
    n: int,
    seed: int = 0,
    substructure: str = "study",
    config: SimConfig | None = None,
) -> np.ndarray:
    """(n,) per-image mean square of the noiseless change that the subhalos make.

    Test images 0..n-1 of class `cls` (sphere or vort) of dataset `name`, each rendered
    noiseless and min-max scaled to [0, 1] as the pipeline scales, with its subhalos and
    without them (the same lens and source): the mean over pixels of the squared difference.
    """
    if cls not in ("sphere", "vort"):
        raise ValueError(f"cls must be sphere or vort, got {cls!r}")
    spec = get_spec(name, substructure)
    config = config or SimConfig()
    out = np.empty(n, dtype=np.float64)
    for index in range(n):
        params = draw_params(
            spec, cls, image_rngs(seed, "test", cls, index)[0], psf_sigma=config.psf_sigma
        )
        smooth = dataclasses.replace(params, theta_sub=0.0, subhalos=(), subhalo_theta=())
        with_sub = render_image(params, config).astype(np.float64)  # (n, n) in [0, 1]
        without = render_image(smooth, config).astype(np.float64)
        out[index] = np.mean((with_sub - without) ** 2)
    return out


@dataclass(frozen=True)
class _Task:
    spec: DatasetSpec
    config: SimConfig
    seed: int
    split: str
    cls: str
    start: int
    stop: int


def _run_task(task: _Task) -> tuple[np.ndarray, list[Simulated]]:
    """Render images start..stop-1 of one (split, class): ((k, 1, n, n) float32, each's
    Simulated with its image dropped)."""
    n = task.config.image_size
    images = np.empty((task.stop - task.start, 1, n, n), dtype=np.float32)
    facts = []
    for i, index in enumerate(range(task.start, task.stop)):
        one = simulate_image(task.spec, task.config, task.seed, task.split, task.cls, index)
        images[i, 0] = one.image
        facts.append(dataclasses.replace(one, image=np.empty(0, dtype=np.float32)))
    return images, facts


def _layout(n_train: int, n_val: int, n_test: int, n_val_sub: int) -> dict[str, dict[str, int]]:
    val = {"no_sub": n_val, **({"sphere": n_val_sub, "vort": n_val_sub} if n_val_sub else {})}
    return {
        "train": {"no_sub": n_train},
        "val": val,
        "test": {"no_sub": n_test, "sphere": n_test, "vort": n_test},
    }


def _param_fields() -> list[str]:
    """LensParams' fields in parameters.csv (the per-subhalo ones are in subhalos.csv)."""
    skip = (*SUBHALO_FIELDS, "realism")  # realism's fields: `_realism_columns`
    return [f.name for f in dataclasses.fields(LensParams) if f.name not in skip]


def _realism_columns(spec: DatasetSpec) -> list[str]:
    """parameters.csv's columns of Model R's departures (none for Model A and B)."""
    return [] if spec.realism is None else list(realism.SCALAR_FIELDS)


def _init_worker() -> None:
    """A simulation worker renders on one torch thread, so W workers use W cores."""
    torch.set_num_threads(1)


@contextmanager
def _pool(workers: int) -> Iterator[multiprocessing.pool.Pool]:
    """`workers` spawned processes (safe after torch imports), each on one torch thread.

    They start with OMP_WAIT_POLICY=PASSIVE (unless set): the OpenMP runtime reads it once,
    when torch loads, which in a spawned worker happens before any of our code runs there;
    idle OpenMP threads then sleep instead of spinning on the cores the other workers need.
    This process's environment is restored when the pool closes.
    """
    before = os.environ.get("OMP_WAIT_POLICY")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        context = multiprocessing.get_context("spawn")
        with context.Pool(workers, initializer=_init_worker) as pool:
            yield pool
    finally:
        if before is None:
            os.environ.pop("OMP_WAIT_POLICY", None)


def _map(tasks: list[_Task], workers: int) -> Iterator[tuple[np.ndarray, list[Simulated]]]:
    """Run the tasks in order, here for one worker, else in a pool of `workers` processes."""
    if workers <= 1 or len(tasks) <= 1:
        yield from map(_run_task, tasks)
        return
    with _pool(min(workers, len(tasks))) as pool:
        yield from pool.imap(_run_task, tasks)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def simulate_dataset(
    name: str,
    out: Path,
    n_train: int,
    n_val: int,
    n_test: int,
    seed: int = 0,
    workers: int | None = None,
    overwrite: bool = False,
    config: SimConfig | None = None,
    progress: bool = True,
    n_val_sub: int = 0,
    subhalo_mass_fraction: float | None = None,
    substructure: str = "stated",
    departure: str | None = None,
    parameter_grid: int | None = None,
    shared_grid: bool = False,
) -> Path:
    """Simulate dataset `name` into folder `out` atomically and return `out`.

    `departure` (DEPARTURES) puts one of Model R's departures on top of `name` (the mismatch
    suite: "model_a" with "wide_psf" is dataset "model_a+wide_psf").

    `n_val_sub` sphere and as many vort images join the validation split (a labelled split to
    choose thresholds and models on, never the test split). `substructure` (SUBSTRUCTURES)
    sets the subhalos' masses (module docstring); for "stated", `subhalo_mass_fraction`
    replaces the dataset's 1% (all subhalos together, as a fraction of the lens mass).
    Raises OutputExistsError if `out` exists and not `overwrite`; DatasetError for an
    unknown name or substructure, or a mass fraction with "study". `workers` defaults to
    os.cpu_count(); the files do not depend on it.

    `parameter_grid` K draws Model A's (or B's) uniform parameters as the study's sampler
    did (`training.lensing.parameter_grid`): K values per parameter per class, each class its
    own unless `shared_grid`. DatasetError for Model R or a departure (their draws are not
    the study's).
    """
    spec = get_spec(dataset_name(name, departure), substructure, subhalo_mass_fraction)
    if parameter_grid is not None:
        if spec.realism is not None:
            raise DatasetError(
                f"--parameter-grid is the study's sampler for model_a and model_b, not {spec.name}"
            )
        grid = draw_grid(seed, parameter_grid, CLASS_CODES, shared_grid)
        spec = dataclasses.replace(spec, grid=grid)
    elif shared_grid:
        raise DatasetError("--shared-grid needs --parameter-grid")
    name = spec.name
    config = config or SimConfig()
    counts = {"n_train": n_train, "n_val": n_val, "n_test": n_test, "n_val_sub": n_val_sub}
    for label, count in counts.items():
        if count < 0:
            raise ValueError(f"{label} must be >= 0, got {count}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    workers = workers or os.cpu_count() or 1
    out = Path(out)
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out} exists; pass --overwrite to replace it")
    layout = _layout(n_train, n_val, n_test, n_val_sub)
    tasks = [
        _Task(spec, config, seed, split, cls, start, min(start + CHUNK, count))
        for split, classes in layout.items()
        for cls, count in classes.items()
        for start in range(0, count, CHUNK)
    ]
    with atomic_directory(out, overwrite=overwrite, shared=True) as tmp:
        n = config.image_size
        arrays = {}
        for split, classes in layout.items():
            (tmp / split).mkdir()
            for cls, count in classes.items():
                path = tmp / split / f"{cls}.npy"
                if count == 0:  # a zero-length file cannot be memory-mapped
                    np.save(path, np.empty((0, 1, n, n), dtype=np.float32))
                    continue
                # (count, 1, n, n) on disk: a 25,000-image set never sits in memory
                arrays[split, cls] = open_memmap(
                    path, mode="w+", dtype=np.float32, shape=(count, 1, n, n)
                )
        fields, extra = _param_fields(), _realism_columns(spec)
        total = sum(sum(c.values()) for c in layout.values())
        snr: dict[str, dict[str, list[float]]] = {}
        with (
            (tmp / PARAMETERS_FILE).open("w", newline="") as pf,
            (tmp / SUBHALOS_FILE).open("w", newline="") as sf,
            _optional_writer(tmp / SOURCE_COMPONENTS_FILE, spec.realism is not None) as cf,
            tqdm(total=total, unit="img", desc=f"simulate {name}", disable=not progress) as bar,
        ):
            prows, srows = csv.writer(pf), csv.writer(sf)
            prows.writerow(["split", "class", "index", *fields, *extra, *SNR_COLUMNS])
            if cf is not None:
                cf.writerow(["split", "class", "index", "k", *realism.COMPONENT_FIELDS])
            srows.writerow(["split", "class", "index", *_subhalo_columns(spec.substructure)])
            for task, (images, facts) in zip(tasks, _map(tasks, workers), strict=True):
                arrays[task.split, task.cls][task.start : task.stop] = images
                per_image = snr.setdefault(f"{task.split}/{task.cls}", {"median": [], "peak": []})
                for index, one in enumerate(facts, start=task.start):
                    key = [task.split, task.cls, index]
                    p = one.params
                    prows.writerow(
                        [
                            *key,
                            *(getattr(p, f) for f in fields),
                            *(getattr(p.realism, f) for f in extra),
                            one.snr_median,
                            one.snr_peak,
                        ]
                    )
                    if cf is not None and p.realism is not None:
                        cf.writerows(
                            [*key, k, *component]
                            for k, component in enumerate(p.realism.source_components)
                        )
                    srows.writerows([*key, *row] for row in subhalo_rows(p, spec.substructure))
                    per_image["median"].append(round(one.snr_median, 3))
                    per_image["peak"].append(round(one.snr_peak, 3))
                bar.update(len(images))
        for array in arrays.values():
            array.flush()
        arrays.clear()
        files = {
            f"{split}/{cls}.npy": {
                "shape": [count, 1, n, n],
                "sha256": _sha256(tmp / split / f"{cls}.npy"),
            }
            for split, classes in layout.items()
            for cls, count in classes.items()
        }
        manifest = _manifest(spec, config, seed, layout, files, snr)
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    logger.info("wrote %d images of %s to %s", total, name, out)
    return out


@contextmanager
def _optional_writer(path: Path, wanted: bool) -> Iterator[Any]:
    """A csv.writer on a new file at `path`, or None (and no file) when not `wanted`."""
    if not wanted:
        yield None
        return
    with path.open("w", newline="") as f:
        yield csv.writer(f)


def _subhalo_columns(substructure: str) -> list[str]:
    """subhalos.csv's columns after (split, class, index)."""
    return ["k", "x", "y", *(["theta_sub", "mass_msun"] if substructure == "study" else [])]


def _manifest(
    spec: DatasetSpec,
    config: SimConfig,
    seed: int,
    layout: dict[str, dict[str, int]],
    files: dict[str, Any],
    snr: dict[str, dict[str, list[float]]],
) -> dict[str, Any]:
    return {
        "format_version": MANIFEST_FORMAT,
        "dataset": spec.name,
        "seed": seed,
        "counts": layout,
        "simulator": {
            "name": SIMULATOR_NAME,
            "version": SIMULATOR_VERSION,
            **{
                package: metadata.version(package)
                for package in ("numpy", "scipy", "torch", "astropy")
            },
        },
        "image": {
            "size": config.image_size,
            "pixel_scale_arcsec": config.pixel_scale,
            "dtype": "float32",
            "layout": "(N, 1, H, W); x along W, y along H; per-image min-max scaled to [0, 1]",
        },
        "config": dataclasses.asdict(config),
        "instrument": _instrument_record(spec, config),
        "ranges": _ranges(spec),
        **_realism_record(spec),
        "substructure": spec.substructure,
        # stated: all subhalos together, of the lens mass; study: drawn per image (null)
        "subhalo_mass_fraction": (
            spec.subhalo_mass_fraction if spec.substructure == "stated" else None
        ),
        **({"study_substructure": _study_record(spec)} if spec.substructure == "study" else {}),
        **(
            {"parameter_grid": grid_record(spec.grid, grid_ranges(spec))}
            if spec.grid is not None
            else {}
        ),
        "snr_definition": SNR_DEFINITION,
        "snr": {
            "summary": snr_summary(snr),
            "per_image": snr,
            "note": f"per image also in {PARAMETERS_FILE} ({', '.join(SNR_COLUMNS)})",
        },
        "cosmology": cosmology.COSMOLOGY_NAME,
        "seeding": (
            "image (split, class, index): numpy SeedSequence(seed, spawn_key=(split code, "
            "class code, index)).spawn(2) -> parameter and noise generators"
        ),
        "split_codes": SPLIT_CODES,
        "class_codes": CLASS_CODES,
        "files": files,
        "parameters": PARAMETERS_FILE,
        "subhalos": SUBHALOS_FILE,
    }


def _ranges(spec: DatasetSpec) -> dict[str, Any]:
    """The spec as JSON; Model A's and B's without the realism key (as before it existed),
    nobody's with the grid (the manifest's parameter_grid)."""
    ranges = dataclasses.asdict(spec)
    del ranges["grid"]  # recorded as parameter_grid when there is one
    if spec.realism is None:
        del ranges["realism"]
    return ranges


def _instrument_record(spec: DatasetSpec, config: SimConfig) -> dict[str, Any]:
    """The manifest's instrument: the config's; one fixed Gaussian PSF of another width
    (wide_psf); or, when each image has its own PSF (Model R), "per-image" with the nominal
    PSF (the median FWHM of the draws) and where each image's is recorded."""
    psf = None if spec.realism is None else spec.realism.psf
    if psf is None:
        return config.instrument().record()
    if psf.fixed_gaussian:
        sigma = config.psf_sigma * psf.fwhm_factor[0]
        return dataclasses.replace(config.instrument(), psf_sigma=sigma).record()
    nominal = config.instrument().record()
    fwhm = nominal["psf_fwhm_arcsec"]
    return {
        **nominal,
        "psf": PER_IMAGE_PSF,
        "psf_kinds": {"gaussian": 1.0 - psf.moffat, "moffat": psf.moffat},
        "psf_fwhm_range_arcsec": [fwhm * psf.fwhm_factor[0], fwhm * psf.fwhm_factor[1]],
        "moffat_beta_range": list(psf.beta),
        "per_image": f"{PARAMETERS_FILE} columns psf, psf_fwhm (arcsec), psf_beta (Moffat)",
        "note": "psf_sigma_arcsec and psf_fwhm_arcsec are the nominal PSF's, the draws' median",
    }


def _realism_record(spec: DatasetSpec) -> dict[str, Any]:
    """The manifest's record of Model R's departures (nothing for Model A and B)."""
    if spec.realism is None:
        return {}
    return {
        "departures": {
            "parameters": f"{PARAMETERS_FILE} columns {', '.join(realism.SCALAR_FIELDS)}",
            "source_components": (
                f"{SOURCE_COMPONENTS_FILE}: one row per extra source component (k, "
                f"{', '.join(realism.COMPONENT_FIELDS)}; arcsec, radians, counts/s/pixel at "
                "R_eff), besides the host Sersic of the source_* columns"
            ),
            "galaxy_source": "procedural (docs/model_r.md): no real galaxy images are used",
            "draws": "after Model A's from the same parameter stream: paired with Model A",
        },
        "source_components": SOURCE_COMPONENTS_FILE,
    }


def _study_record(spec: DatasetSpec) -> dict[str, Any]:
    """The manifest's record of the study substructure's draws."""
    k = spec.n_subhalos
    return {
        **dataclasses.asdict(STUDY),
        "sphere_mass_fraction_mean": k * STUDY.mean_mass() / STUDY.lens_mass,  # analytic
        "sphere": (
            f"{k} masses m_i ~ dN/dm ~ m^mass_slope on mass_range (Msun), Einstein radius "
            "theta_E * sqrt(m_i / lens_mass) each, at the stated positions"
        ),
        "vort": (
            f"a fraction U[vortex_mass_fraction] of the lens shared by {k} equal masses, "
            "evenly on a line U[vortex_length] arcsec long (scaled by theta_E / 1.2)"
        ),
        "per_subhalo": f"{SUBHALOS_FILE} columns theta_sub (arcsec) and mass_msun",
    }


def snr_summary(snr: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, float]]:
    """Quantiles (min, 10%, median, 90%, max) of every image's median and peak arc S/N."""
    out = {}
    for stat in ("median", "peak"):
        values = np.array([v for part in snr.values() for v in part[stat]], dtype=np.float64)
        if len(values) == 0:
            continue
        q = np.quantile(values, [0.0, 0.1, 0.5, 0.9, 1.0])
        out[stat] = dict(zip(("min", "p10", "median", "p90", "max"), map(float, q), strict=True))
    return out


def read_parameters(directory: Path, split: str, cls: str, index: int) -> LensParams:
    """The parameters of one image, from DIR/parameters.csv and DIR/subhalos.csv."""
    directory = Path(directory)
    key = [split, cls, str(index)]
    row = None
    with (directory / PARAMETERS_FILE).open(newline="") as f:
        for r in csv.DictReader(f):
            if [r["split"], r["class"], r["index"]] == key:
                row = r
                break
    if row is None:
        raise DatasetError(f"{directory / PARAMETERS_FILE}: no image {split}/{cls}[{index}]")
    image = (cls, str(index))
    subhalos = _rows_by_image(directory / SUBHALOS_FILE, split).get(image, [])
    components = _rows_by_image(
        directory / SOURCE_COMPONENTS_FILE, split, required=_is_realistic(row)
    ).get(image, [])
    return _params_from_rows(row, subhalos, components)


def read_rows(directory: Path, split: str, n: int) -> dict[tuple[str, int], dict[str, str]]:
    """parameters.csv rows of the first n images of each class of `split`, as text, keyed by
    (class, index)."""
    with (Path(directory) / PARAMETERS_FILE).open(newline="") as f:
        return {
            (row["class"], int(row["index"])): row
            for row in csv.DictReader(f)
            if row["split"] == split and int(row["index"]) < n
        }


def read_split_parameters(directory: Path, split: str) -> dict[tuple[str, int], LensParams]:
    """The parameters of every image of one split, keyed by (class, index): each CSV read once
    (`read_parameters` reads them once per image)."""
    directory = Path(directory)
    with (directory / PARAMETERS_FILE).open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == split]
    subhalos = _rows_by_image(directory / SUBHALOS_FILE, split)
    components = _rows_by_image(
        directory / SOURCE_COMPONENTS_FILE, split, required=any(map(_is_realistic, rows))
    )
    return {
        (r["class"], int(r["index"])): _params_from_rows(
            r,
            subhalos.get((r["class"], r["index"]), []),
            components.get((r["class"], r["index"]), []),
        )
        for r in rows
    }


def _rows_by_image(
    path: Path, split: str, required: bool = True
) -> dict[tuple[str, str], list[dict[str, str]]]:
    """A per-image CSV's rows of one split, grouped by (class, index); {} for a file that is
    not `required` and absent (source_components.csv: Model R and the departures only)."""
    grouped: dict[tuple[str, str], list[dict[str, str]]] = {}
    if not required and not path.is_file():
        return grouped
    with path.open(newline="") as f:
        for r in csv.DictReader(f):
            if r["split"] == split:
                grouped.setdefault((r["class"], r["index"]), []).append(r)
    return grouped


def _params_from_rows(
    row: dict[str, str], subhalo_rows: list[dict[str, str]], component_rows: list[dict[str, str]]
) -> LensParams:
    """One image's LensParams from its parameters.csv row, its subhalos.csv rows and its
    source_components.csv rows (Model R and the departures)."""
    values: dict[str, Any] = {name: float(row[name]) for name in _param_fields()}
    subhalos = sorted(
        (int(r["k"]), float(r["x"]), float(r["y"]), _float_or_none(r.get("theta_sub")))
        for r in subhalo_rows
    )
    values["subhalos"] = tuple((x, y) for _, x, y, _ in subhalos)
    thetas = tuple(theta for *_, theta in subhalos if theta is not None)
    if len(set(thetas)) > 1:  # unequal masses (study spheres); equal ones are theta_sub
        values["subhalo_theta"] = thetas
    if _is_realistic(row):
        values["realism"] = _read_realism(row, component_rows)
    return LensParams(**values)


def _is_realistic(row: dict[str, str]) -> bool:
    """Whether a parameters.csv row has departures from Model A (Model R, the mismatch suite)."""
    return realism.SCALAR_FIELDS[0] in row


def _read_realism(row: dict[str, str], component_rows: list[dict[str, str]]) -> realism.RealParams:
    """One image's departures from its parameters.csv row and source_components.csv rows."""
    scalars: dict[str, Any] = {
        name: row[name] if name in realism.TEXT_FIELDS else float(row[name])
        for name in realism.SCALAR_FIELDS
    }
    components = sorted(
        (int(r["k"]), tuple(float(r[name]) for name in realism.COMPONENT_FIELDS))
        for r in component_rows
    )
    return realism.RealParams(**scalars, source_components=tuple(c for _, c in components))


def _float_or_none(text: str | None) -> float | None:
    return None if text is None else float(text)


def regenerate_image(directory: Path, split: str, cls: str, index: int) -> np.ndarray:
    """Re-render image `index` of DIR/split/cls.npy from the manifest and CSVs: (n, n) float32."""
    manifest = read_manifest(directory)
    if manifest["simulator"]["version"] != SIMULATOR_VERSION:
        logger.warning(
            "%s was made by simulator %s, this is %s: images may differ",
            directory,
            manifest["simulator"]["version"],
            SIMULATOR_VERSION,
        )
    config = SimConfig(**manifest["config"])
    params = read_parameters(directory, split, cls, index)
    _, noise_rng = image_rngs(int(manifest["seed"]), split, cls, index)
    return render_image(params, config, noise_rng)

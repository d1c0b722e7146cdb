"""Simulated Model A / Model B datasets: parameter draws, parallel rendering, atomic writing.

Layout written by `simulate_dataset` (N = images, each (1, n, n) float32 in [0, 1]):
    DIR/train/no_sub.npy  DIR/val/no_sub.npy  DIR/test/{no_sub,sphere,vort}.npy
    DIR/manifest.json     DIR/parameters.csv  DIR/subhalos.csv
`parameters.csv` holds one row per image (split, class, index and every `LensParams`
field); `subhalos.csv` one row per subhalo (split, class, index, k, x, y). With the seed they
regenerate any image exactly (`regenerate_image`).

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
(sphere, vort) are 25 point masses of theta_E * sqrt(f / 25) each (a fraction f of the lens
mass, 1% unless `subhalo_mass_fraction` says otherwise), sphere at radius U[0, 1"] from the
centre, vort evenly along a 1" line centred within 0.5" of the Einstein ring at a random
azimuth and orientation; lengths in " are for theta_E = 1.2" and scale with theta_E.
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
from training.lensing import cosmology
from training.lensing.noise import SNR_DEFINITION, exposure_for_snr
from training.lensing.render import (
    LensParams,
    SimConfig,
    observe,
    render_components,
    render_image,
)

logger = logging.getLogger(__name__)

SIMULATOR_NAME = "deeplense-lensing"
SIMULATOR_VERSION = "2.1.0"  # 2.1: rendered by the torch renderer (2.0: NumPy)
MANIFEST_FORMAT = 2  # 2: the study's photometry, per-image exposure and S/N
SPLITS = ("train", "val", "test")
CLASSES = ("no_sub", "sphere", "vort")
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
CLASS_CODES = {"no_sub": 0, "sphere": 1, "vort": 2}
PARAMETERS_FILE = "parameters.csv"
SUBHALOS_FILE = "subhalos.csv"
MANIFEST_FILE = "manifest.json"
CHUNK = 32  # images per task sent to a worker process
SNR_COLUMNS = ("snr_median", "snr_peak")  # measured per image, after the params in the CSV


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

    def theta_sub(self, theta_e: float) -> float:
        """Einstein radius of one subhalo: theta_E * sqrt(mass fraction / count)."""
        return theta_e * math.sqrt(self.subhalo_mass_fraction / self.n_subhalos)


DATASETS: dict[str, DatasetSpec] = {
    "model_a": DatasetSpec(name="model_a", z_lens=(0.5, 0.5), z_source=(1.0, 1.0)),
    "model_b": DatasetSpec(
        name="model_b", z_lens=(0.3, 0.7), z_source=(0.9, 1.5), snr=(10.0, 30.0)
    ),
}


def get_spec(name: str) -> DatasetSpec:
    """The DatasetSpec called `name`; DatasetError listing the valid names otherwise."""
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; valid: {', '.join(sorted(DATASETS))}")
    return DATASETS[name]


def image_rngs(
    seed: int, split: str, cls: str, index: int
) -> tuple[np.random.Generator, np.random.Generator]:
    """(parameter generator, noise generator) of one image, independent of all others."""
    root = np.random.SeedSequence(seed, spawn_key=(SPLIT_CODES[split], CLASS_CODES[cls], index))
    params_seq, noise_seq = root.spawn(2)
    return np.random.default_rng(params_seq), np.random.default_rng(noise_seq)


def draw_params(
    spec: DatasetSpec, cls: str, rng: np.random.Generator, exposure: float = 300.0
) -> LensParams:
    """Draw one image's parameters for class `cls` (no_sub, sphere or vort).

    `exposure` is the base exposure (s); with `spec.snr` the drawn target is recorded in
    `snr_target` and `simulate_image` scales the exposure to reach it.
    """
    if cls not in CLASS_CODES:
        raise ValueError(f"unknown class {cls!r}; valid: {', '.join(CLASSES)}")
    z_lens = float(rng.uniform(*spec.z_lens))
    z_source = float(rng.uniform(*spec.z_source))
    theta_e = cosmology.einstein_radius(z_lens, z_source, spec.theta_e_ref, spec.z_ref)
    scale = theta_e / spec.theta_e_ref  # lengths tied to the ring scale with it
    gamma = float(rng.uniform(*spec.shear))
    shear_angle = float(rng.uniform(0.0, math.pi))
    radius = float(rng.uniform(*spec.source_radius)) * scale
    azimuth = float(rng.uniform(0.0, 2.0 * math.pi))
    params = LensParams(
        theta_e=theta_e,
        gamma1=gamma * math.cos(2.0 * shear_angle),
        gamma2=gamma * math.sin(2.0 * shear_angle),
        lens_r_eff=cosmology.angular_size(spec.lens_r_eff, z_lens, spec.z_ref[0]),
        lens_n=spec.lens_n,
        lens_q=float(rng.uniform(*spec.lens_q)),
        lens_phi=float(rng.uniform(0.0, math.pi)),
        source_x=radius * math.cos(azimuth),
        source_y=radius * math.sin(azimuth),
        source_r_eff=cosmology.angular_size(spec.source_r_eff, z_source, spec.z_ref[1]),
        source_n=spec.source_n,
        source_q=float(rng.uniform(*spec.source_q)),
        source_phi=float(rng.uniform(0.0, math.pi)),
        lens_intensity=spec.lens_intensity,
        source_intensity=float(rng.uniform(*spec.source_intensity)),
        exposure=exposure,
        snr_target=0.0 if spec.snr is None else float(rng.uniform(*spec.snr)),
        z_lens=z_lens,
        z_source=z_source,
    )
    if cls == "no_sub":
        return params
    k = spec.n_subhalos
    if cls == "sphere":
        r = rng.uniform(*spec.sphere_radius, size=k) * scale
        a = rng.uniform(0.0, 2.0 * math.pi, size=k)
        xy = np.stack([r * np.cos(a), r * np.sin(a)], axis=1)  # (K, 2)
    else:  # vort: a line of k masses, centred near the Einstein ring
        centre_r = theta_e + float(rng.uniform(*spec.vortex_ring_offset)) * scale
        centre_a = float(rng.uniform(0.0, 2.0 * math.pi))
        orientation = float(rng.uniform(0.0, math.pi))
        t = np.linspace(-0.5, 0.5, k) * spec.vortex_length * scale  # (K,) along the line
        xy = np.stack(
            [
                centre_r * math.cos(centre_a) + t * math.cos(orientation),
                centre_r * math.sin(centre_a) + t * math.sin(orientation),
            ],
            axis=1,
        )
    subhalos = tuple((float(x), float(y)) for x, y in xy)
    return dataclasses.replace(params, theta_sub=spec.theta_sub(theta_e), subhalos=subhalos)


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
    params = draw_params(spec, cls, params_rng, config.exposure)
    components = render_components(params, config)
    median, peak = components.snr(params.exposure, config.sky)
    if params.snr_target > 0:
        exposure = exposure_for_snr(median, params.snr_target, params.exposure)
        scale = (exposure / params.exposure) ** 0.5  # every pixel's S/N grows as sqrt(t)
        params = dataclasses.replace(params, exposure=exposure)
        median, peak = median * scale, peak * scale
    image = observe(components, params.exposure, config, noise_rng)
    return Simulated(image=image, params=params, snr_median=median, snr_peak=peak)


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
    return [f.name for f in dataclasses.fields(LensParams) if f.name != "subhalos"]


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
) -> Path:
    """Simulate dataset `name` into folder `out` atomically and return `out`.

    `n_val_sub` sphere and as many vort images join the validation split (a labelled split to
    choose thresholds and models on, never the test split). `subhalo_mass_fraction` replaces
    the dataset's 1% (all subhalos together, as a fraction of the lens mass).
    Raises OutputExistsError if `out` exists and not `overwrite`; DatasetError for an
    unknown name. `workers` defaults to os.cpu_count(); the files do not depend on it.
    """
    spec = get_spec(name)
    if subhalo_mass_fraction is not None:
        if not 0 < subhalo_mass_fraction < 1:
            raise ValueError(
                f"subhalo_mass_fraction must lie in (0, 1), got {subhalo_mass_fraction}"
            )
        spec = dataclasses.replace(spec, subhalo_mass_fraction=subhalo_mass_fraction)
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
        fields = _param_fields()
        total = sum(sum(c.values()) for c in layout.values())
        snr: dict[str, dict[str, list[float]]] = {}
        with (
            (tmp / PARAMETERS_FILE).open("w", newline="") as pf,
            (tmp / SUBHALOS_FILE).open("w", newline="") as sf,
            tqdm(total=total, unit="img", desc=f"simulate {name}", disable=not progress) as bar,
        ):
            prows, srows = csv.writer(pf), csv.writer(sf)
            prows.writerow(["split", "class", "index", *fields, *SNR_COLUMNS])
            srows.writerow(["split", "class", "index", "k", "x", "y"])
            for task, (images, facts) in zip(tasks, _map(tasks, workers), strict=True):
                arrays[task.split, task.cls][task.start : task.stop] = images
                per_image = snr.setdefault(f"{task.split}/{task.cls}", {"median": [], "peak": []})
                for index, one in enumerate(facts, start=task.start):
                    key = [task.split, task.cls, index]
                    p = one.params
                    prows.writerow(
                        [*key, *(getattr(p, f) for f in fields), one.snr_median, one.snr_peak]
                    )
                    srows.writerows([*key, k, x, y] for k, (x, y) in enumerate(p.subhalos))
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
        "ranges": dataclasses.asdict(spec),
        "subhalo_mass_fraction": spec.subhalo_mass_fraction,
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


def read_manifest(directory: Path) -> dict[str, Any]:
    """Read DIR/manifest.json; DatasetError naming the file if it is missing or malformed."""
    path = Path(directory) / MANIFEST_FILE
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read the manifest ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format_version") != MANIFEST_FORMAT:
        raise DatasetError(f"{path}: not a simulator manifest of format {MANIFEST_FORMAT}")
    return manifest


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
    values: dict[str, Any] = {name: float(row[name]) for name in _param_fields()}
    with (directory / SUBHALOS_FILE).open(newline="") as f:
        subhalos = [
            (int(r["k"]), float(r["x"]), float(r["y"]))
            for r in csv.DictReader(f)
            if [r["split"], r["class"], r["index"]] == key
        ]
    values["subhalos"] = tuple((x, y) for _, x, y in sorted(subhalos))
    return LensParams(**values)


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

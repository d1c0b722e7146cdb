"""Planning a training run: options, model names and arguments, data; everything that can
be refused is refused here, before any training starts."""

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

import models
from deeplense.errors import DatasetError, OutputExistsError
from deeplense.instrument import STUDY_INSTRUMENT, Instrument
from deeplense.vocabulary import NORMAL, dataset_instrument
from models.registry import model_class
from models.storage import check_weights_dtype
from training.datasets import load_split
from training.steps import check_precision

log = logging.getLogger(__name__)

# Model config fields that describe the data's instrument, set from it (arch args still win):
# field -> key of Instrument.record().
INSTRUMENT_FIELDS = {"pixel_scale": "pixel_scale_arcsec", "psf_sigma": "psf_sigma_arcsec"}


@dataclass
class FitOptions:
    """Everything `python -m training fit` takes (defaults: REFERENCE.md's training setup)."""

    data: Path
    out: Path
    model: str = "all"  # a registered name or "all"
    epochs: int = 50
    batch_size: int = 100  # per process
    device: str = "auto"  # auto, cuda or cpu
    seed: int = 0
    lr: float = 2e-3  # peak of the one-cycle schedule (the AAE uses its config's rates)
    weight_decay: float = 1e-5
    fpr: float = 0.05  # calibration: target false-positive rate on val no_sub
    resume: bool = False
    overwrite: bool = False
    num_workers: int | None = None  # None: 0 on CPU, up to 4 per process on CUDA
    max_train: int | None = None  # use only the first N training images
    precision: str = "auto"  # training.steps.PRECISIONS: auto, fp32, bf16
    channels_last: bool = True  # conv weights and batches in NHWC order (measured faster)
    weights_dtype: str = "float32"  # models.storage: "float16" halves the checkpoint
    arch_args: dict[str, Any] = field(default_factory=dict)  # model config overrides
    tiny: bool = False  # start from each model's Config.tiny() (test-sized layers)
    # The data's instrument when the dataset has no manifest that records it (real images):
    # arcsec per pixel and the Gaussian PSF's sigma in arcsec. None: the manifest's, else the
    # study's (0.05", 0.1").
    pixel_scale: float | None = None
    psf_sigma: float | None = None


@dataclass
class FitResult:
    """One trained model: its checkpoint folder (None on ranks other than 0) and history."""

    name: str
    checkpoint: Path | None
    history: list[dict[str, float]]


def model_names(spec: str) -> list[str]:
    """'all' -> every registered model; otherwise the one name (UnknownModelError if unknown)."""
    if spec == "all":
        return models.list_models()
    model_class(spec)
    return [spec]


def config_fields(name: str) -> set[str]:
    """Names of the config arguments of a registered model."""
    return {f.name for f in dataclasses.fields(model_class(name).Config)}


def arguments_for(
    name: str,
    arch_args: dict[str, Any],
    image_size: int,
    tiny: bool = False,
    instrument: Instrument = STUDY_INSTRUMENT,
) -> dict[str, Any]:
    """The constructor arguments of `name`: its tiny config's when `tiny`, the data's
    instrument for a config that declares INSTRUMENT_FIELDS (a renderer's grid and PSF),
    overridden by the arch args it accepts, with image_size from the data."""
    accepted = config_fields(name)
    chosen = dataclasses.asdict(model_class(name).Config.tiny()) if tiny else {}
    record = instrument.record()
    chosen.update({f: record[key] for f, key in INSTRUMENT_FIELDS.items() if f in accepted})
    chosen.update({k: v for k, v in arch_args.items() if k in accepted})
    chosen["image_size"] = image_size
    return chosen


def resolve_instrument(options: FitOptions) -> Instrument:
    """The training data's instrument: the manifest's; the flags' for data without one (a
    flag that contradicts the manifest is refused); else the study's, with a warning."""
    recorded = dataset_instrument(Path(options.data))
    if recorded is not None:
        known = {"pixel-scale": recorded.pixel_scale, "psf-sigma": recorded.psf_sigma}
        given = {"pixel-scale": options.pixel_scale, "psf-sigma": options.psf_sigma}
        for flag, value in given.items():
            if value is not None and not math.isclose(value, known[flag] or 0.0, rel_tol=1e-9):
                raise ValueError(
                    f"--{flag} {value:g} contradicts the dataset's manifest ({known[flag]:g} "
                    "arcsec); leave it out for a simulated dataset"
                )
        return recorded
    if options.pixel_scale is None or options.psf_sigma is None:
        log.warning(
            "%s: no manifest records the instrument and --pixel-scale / --psf-sigma are not "
            'both given: the study\'s 0.05" pixels and 0.1" PSF sigma fill what is missing',
            options.data,
        )
    return Instrument(
        pixel_scale=options.pixel_scale or STUDY_INSTRUMENT.pixel_scale,
        psf_sigma=options.psf_sigma or STUDY_INSTRUMENT.psf_sigma,
    )


def check_arch_args(names: list[str], arch_args: dict[str, Any]) -> None:
    """Refuse arch args no registered model knows (ValueError); log those `names` ignore."""
    known = set().union(*(config_fields(n) for n in models.list_models()))
    unknown = sorted(set(arch_args) - known)
    if unknown:
        raise ValueError(
            f"unknown arch args {', '.join(unknown)}; valid: {', '.join(sorted(known))}"
        )
    used = set().union(*(config_fields(n) for n in names))
    ignored = sorted(set(arch_args) - used)
    if ignored:
        log.info("arch args %s do not apply to %s: ignored", ", ".join(ignored), ", ".join(names))
    size = arch_args.get("image_size")
    if size is not None and (not isinstance(size, int) or size < 1):
        raise ValueError(f"image_size must be a positive integer, got {size!r}")


@dataclass
class Plan:
    """Validated inputs of a run: model names, their arguments, data, outputs."""

    options: FitOptions
    names: list[str]
    arguments: dict[str, dict[str, Any]]
    train: np.ndarray  # (N, 1, S, S) float32 no_sub training images
    val: np.ndarray  # (M, 1, S, S) float32 no_sub validation images
    instrument: Instrument  # the images' pixel scale and PSF (card, scores, renderer)


def prepare(options: FitOptions) -> Plan:
    """Check names, arch args, outputs and data, and build each model's config once.

    Raises UnknownModelError, OutputExistsError, DatasetError, or ValueError for arch
    arguments a model refuses.
    """
    names = model_names(options.model)
    check_arch_args(names, options.arch_args)
    check_precision(options.precision)  # refused before any data is read
    check_weights_dtype(options.weights_dtype)
    for name in names:
        target = Path(options.out) / name
        if target.exists() and not options.overwrite:
            raise OutputExistsError(f"{target} exists; pass --overwrite to replace it")
    size = options.arch_args.get("image_size")
    train = load_split(options.data, "train", image_size=size, classes=[NORMAL])[NORMAL]
    if options.max_train is not None:
        train = train[: options.max_train]
    side = int(train.shape[-1])
    val = load_split(options.data, "val", image_size=side, classes=[NORMAL])[NORMAL]
    if len(train) < 2:
        raise DatasetError(f"{Path(options.data) / 'train'}: need at least 2 no_sub images")
    if len(val) < 2:
        raise DatasetError(f"{Path(options.data) / 'val'}: need at least 2 no_sub images")
    instrument = resolve_instrument(options)
    arguments = {
        n: arguments_for(n, options.arch_args, side, options.tiny, instrument) for n in names
    }
    for name, args in arguments.items():
        with torch.device("meta"):  # build each model without memory: bad values raise here
            models.create_model(name, **args)
    return Plan(
        options=options, names=names, arguments=arguments, train=train, val=val,
        instrument=instrument,
    )  # fmt: skip

"""Checkpoints: a folder with `model.safetensors` and `config.json`, validated on load.

No pickle anywhere: weights are safetensors, metadata is JSON checked by pydantic. A bad
checkpoint raises `CheckpointError` whose message names the offending file.
"""

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from deeplense.atomic import atomic_directory
from deeplense.calibration import Calibration
from deeplense.errors import CheckpointError, UnknownModelError
from deeplense.instrument import (
    DEFAULT_PSF_SIGMA_PIXELS,
    STUDY_PIXEL_SCALE_ARCSEC,
    STUDY_PSF_SIGMA_ARCSEC,
)
from deeplense.scores import SCORES
from models.base import AnomalyModel, is_training_only
from models.registry import create_model
from models.storage import WeightsDtype, storage_state

FORMAT_VERSION = 2  # 2: one calibration per named score and a default score
READABLE_FORMATS = (1, 2)  # 1 is read as version 2 with its one (MSE) calibration
CONV_DECODER_ARCHITECTURES = ("aae", "vae", "dcae")  # use models.layers.ConvDecoder
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class InputSpec(_Strict):
    """What the model expects: one channel, height x width pixels, per-image min-max scaling."""

    channels: Literal[1] = Field(default=1, description="image channels (grayscale)")
    height: int = Field(gt=0, description="input height, pixels")
    width: int = Field(gt=0, description="input width, pixels")
    normalisation: Literal["minmax"] = Field(
        default="minmax", description="per-image scaling to [0, 1]"
    )
    pixel_scale_arcsec: float | None = Field(
        default=STUDY_PIXEL_SCALE_ARCSEC, gt=0, description="arcsec per pixel"
    )
    psf_sigma_arcsec: float | None = Field(
        default=STUDY_PSF_SIGMA_ARCSEC,
        gt=0,
        description="Gaussian PSF sigma of the training data (arcsec)",
    )

    @property
    def psf_sigma_pixels(self) -> float:
        """PSF sigma in input pixels (the noise-aware scores' matched filter); 2 when unknown."""
        if self.psf_sigma_arcsec is None or self.pixel_scale_arcsec is None:
            return DEFAULT_PSF_SIGMA_PIXELS
        return self.psf_sigma_arcsec / self.pixel_scale_arcsec


class TrainingFacts(_Strict):
    """How a checkpoint was made. Every field optional: random-weight test checkpoints have none."""

    dataset: str | None = Field(default=None, description="training dataset's name")
    dataset_manifest_sha256: str | None = Field(
        default=None, description="SHA-256 of the dataset's manifest.json"
    )
    n_train: int | None = Field(default=None, description="training images")
    epochs: int | None = Field(default=None, description="epochs trained")
    batch_size: int | None = Field(default=None, description="images per step, per process")
    seed: int | None = Field(default=None, description="random seed")
    device: str | None = Field(default=None, description="device trained on")
    wall_time_s: float | None = Field(default=None, description="training time, seconds")
    final_losses: dict[str, float] = Field(default_factory=dict, description="last epoch's losses")
    git_commit: str | None = Field(default=None, description="source commit trained from")
    torch_version: str | None = Field(default=None, description="torch trained with")
    budget: str | None = Field(default=None, description="training budget in words")
    warnings: list[str] = Field(
        default_factory=list,
        description="problems found at export, e.g. a collapsed model (one image for every input)",
    )
    extra: dict[str, Any] = Field(default_factory=dict, description="anything else recorded")


class CheckpointConfig(_Strict):
    """Contents of config.json (format 2; a format-1 file is read with its MSE calibration)."""

    format_version: Literal[2] = 2
    architecture: str
    arguments: dict[str, Any]
    input: InputSpec
    calibrations: dict[str, Calibration] = Field(
        default_factory=dict, description="one calibration per named score (deeplense.scores)"
    )
    default_score: str = Field(default="mse", description="the score used when none is named")
    default_score_reason: str | None = None
    training: TrainingFacts = Field(default_factory=TrainingFacts)
    metrics: dict[str, float] = Field(default_factory=dict, description="evaluation metrics")

    @model_validator(mode="before")
    @classmethod
    def _upgrade(cls, raw: Any) -> Any:
        # Format 1 held one calibration of the study's MSE score: it becomes calibrations.mse.
        if isinstance(raw, dict) and raw.get("format_version") == 1:
            raw = dict(raw)
            calibration = raw.pop("calibration", None)
            raw["format_version"] = 2
            raw["calibrations"] = {} if calibration is None else {"mse": calibration}
            raw["default_score"] = "mse"
            raw["default_score_reason"] = "format-1 checkpoint: only the MSE score is calibrated"
            # Format-1 conv decoders were trained without edge replication (models/layers.py).
            if raw.get("architecture") in CONV_DECODER_ARCHITECTURES:
                raw["arguments"] = {"replicate_edges": False, **raw.get("arguments", {})}
        return raw

    @model_validator(mode="after")
    def _known_scores(self) -> "CheckpointConfig":
        unknown = sorted(set(self.calibrations) - set(SCORES))
        if unknown:
            raise ValueError(
                f"calibrations for unknown scores {unknown}; valid: {', '.join(sorted(SCORES))}"
            )
        if self.default_score not in SCORES:
            raise ValueError(
                f"default_score {self.default_score!r} is not a score; "
                f"valid: {', '.join(sorted(SCORES))}"
            )
        if self.calibrations and self.default_score not in self.calibrations:
            raise ValueError(
                f"default_score {self.default_score!r} has no calibration; "
                f"calibrated: {', '.join(sorted(self.calibrations))}"
            )
        return self

    def calibration_for(self, score: str | None = None) -> Calibration | None:
        """The calibration of `score` (default: the default score), or None."""
        return self.calibrations.get(score or self.default_score)

    @property
    def calibration(self) -> Calibration | None:
        """The default score's calibration, or None."""
        return self.calibration_for(None)


@dataclass
class LoadedCheckpoint:
    """A model in eval mode with its validated config and the folder it came from."""

    model: AnomalyModel
    config: CheckpointConfig
    path: Path

    @property
    def name(self) -> str:
        return self.path.name


def config_for(model: AnomalyModel, **fields: Any) -> CheckpointConfig:
    """A CheckpointConfig describing `model` (architecture, arguments, input size)."""
    size = model.image_size
    return CheckpointConfig(
        architecture=model.architecture,
        arguments=model.arguments(),
        input=InputSpec(height=size, width=size),
        **fields,
    )


def save_checkpoint(
    model: AnomalyModel,
    config: CheckpointConfig,
    directory: Path,
    overwrite: bool = False,
    weights_dtype: WeightsDtype = "float32",
) -> Path:
    """Write `directory/` atomically (temp folder, then rename). Refuses an existing folder
    unless `overwrite`, in which case the old one is replaced only once the new one is whole.
    `weights_dtype` "float16" stores the large tensors in half precision (models/storage.py)."""
    directory = Path(directory)
    state = storage_state(model, weights_dtype)
    with atomic_directory(directory, overwrite=overwrite, shared=True) as tmp:
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"architecture": model.architecture})
        (tmp / CONFIG_FILE).write_text(config.model_dump_json(indent=2) + "\n")
    return directory


def write_config(config: CheckpointConfig, directory: Path) -> None:
    """Replace config.json atomically (used to add calibration or metrics to a checkpoint)."""
    path = Path(directory) / CONFIG_FILE
    tmp = path.with_name(f".{CONFIG_FILE}.tmp")
    tmp.write_text(config.model_dump_json(indent=2) + "\n")
    tmp.chmod(0o644)  # world-readable whatever the umask: containers read it as another user
    os.replace(tmp, path)


def read_config(directory: Path) -> CheckpointConfig:
    """Read and validate `directory/config.json`."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: missing (a checkpoint folder needs {CONFIG_FILE})")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from None
    try:
        return CheckpointConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'root'}: {e['msg']}" for e in exc.errors()[:5]
        )
        raise CheckpointError(f"{path}: invalid checkpoint config ({problems})") from None


def load_checkpoint(directory: Path, device: str | torch.device = "cpu") -> LoadedCheckpoint:
    """Load and validate a checkpoint folder; the model is returned in eval mode on `device`."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: checkpoint folder not found")
    config = read_config(directory)
    config_path = directory / CONFIG_FILE
    try:
        model = create_model(config.architecture, **config.arguments)
    except UnknownModelError as exc:
        raise CheckpointError(f"{config_path}: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise CheckpointError(
            f"{config_path}: bad arguments for {config.architecture}: {exc}"
        ) from None
    size = model.image_size
    if (config.input.height, config.input.width) != (size, size):
        raise CheckpointError(
            f"{config_path}: input {config.input.height}x{config.input.width} does not match "
            f"the model's image_size {size}"
        )
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{weights}: missing (a checkpoint folder needs {WEIGHTS_FILE})")
    try:
        state = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(
            f"{weights}: unreadable or truncated safetensors file ({exc})"
        ) from None
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:3])
        raise CheckpointError(
            f"{weights}: weights do not match architecture {config.architecture!r} ({detail})"
        ) from None
    missing = [k for k in result.missing_keys if not is_training_only(model, k)]
    if missing or result.unexpected_keys:
        detail = "; ".join(
            f"{what}: {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}"
            for what, keys in (("missing", missing), ("unexpected", result.unexpected_keys))
            if keys
        )
        raise CheckpointError(
            f"{weights}: weights do not match architecture {config.architecture!r} ({detail})"
        )
    model.to(device).eval()
    return LoadedCheckpoint(model=model, config=config, path=directory)


def find_checkpoints(root: Path) -> dict[str, Path]:
    """Checkpoint folders directly under `root` (those holding config.json), by folder name."""
    root = Path(root)
    if not root.is_dir():
        raise CheckpointError(f"{root}: checkpoint directory not found")
    return {p.name: p for p in sorted(root.iterdir()) if (p / CONFIG_FILE).is_file()}

"""A checkpoint's card: the contents of config.json, validated by pydantic.

What the model is (architecture and arguments), what it expects (input size, normalisation,
instrument), how each score was calibrated, how it was trained and how it scored. Format 1
cards (one MSE calibration) are upgraded when read.
"""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from deeplense.calibration import Calibration
from deeplense.instrument import (
    DEFAULT_PSF_SIGMA_PIXELS,
    STUDY_INSTRUMENT,
    STUDY_PIXEL_SCALE_ARCSEC,
    STUDY_PSF_SIGMA_ARCSEC,
    Instrument,
)
from deeplense.scores import SCORES
from models.base import AnomalyModel

FORMAT_VERSION = 2  # 2: one calibration per named score and a default score
READABLE_FORMATS = (1, 2)  # 1 is read as version 2 with its one (MSE) calibration
CONV_DECODER_ARCHITECTURES = ("aae", "vae", "dcae")  # format 1: decoders without edge padding


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

    def instrument(self) -> Instrument:
        """The instrument of the training data (the study's for a part left unrecorded)."""
        return Instrument(
            pixel_scale=self.pixel_scale_arcsec or STUDY_PIXEL_SCALE_ARCSEC,
            psf_sigma=self.psf_sigma_arcsec or STUDY_PSF_SIGMA_ARCSEC,
        )


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


def config_for(
    model: AnomalyModel, instrument: Instrument = STUDY_INSTRUMENT, **fields: Any
) -> CheckpointConfig:
    """A CheckpointConfig describing `model` (architecture, arguments, input size) trained on
    images of `instrument` (a Gaussian PSF: its sigma is what the card stores)."""
    size = model.image_size
    record = instrument.record()
    return CheckpointConfig(
        architecture=model.architecture,
        arguments=model.arguments(),
        input=InputSpec(
            height=size,
            width=size,
            pixel_scale_arcsec=record["pixel_scale_arcsec"],
            psf_sigma_arcsec=record["psf_sigma_arcsec"],
        ),
        **fields,
    )

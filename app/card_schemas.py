"""The bodies of GET /models: model cards, calibration summaries, the ensemble's card."""

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from models import list_models
from models.card import InputSpec, TrainingFacts


class CalibrationSummary(BaseModel):
    """How one score's threshold was set and what normal scores look like."""

    score: str = Field(description="the score this calibration is for", examples=["chi2_psf"])
    fpr: float = Field(description="target false-positive rate on normal images")
    threshold: float = Field(description="score above which an image is flagged")
    n_images: int = Field(description="normal images the calibration used")
    dataset: str | None = Field(default=None, description="dataset the normals came from")
    youden_threshold: float | None = Field(
        default=None,
        description="threshold maximising TPR - FPR on the labelled validation split, if any",
    )
    validation_auc: float | None = Field(
        default=None, description="ROC-AUC sub vs no_sub on the labelled validation split"
    )
    validation_tpr: float | None = Field(
        default=None,
        description="share of the labelled validation split's substructure images flagged at "
        "the threshold (null for a calibration made before it was recorded)",
    )
    normal_loss_quantiles: dict[str, float] = Field(
        description="quantiles of the normal scores: min, p5, p25, median, p75, p95, p99, max",
        examples=[{"min": 0.0011, "median": 0.0019, "p95": 0.0031, "max": 0.0052}],
    )


class ModelCard(BaseModel):
    """What a loaded checkpoint is, how it was made and how well it did."""

    name: str = Field(description="the name to pass as ?model= (the checkpoint's folder)")
    architecture: str = Field(description="registered architecture", examples=["aae"])
    arguments: dict[str, Any] = Field(description="constructor arguments from config.json")
    parameters: int = Field(description="trainable parameters")
    input: InputSpec
    default_score: str = Field(description="the score used when a request names none")
    default_score_reason: str | None = Field(
        default=None, description="why that score is the default (how it was chosen)"
    )
    scores: list[str] = Field(
        description="every score this model can be scored by (?score= values)"
    )
    calibration: CalibrationSummary | None = Field(
        description="the default score's calibration; null for an uncalibrated checkpoint"
    )
    calibrations: dict[str, CalibrationSummary] = Field(
        default_factory=dict, description="every calibrated score's calibration, by score name"
    )
    metrics: dict[str, float] = Field(
        description="evaluation metrics stored with the checkpoint (e.g. auc, w1_no_sub)"
    )
    training: TrainingFacts
    weights_sha256: str = Field(description="SHA-256 of model.safetensors")
    device: str = Field(description="torch device the model runs on", examples=["cpu"])
    is_default: bool = Field(description="true for the model used when a request names none")

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "name": "aae",
                    "architecture": "aae",
                    "arguments": {"image_size": 150, "latent_dim": 256},
                    "parameters": 2790000,
                    "input": {"channels": 1, "height": 150, "width": 150,
                              "normalisation": "minmax", "pixel_scale_arcsec": 0.05},
                    "calibration": {"fpr": 0.05, "threshold": 0.0031, "n_images": 2500,
                                    "dataset": "model_a", "youden_threshold": 0.0027,
                                    "normal_loss_quantiles": {"median": 0.0019, "p95": 0.0031}},
                    "metrics": {"auc": 0.93, "w1_no_sub": 0.21},
                    "training": {"dataset": "model_a", "epochs": 50, "seed": 0},
                    "weights_sha256": "3f5a...",
                    "device": "cpu",
                    "is_default": True,
                }
            ]
        }
    )  # fmt: skip


class EnsembleCard(BaseModel):
    """How model=ensemble combines its members."""

    members: list[str] = Field(description="the calibrated models averaged")
    default_score: str = Field(description="the score used when a request names none")
    threshold_percentile: float = Field(
        description="flag when the mean member percentile exceeds this: 100 (1 - fpr), fpr "
        "the smallest member fpr"
    )
    rule: str = Field(description="the flag rule in words")


class ModelList(BaseModel):
    """Every loaded model, the default, and the valid ?model= values."""

    default: str = Field(description="model used when a request names none", examples=["aae"])
    default_reason: str = Field(
        description="why it is the default (the best labelled-validation detection rate at "
        "the calibrated threshold, or AUC, or a setting)",
        examples=[
            "best detection rate (share of substructure lenses flagged) of each model's default "
            "score at its threshold for a 0.05 false-positive rate on the labelled validation "
            "split, ties by ROC-AUC, then the study's order (aae chi2 0.061 (AUC 0.5060), ...)"
        ],
    )
    choices: list[str] = Field(
        description="valid ?model= values",
        examples=[[*list_models(), "ensemble"]],  # from the registry, never by hand
    )
    models: list[ModelCard] = Field(description="a card per loaded model")
    ensemble: EnsembleCard | None = Field(description="null when fewer than two calibrated models")

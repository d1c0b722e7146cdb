"""Request and response bodies, with the examples /docs shows."""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from models.checkpoint import InputSpec, TrainingFacts

_PNG = "iVBORw0KGgoAAAANSUhEUgAA...(base64 PNG)"


class MemberScore(BaseModel):
    """One ensemble member's numbers for one image (its own calibration of the score)."""

    model: str = Field(description="the member checkpoint's name", examples=["aae"])
    score: str = Field(description="the score's name (the request's score)", examples=["chi2"])
    anomaly_score: float = Field(description="this member's value of the score")
    reconstruction_loss: float = Field(description="this member's mean squared error")
    w1: float = Field(description="this member's column-sum W1 distance")
    percentile: float = Field(description="anomaly_score's percentile among its normals")
    threshold: float = Field(description="this member's calibrated threshold of the score")
    is_anomaly: bool = Field(description="anomaly_score > threshold")


class ScoreResult(BaseModel):
    """The score of one uploaded file. On a file that could not be read only `filename` and
    `error` are set."""

    filename: str = Field(
        description="the uploaded file's name, as sent", examples=["lens_0001.fits"]
    )
    score: str | None = Field(
        default=None,
        description="Name of the anomaly score used (the request's `score`, else the "
        "checkpoint's default): mse (the study's mean squared error), chi2 (the residual in "
        "units of the per-pixel noise, estimated from the image), chi2_psf (that whitened "
        "residual matched-filtered by the PSF; 1 for a perfect reconstruction of pure noise) "
        "or chi2_psf_light (chi2_psf where the reconstruction has light).",
        examples=["chi2_psf"],
    )
    anomaly_score: float | None = Field(
        default=None,
        description="The value of that score for this image; higher = more anomalous. null for "
        "model=ensemble (each member's is in `members`; the ensemble judges by `percentile`).",
        examples=[1.27],
    )
    reconstruction_loss: float | None = Field(
        default=None,
        description="Mean squared error between the model input (the image min-max scaled to "
        "[0, 1], area-resized to the model's size if needed) and its reconstruction: exactly "
        "the study's score, returned whatever `score` is, and the same number as "
        "`python -m training evaluate` and `score` give. null for model=ensemble.",
        examples=[0.00213],
    )
    threshold: float | None = Field(
        default=None,
        description="Flag threshold used: the checkpoint's calibrated one for this score unless "
        "the request overrode it. In the score's units for a single model, percentile units "
        "(0-100) for the ensemble (see the response's threshold_units). null if the model has "
        "no calibration of this score and none was given.",
        examples=[1.31],
    )
    is_anomaly: bool | None = Field(
        default=None,
        description="Single model: anomaly_score > threshold. Ensemble: percentile > "
        "threshold. null when there is no threshold.",
        examples=[False],
    )
    percentile: float | None = Field(
        default=None,
        description="Percentile (0-100) of anomaly_score among the calibration normals (no_sub "
        "images), interpolated, clipped to [0, 100]. Ensemble: the mean of the members' "
        "percentiles. null without a calibration of this score.",
        examples=[71.4],
    )
    w1: float | None = Field(
        default=None,
        description="1-D Wasserstein distance between the column sums of input and "
        "reconstruction, in summed-pixel units (REFERENCE.md). null for the ensemble.",
        examples=[0.184],
    )
    input: str | None = Field(
        default=None,
        description="The model input as the model saw it (after scaling and resizing), base64 "
        "PNG, 8-bit grayscale, 0 = 0.0 and 255 = 1.0.",
        examples=[_PNG],
    )
    reconstruction: str | None = Field(
        default=None,
        description="The reconstruction, base64 PNG, 8-bit grayscale on the same scale as "
        "`input`. Ensemble: the pixel mean of the members' reconstructions (for display; it "
        "is not what is scored).",
        examples=[_PNG],
    )
    residual: str | None = Field(
        default=None,
        description="The score's residual map as a base64 PNG. mse: |input - reconstruction| "
        "as a heat map (inferno: black = 0, pale yellow = residual_max, pixel units). chi2 and "
        "chi2_psf: the signed residual in units of the noise sigma (for chi2_psf, "
        "matched-filtered by the PSF) on a fixed diverging scale: blue = -residual_max, white "
        "= 0, red = +residual_max sigma, so where in the arcs the excess or deficit sits and "
        "how significant it is can be read off and compared between uploads.",
        examples=[_PNG],
    )
    residual_max: float | None = Field(
        default=None,
        description="The residual value of the top colour: pixel units for mse (the map's "
        "maximum), noise sigmas for chi2 and chi2_psf (fixed, 5).",
        examples=[5.0],
    )
    residual_units: Literal["pixel", "sigma"] | None = Field(
        default=None,
        description="Units of the residual map: pixel ([0, 1] input units) or sigma (noise).",
        examples=["sigma"],
    )
    input_shape: list[int] | None = Field(
        default=None,
        description="[height, width] of the image as read, pixels.",
        examples=[[150, 150]],
    )
    resized: bool | None = Field(
        default=None,
        description="True when the image was area-resized to the model's input size.",
        examples=[False],
    )
    warnings: list[str] = Field(
        default_factory=list,
        description="Notes from reading the file, e.g. a colour image converted to luminance.",
        examples=[[]],
    )
    members: list[MemberScore] | None = Field(
        default=None, description="Ensemble only: each member's own scores."
    )
    error: str | None = Field(
        default=None,
        description="Why this file could not be scored (its other fields are null); null when "
        "it was scored.",
        examples=[None],
    )


class ScoreResponse(BaseModel):
    """Scores of every uploaded file, in upload order."""

    model: str = Field(description="the model that scored (ensemble or a checkpoint name)")
    score: str = Field(description="the anomaly score every result was judged by")
    threshold_units: Literal["score", "percentile"] = Field(
        description="units of each result's threshold: the score's own (single model) or "
        "percentile (ensemble)"
    )
    results: list[ScoreResult] = Field(description="one result per uploaded file, in order")

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "model": "aae",
                    "score": "chi2_psf",
                    "threshold_units": "score",
                    "results": [
                        {
                            "filename": "lens_0001.fits",
                            "score": "chi2_psf",
                            "anomaly_score": 1.27,
                            "reconstruction_loss": 0.00213,
                            "threshold": 1.31,
                            "is_anomaly": False,
                            "percentile": 71.4,
                            "w1": 0.184,
                            "input": _PNG,
                            "reconstruction": _PNG,
                            "residual": _PNG,
                            "residual_max": 5.0,
                            "residual_units": "sigma",
                            "input_shape": [150, 150],
                            "resized": False,
                            "warnings": [],
                            "members": None,
                            "error": None,
                        },
                        {"filename": "notes.txt", "error": "notes.txt: unsupported format"},
                    ],
                }
            ]
        }
    )


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
    scores: list[str] = Field(description="every score this service computes (?score= values)")
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
        description="why it is the default (the best labelled-validation AUC, or a setting)",
        examples=[
            "best ROC-AUC (sub vs no_sub) of each model's default score on the labelled "
            "validation split, ties in the study's order (aae chi2_psf 0.8120, ...)"
        ],
    )
    choices: list[str] = Field(
        description="valid ?model= values", examples=[["aae", "dcae", "rbm", "vae", "ensemble"]]
    )
    models: list[ModelCard] = Field(description="a card per loaded model")
    ensemble: EnsembleCard | None = Field(description="null when fewer than two calibrated models")


class RuntimeInfo(BaseModel):
    """Where the models run: reported by /health and /ready."""

    device: str | None = Field(
        description="torch device serving requests (cpu, cuda:0); null until start-up has "
        "chosen it from `device_setting`",
        examples=["cpu"],
    )
    device_setting: Literal["auto", "cpu", "cuda"] = Field(
        description="DEEPLENSE_DEVICE: auto (CUDA when available), cpu or cuda",
        examples=["auto"],
    )
    torch_version: str = Field(description="the installed torch", examples=["2.13.0+cpu"])
    torch_cuda: str | None = Field(
        description="CUDA version the installed torch was built for; null for a CPU-only build",
        examples=[None],
    )
    cuda_available: bool = Field(description="torch sees a usable CUDA GPU", examples=[False])


class Health(RuntimeInfo):
    """Liveness: the process answers."""

    status: Literal["ok"] = Field(default="ok", description="always ok", examples=["ok"])


class Readiness(RuntimeInfo):
    """Readiness: every configured model loaded and warmed up."""

    ready: bool = Field(description="true once every configured model is ready (then 200)")
    detail: str = Field(description="the state in words", examples=["all 4 models ready"])
    models: dict[str, str] = Field(
        description="state of each configured checkpoint: pending, loading, warming, ready",
        examples=[{"aae": "ready", "vae": "ready"}],
    )
    not_ready: list[str] = Field(description="the configured models that are not ready")


class ErrorBody(BaseModel):
    """Every error: FastAPI's usual body."""

    detail: Any = Field(
        description="what was wrong: a message, or FastAPI's list of invalid parameters",
        examples=["unknown model 'foo'; valid models: aae, dcae, ensemble"],
    )

"""Request and response bodies, with the examples /docs shows."""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.instrument_schemas import GravitationalImaging, Instrument
from deeplense.significance import TRUST

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
        "residual matched-filtered by the PSF; 1 for a perfect reconstruction of pure noise), "
        "chi2_psf_light (chi2_psf where the reconstruction has light) or imaging_gain "
        "(LensFit 2: the chi-square its fit gains by freeing the lens and adding the best "
        "blob of mass; see gravitational_imaging).",
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
    chi2_per_dof: float | None = Field(default=None, description="lensfit(2): whitened chi2 "
        "per degree of freedom (used pixels less fitted parameters); ~1 at the noise")  # fmt: skip
    p_value: float | None = Field(default=None, description="P(chi2 this high | smooth lens"
        f" + noise); {TRUST}")  # fmt: skip
    significance_sigma: float | None = Field(default=None, description="p_value in sigma")
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
    instrument: Instrument | None = Field(
        default=None,
        description="What the score used for this image (pixel scale, PSF, noise map) and "
        "where each came from: upload (the file's own FITS extensions and header), request "
        "(the psf part or pixel_scale parameter), checkpoint (what the model was trained "
        "with) or estimated (the noise, from the image).",
    )
    gravitational_imaging: GravitationalImaging | None = Field(
        default=None,
        description="LensFit 2 scored by imaging_gain: what its tests found at the fit, the "
        "two parts of the score and where the best blob of mass sits. null otherwise.",
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


class ErrorBody(BaseModel):
    """Every error: FastAPI's usual body."""

    detail: Any = Field(
        description="what was wrong: a message, or FastAPI's list of invalid parameters",
        examples=["unknown model 'foo'; valid models: aae, dcae, ensemble"],
    )

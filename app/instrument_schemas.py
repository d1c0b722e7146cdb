"""The instrument a score used, and the findings of a fit's own tests, as the API returns
them in each result (`app.schemas.ScoreResult`)."""

from typing import Literal

from pydantic import BaseModel, Field

from deeplense.fit_drawn import FINDINGS

Source = Literal["upload", "request", "checkpoint", "estimated"]


class PixelScaleUsed(BaseModel):
    """The image's pixel scale and where it came from."""

    value_arcsec: float = Field(description="arcsec per pixel of the image", examples=[0.05])
    source: Source = Field(description="upload, request or checkpoint", examples=["checkpoint"])


class PsfUsed(BaseModel):
    """The PSF of the matched filter and where it came from."""

    fwhm_arcsec: float = Field(description="the PSF's full width at half maximum, arcsec")
    kind: Literal["gaussian", "kernel"] = Field(description="a Gaussian, or a supplied kernel")
    source: Source = Field(description="upload, request or checkpoint", examples=["checkpoint"])


class NoiseUsed(BaseModel):
    """The noise map the scores used and where it came from."""

    median: float | None = Field(
        description="median noise sigma over the unmasked pixels, in the image's min-max "
        "scaled units ([0, 1] = the image's range)"
    )
    source: Source = Field(
        description="upload (the file's ERR, VAR or WHT extension) or estimated (from the "
        "image: sigma^2 = a x + b)",
        examples=["estimated"],
    )
    extension: str | None = Field(
        default=None, description="the FITS extension it came from (ERR, VAR, WHT, ...)"
    )


class Instrument(BaseModel):
    """What the score used, and where each part came from."""

    pixel_scale: PixelScaleUsed = Field(description="the image's pixel scale")
    psf: PsfUsed = Field(description="the PSF of the matched filter")
    noise: NoiseUsed = Field(description="the noise map")


class GravitationalImaging(BaseModel):
    """What LensFit 2's gravitational-imaging tests found at its fit (returned when the score
    is imaging_gain, which they draw): imaging_gain's two parts and the best blob of mass.
    Positions are on the grid the fit used (the image as read unless `resized`)."""

    tension: float | None = Field(default=None, description=FINDINGS["tension"], examples=[35.9])
    blob_gain: float | None = Field(
        default=None, description=FINDINGS["blob_gain"], examples=[145.7]
    )
    blob_x_arcsec: float | None = Field(
        default=None, description=FINDINGS["blob_x_arcsec"], examples=[-1.4]
    )
    blob_y_arcsec: float | None = Field(
        default=None, description=FINDINGS["blob_y_arcsec"], examples=[0.6]
    )
    blob_column: float | None = Field(
        default=None, description=FINDINGS["blob_column"], examples=[46.5]
    )
    blob_row: float | None = Field(default=None, description=FINDINGS["blob_row"], examples=[86.5])
    blob_theta_sub_arcsec: float | None = Field(
        default=None, description=FINDINGS["blob_theta_sub_arcsec"], examples=[0.08]
    )

"""One image's judged score: the record every output is built from.

The service's JSON result (`app.responses`) and the `score` CLI's CSV row
(`training.batch_score`) are both made from `ImageScore`, so they cannot drift apart: the
CSV's columns are this record's fields, in order.
"""

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any, Protocol

import numpy as np

from deeplense.calibration import Verdict
from deeplense.fit_drawn import FINDINGS
from deeplense.inference import ScoredBatch


class PreparedImage(Protocol):
    """What a result needs to know of a prepared image besides its scores."""

    @property
    def filename(self) -> str: ...
    @property
    def input_shape(self) -> tuple[int, ...] | None: ...
    @property
    def resized(self) -> bool: ...
    @property
    def warnings(self) -> tuple[str, ...]: ...
    @property
    def instrument(self) -> dict[str, Any] | None: ...


@dataclass
class ImageScore:
    """One image's result; the numbers are None when the image could not be scored."""

    filename: str
    score: str | None = None  # the anomaly score's name
    anomaly_score: float | None = None  # that score's value, higher = more anomalous
    reconstruction_loss: float | None = None  # the study's MSE, [0, 1] pixels squared
    threshold: float | None = None  # in the score's units
    is_anomaly: bool | None = None
    percentile: float | None = None  # 0-100 among the calibration normals
    # Goodness of fit of a per-image fit (LensFit, LensFit 2; deeplense.significance): chi2
    # per degree of freedom, its p-value and one-sided Gaussian sigma, trusting the noise map
    chi2_per_dof: float | None = None
    p_value: float | None = None
    significance_sigma: float | None = None
    w1: float | None = None  # column-sum Wasserstein distance, input vs reconstruction
    input_shape: tuple[int, ...] | None = None  # (height, width) as read
    resized: bool | None = None  # area-resized to the model's input
    warnings: tuple[str, ...] = ()
    error: str | None = None  # why the image could not be scored
    # What the score used, and where each part came from (deeplense.observation):
    # {"pixel_scale": {...}, "psf": {...}, "noise": {...}}
    instrument: dict[str, Any] | None = None
    # What the fit's own tests found (deeplense.fit_drawn.FINDINGS: imaging_gain's parts and
    # the best blob of mass), None unless a score drawn by the fit was computed
    gravitational_imaging: dict[str, float | None] | None = None

    def csv_values(self) -> list[str]:
        """The record as CSV cells (CSV_COLUMNS' order): floats in full precision (repr),
        a shape as HxW, warnings joined by "; ", the instrument flattened
        (INSTRUMENT_COLUMNS), the fit's findings one column each (FINDINGS), empty cells for
        None."""
        cells = []
        flat: dict[str, Any] = _flat_instrument(self.instrument)
        flat |= self.gravitational_imaging or dict.fromkeys(FINDINGS)
        for name in CSV_COLUMNS:
            value = flat[name] if name in flat else getattr(self, name)
            if name == "input_shape" and value is not None:
                value = "x".join(map(str, value))
            elif name == "warnings":
                value = "; ".join(value) or None
            cells.append(
                "" if value is None else repr(value) if isinstance(value, float) else str(value)
            )
        return cells


# The instrument's CSV columns: column -> (part, key) of ImageScore.instrument.
INSTRUMENT_COLUMNS = {
    "pixel_scale_arcsec": ("pixel_scale", "value_arcsec"),
    "pixel_scale_source": ("pixel_scale", "source"),
    "psf_fwhm_arcsec": ("psf", "fwhm_arcsec"),
    "psf_source": ("psf", "source"),
    "noise_median": ("noise", "median"),
    "noise_source": ("noise", "source"),
}
_NESTED = ("instrument", "gravitational_imaging")  # flattened into columns of their own
CSV_COLUMNS = (
    *(f.name for f in fields(ImageScore) if f.name not in _NESTED),
    *INSTRUMENT_COLUMNS,
    *FINDINGS,
)


def _flat_instrument(instrument: dict[str, Any] | None) -> dict[str, Any]:
    if instrument is None:
        return dict.fromkeys(INSTRUMENT_COLUMNS)
    return {c: instrument[part].get(key) for c, (part, key) in INSTRUMENT_COLUMNS.items()}


def image_scores(
    images: Sequence[PreparedImage], scored: ScoredBatch, score: str, verdict: Verdict
) -> list[ImageScore]:
    """The records of N scored images: `scored` and `verdict` hold (N,) arrays in their order."""
    values = scored.scores[score]
    fit = scored.goodness
    records = []
    for i, p in enumerate(images):
        judged = verdict.applies(i)
        records.append(
            ImageScore(
                filename=p.filename,
                score=score,
                anomaly_score=float(values[i]),
                reconstruction_loss=float(scored.loss[i]),
                threshold=verdict.threshold,
                is_anomaly=(
                    bool(verdict.is_anomaly[i])
                    if judged and verdict.is_anomaly is not None
                    else None
                ),
                percentile=(
                    float(verdict.percentile[i])
                    if judged and verdict.percentile is not None
                    else None
                ),
                chi2_per_dof=None if fit is None else float(fit.chi2_per_dof[i]),
                p_value=None if fit is None else float(fit.p_value[i]),
                significance_sigma=None if fit is None else float(fit.sigma[i]),
                w1=float(scored.w1[i]),
                input_shape=None if p.input_shape is None else tuple(p.input_shape),
                resized=p.resized,
                warnings=tuple(p.warnings) + (() if judged else (verdict.not_applicable[i],)),
                instrument=p.instrument,
                gravitational_imaging=_findings_of(scored.findings, i),
            )
        )
    return records


def _findings_of(findings: dict[str, np.ndarray], i: int) -> dict[str, float | None] | None:
    """Image i's findings (NaN: None), or None when the fit reported none."""
    if not findings:
        return None
    return {
        name: None if not np.isfinite(v := float(findings[name][i])) else v
        for name in FINDINGS
        if name in findings
    }

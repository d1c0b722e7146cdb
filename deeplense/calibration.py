"""Calibration of a score on normal images, and the one judge that turns scores into flags.

For a named score (`deeplense.scores`) the threshold is the (1 - fpr) quantile of the scores
of normal (no_sub) validation images, so about `fpr` of normal images are flagged; the 101
quantiles (0%, 1%, ..., 100%) of those scores travel in the checkpoint so that any score can
be turned into a percentile. When the validation split is labelled, the calibration also
records the score's ROC-AUC there, the share of its substructure images flagged at the
threshold (the detection rate at the calibrated false-positive rate) and its Youden-J
threshold (maximising TPR - FPR). The test
split is never used here: a threshold tuned on the data it is reported on would flatter it.

`judge` is the only place a flag or a percentile is made: the service (single models and
ensemble members), the `score` CLI and evaluation all call it.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from deeplense.metrics import roc_auc

N_QUANTILES = 101  # the 0%, 1%, ..., 100% quantiles of the normal scores


class Calibration(BaseModel):
    """Anomaly threshold and the distribution of normal (no_sub) scores it came from."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    fpr: float = Field(gt=0, lt=1, description="target false-positive rate on normal images")
    threshold: float = Field(description="score above which an image is flagged")
    quantiles: list[float] = Field(description="101 quantiles (0..100%) of the normal scores")
    n_images: int = Field(gt=0, description="normal images the calibration used")
    dataset: str | None = None
    youden_threshold: float | None = Field(
        default=None,
        description="threshold maximising TPR - FPR on the labelled validation split, if any",
    )
    validation_auc: float | None = Field(
        default=None, description="ROC-AUC sub vs no_sub on the labelled validation split"
    )
    validation_tpr: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="share of the labelled validation split's substructure images scoring "
        "above `threshold` (the detection rate at the calibrated false-positive rate)",
    )

    @field_validator("threshold", "youden_threshold", "validation_auc")
    @classmethod
    def _finite(cls, value: float | None) -> float | None:
        if value is not None and not np.isfinite(value):
            raise ValueError("must be a finite number")
        return value

    @field_validator("quantiles")
    @classmethod
    def _sorted_quantiles(cls, q: list[float]) -> list[float]:
        if len(q) != N_QUANTILES:
            raise ValueError(f"expected {N_QUANTILES} quantiles, got {len(q)}")
        if any(b < a for a, b in zip(q, q[1:], strict=False)):
            raise ValueError("quantiles must be non-decreasing")
        if not all(np.isfinite(q)):
            raise ValueError("quantiles must be finite")
        return q

    def percentile(self, scores: np.ndarray) -> np.ndarray:
        """Percentile (0-100) of each score among the calibration normals (interpolated)."""
        levels = np.linspace(0.0, 100.0, N_QUANTILES)
        q = np.asarray(self.quantiles, dtype=np.float64)
        # np.interp needs strictly increasing x for a sensible answer on ties: nudge them.
        q = q + np.arange(N_QUANTILES) * 1e-12 * max(abs(q[-1]), 1e-12)
        return np.interp(np.asarray(scores, dtype=np.float64), q, levels)


def calibration_from_scores(
    normal_scores: np.ndarray,
    fpr: float = 0.05,
    dataset: str | None = None,
    labelled_scores: np.ndarray | None = None,
    labels: np.ndarray | None = None,
) -> Calibration:
    """A Calibration from the scores (N,) of normal images (and optional labelled ones,
    which must come from a validation split, never the test split)."""
    scores = np.asarray(normal_scores, dtype=np.float64)
    if scores.ndim != 1 or len(scores) < 2:
        raise ValueError("calibration needs at least two normal scores")
    if not np.isfinite(scores).all():
        raise ValueError("calibration needs finite scores")
    if not 0 < fpr < 1:
        raise ValueError(f"fpr must lie in (0, 1), got {fpr}")
    quantiles = np.quantile(scores, np.linspace(0.0, 1.0, N_QUANTILES))
    threshold = float(np.quantile(scores, 1.0 - fpr))
    youden = auc = tpr = None
    if labelled_scores is not None and labels is not None:
        s, y = np.asarray(labelled_scores, dtype=np.float64), np.asarray(labels)
        youden = youden_threshold(s, y)
        auc = roc_auc(s[y == 0], s[y == 1])
        tpr = float(np.mean(s[y == 1] > threshold))  # flagged as `judge` flags
    return Calibration(
        fpr=fpr,
        threshold=threshold,
        quantiles=[float(q) for q in quantiles],
        n_images=len(scores),
        dataset=dataset,
        youden_threshold=youden,
        validation_auc=auc,
        validation_tpr=tpr,
    )


def youden_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """Threshold maximising TPR - FPR (labels: 0 normal, 1 anomalous; flag = score > t)."""
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order].astype(bool)
    tpr = np.cumsum(y) / max(y.sum(), 1)
    fpr = np.cumsum(~y) / max((~y).sum(), 1)
    best = int(np.argmax(tpr - fpr))
    # Flag everything scoring at least s[best]: put the threshold just below it.
    below = s[best + 1] if best + 1 < len(s) else s[best] - 1e-12
    return float((s[best] + below) / 2)


@dataclass(frozen=True)
class Verdict:
    """Flags and percentiles of N scores: each (N,), None when there is nothing to judge by.

    `not_applicable[i]` says why the score cannot judge image i ("" when it can): such an
    image gets no flag and no percentile (`applies`), never a confident "normal"."""

    threshold: float | None
    is_anomaly: np.ndarray | None  # (N,) bool
    percentile: np.ndarray | None  # (N,) float64 in [0, 100]
    not_applicable: tuple[str, ...] = ()

    def applies(self, i: int) -> bool:
        """Whether image i is judged (its flag and percentile mean something)."""
        return not (self.not_applicable and self.not_applicable[i])


def judge(
    scores: np.ndarray,
    calibration: Calibration | None,
    threshold: float | None = None,
    not_applicable: Sequence[str] = (),
) -> Verdict:
    """Flag = score > threshold (override, else the calibration's); percentile needs a
    calibration. Without either, both are None. An image with a reason in `not_applicable`
    (the score cannot judge it, `deeplense.scores.applicability`) is not judged."""
    values = np.asarray(scores, dtype=np.float64)
    if threshold is None and calibration is not None:
        threshold = calibration.threshold
    return Verdict(
        threshold=threshold,
        is_anomaly=None if threshold is None else values > threshold,
        percentile=None if calibration is None else calibration.percentile(values),
        not_applicable=tuple(not_applicable),
    )

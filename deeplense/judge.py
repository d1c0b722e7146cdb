"""The one rule that turns scores into flags and percentiles, for every path.

The service (single models and ensemble members), the `score` CLI and evaluation all call
`judge`: an image is flagged when its score is above the threshold (the calibrated one, or
the caller's override), and its percentile is its place among the calibration normals.
"""

from dataclasses import dataclass

import numpy as np

from models.checkpoint import Calibration


@dataclass(frozen=True)
class Verdict:
    """Flags and percentiles of N scores: each (N,), None when there is nothing to judge by."""

    threshold: float | None
    is_anomaly: np.ndarray | None  # (N,) bool
    percentile: np.ndarray | None  # (N,) float64 in [0, 100]


def judge(
    scores: np.ndarray, calibration: Calibration | None, threshold: float | None = None
) -> Verdict:
    """Flag = score > threshold (override, else the calibration's); percentile needs a
    calibration. Without either, both are None."""
    values = np.asarray(scores, dtype=np.float64)
    if threshold is None and calibration is not None:
        threshold = calibration.threshold
    return Verdict(
        threshold=threshold,
        is_anomaly=None if threshold is None else values > threshold,
        percentile=None if calibration is None else calibration.percentile(values),
    )

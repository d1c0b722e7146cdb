"""Sensitivity: how often a detector flags a lens with substructure at a fixed false-positive
rate, against the subhalo mass and against the arcs' S/N (`bench/sensitivity.py`).

A checkpoint is judged at its own calibrated threshold (set at 5% false positives on the
validation split's normal lenses, as the service flags); an ideal detector without a
calibration (the exact bound, `training.bounds`) at the (1 - fpr) quantile of the same
set's normal lenses, labelled as such. Each image is scored as `evaluate` scores it (each
image's own PSF on Model R), by the checkpoint's default score.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from deeplense.calibration import judge
from deeplense.inference import score_array, score_observations
from deeplense.vocabulary import CLASSES
from models.checkpoint import LoadedCheckpoint
from training.datasets import load_split
from training.observed_split import own_psf_split
from training.simulate import read_rows


@dataclass(frozen=True)
class Rate:
    """The share of `n` lenses flagged at `threshold`."""

    rate: float
    n: int
    threshold: float


def empirical_threshold(normal: np.ndarray, fpr: float) -> float:
    """The threshold that flags a share `fpr` of `normal` (N,) scores: their (1 - fpr)
    quantile (a score above it is flagged)."""
    return float(np.quantile(np.asarray(normal, dtype=np.float64), 1.0 - fpr))


def detection_rate(scores: np.ndarray, threshold: float) -> Rate:
    """The share of `scores` (N,) flagged at `threshold`, by the service's rule."""
    flags = judge(np.asarray(scores, dtype=np.float64), None, threshold).is_anomaly
    return Rate(rate=float(np.mean(flags)) if len(flags) else float("nan"), n=len(flags),
                threshold=threshold)  # fmt: skip


def snr_bins(snr: np.ndarray, bins: int) -> np.ndarray:
    """(bins + 1,) edges at the quantiles of `snr`: bins of equal counts."""
    return np.quantile(np.asarray(snr, dtype=np.float64), np.linspace(0.0, 1.0, bins + 1))


def rate_by_snr(
    scores: np.ndarray, snr: np.ndarray, threshold: float, edges: Sequence[float]
) -> list[tuple[float, float, Rate]]:
    """(low, high, rate) per S/N bin [low, high) (the last bin closed): the share of the
    lenses of that S/N flagged at `threshold`."""
    scores, snr = np.asarray(scores), np.asarray(snr)
    out = []
    for k, (low, high) in enumerate(zip(edges[:-1], edges[1:], strict=True)):
        last = k == len(edges) - 2
        inside = (snr >= low) & ((snr <= high) if last else (snr < high))
        out.append((float(low), float(high), detection_rate(scores[inside], threshold)))
    return out


def split_snr(directory: Path, cls: str, n: int, column: str = "snr_median") -> np.ndarray:
    """(n,) the arcs' S/N (parameters.csv's `column`) of the first n test images of `cls`."""
    rows = read_rows(Path(directory), "test", n)
    return np.array([float(rows[(cls, i)][column]) for i in range(n) if (cls, i) in rows])


def default_scores(
    loaded: LoadedCheckpoint,
    directory: Path,
    n: int,
    classes: Sequence[str] = CLASSES,
    device: torch.device | str = "cpu",
) -> dict[str, np.ndarray]:
    """Class -> (n,) the checkpoint's default score of the first n test images of each of
    `classes`, as `evaluate` computes it (the PSF the dataset records, each image's own or
    its one PSF, where it is not the card's)."""
    model, card = loaded.model, loaded.config.input.instrument()
    name = loaded.config.default_score
    own = own_psf_split(Path(directory), "test", model, card, dict.fromkeys(classes, n))
    if own is not None:
        return {
            cls: score_observations(model, obs, device=device, scores=[name]).scores[name]
            for cls, obs in own.scored.items()
        }
    images = load_split(Path(directory), "test", image_size=model.image_size, classes=classes)
    return {
        cls: score_array(model, np.asarray(x[:n]), device=device, scores=[name],
                         psf_sigma_pixels=card.psf_sigma_pixels).scores[name]
        for cls, x in images.items()
    }  # fmt: skip


def calibrated_threshold(loaded: LoadedCheckpoint) -> float | None:
    """The checkpoint's threshold for its default score (None: not calibrated)."""
    calibration = loaded.config.calibration_for(loaded.config.default_score)
    return None if calibration is None else float(calibration.threshold)


__all__ = [
    "Rate",
    "calibrated_threshold",
    "default_scores",
    "detection_rate",
    "empirical_threshold",
    "rate_by_snr",
    "snr_bins",
    "split_snr",
]

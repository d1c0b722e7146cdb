"""Threshold calibration on held-out images, one calibration per named score.

For every registered score (`deeplense.scores`) the threshold is the (1 - fpr) quantile of
the scores of normal (no_sub) validation images, so about `fpr` of normal images are flagged;
the 101 quantiles (0%, 1%, ..., 100%) of those scores travel in the checkpoint so the service
can turn any score into a percentile. When the validation split is labelled (DIR/val also
holds sphere or vort images, as `simulate` writes them), each score also gets its ROC-AUC
there and its Youden-J threshold (maximising TPR - FPR), and the checkpoint's default score
is the one with the best validation AUC (ties in the order chi2_psf, chi2, mse). The test
split is never used here: a threshold or a choice tuned on the data it is reported on would
flatter it.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from deeplense.errors import DatasetError
from deeplense.metrics import roc_auc
from deeplense.scores import PREFERENCE, list_scores
from deeplense.scoring import score_array
from models.base import AnomalyModel
from models.checkpoint import N_QUANTILES, Calibration, LoadedCheckpoint
from training.datasets import LABELS, load_split

NORMAL = "no_sub"
NO_LABELS_DEFAULT = "chi2_psf"  # the best score in the detection bounds (bench/oracle_auc.py)


def calibration_from_scores(
    normal_scores: np.ndarray,
    fpr: float = 0.05,
    dataset: str | None = None,
    labelled_scores: np.ndarray | None = None,
    labels: np.ndarray | None = None,
) -> Calibration:
    """Build a Calibration from the scores (N,) of normal images (and optional labelled ones,
    which must come from a validation split, never the test split)."""
    scores = np.asarray(normal_scores, dtype=np.float64)
    if scores.ndim != 1 or len(scores) < 2:
        raise ValueError("calibration needs at least two normal scores")
    if not np.isfinite(scores).all():
        raise ValueError("calibration needs finite scores")
    if not 0 < fpr < 1:
        raise ValueError(f"fpr must lie in (0, 1), got {fpr}")
    quantiles = np.quantile(scores, np.linspace(0.0, 1.0, N_QUANTILES))
    youden = auc = None
    if labelled_scores is not None and labels is not None:
        s, y = np.asarray(labelled_scores, dtype=np.float64), np.asarray(labels)
        youden = youden_threshold(s, y)
        auc = roc_auc(s[y == 0], s[y == 1])
    return Calibration(
        fpr=fpr,
        threshold=float(np.quantile(scores, 1.0 - fpr)),
        quantiles=[float(q) for q in quantiles],
        n_images=len(scores),
        dataset=dataset,
        youden_threshold=youden,
        validation_auc=auc,
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


@dataclass
class ScoreCalibrations:
    """Every score's calibration, the default score and why it was chosen."""

    calibrations: dict[str, Calibration]
    default_score: str
    reason: str


def choose_default_score(calibrations: dict[str, Calibration]) -> tuple[str, str]:
    """(score, reason): the best validation AUC, ties in PREFERENCE order; without labels,
    NO_LABELS_DEFAULT."""
    measured = {s: c.validation_auc for s, c in calibrations.items() if c.validation_auc}
    if not measured:
        return NO_LABELS_DEFAULT, (
            "no labelled validation split: chi2_psf, the best score in the detection bounds"
        )
    rank = {s: i for i, s in enumerate(PREFERENCE)}
    best = min(measured, key=lambda s: (-round(measured[s], 4), rank.get(s, len(rank)), s))
    table = ", ".join(f"{s} {measured[s]:.4f}" for s in sorted(measured))
    return best, f"best ROC-AUC on the labelled validation split ({table})"


def calibrate_model(
    model: AnomalyModel,
    val: dict[str, np.ndarray],
    psf_sigma_pixels: float,
    fpr: float = 0.05,
    dataset: str | None = None,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
) -> ScoreCalibrations:
    """Calibrate every score on validation images, class -> (N, 1, S, S): thresholds from
    no_sub, validation AUC and Youden-J from the other classes when present."""
    if NORMAL not in val or len(val[NORMAL]) < 2:
        raise DatasetError(f"calibration needs at least two {NORMAL} validation images")
    names = list_scores()
    scored = {
        cls: score_array(
            model, x, device=device, batch_size=batch_size, scores=names,
            psf_sigma_pixels=psf_sigma_pixels,
        ).scores
        for cls, x in val.items()
        if len(x)
    }  # fmt: skip
    for cls, values in scored.items():
        for name, v in values.items():
            if not np.isfinite(v).all():
                raise DatasetError(
                    f"{model.architecture}: non-finite {name} scores on the {cls} validation "
                    "images; training diverged"
                )
    anomalous = [c for c in scored if c != NORMAL]
    calibrations = {}
    for name in names:
        normal = scored[NORMAL][name]
        labelled = labels = None
        if anomalous:
            labelled = np.concatenate([normal, *(scored[c][name] for c in anomalous)])
            labels = np.concatenate(
                [
                    np.zeros(len(normal)),
                    *(np.full(len(scored[c][name]), LABELS[c]) for c in anomalous),
                ]
            )
        calibrations[name] = calibration_from_scores(normal, fpr, dataset, labelled, labels)
    default, reason = choose_default_score(calibrations)
    return ScoreCalibrations(calibrations=calibrations, default_score=default, reason=reason)


def calibrate_checkpoint(
    loaded: LoadedCheckpoint,
    data_dir: Path,
    fpr: float = 0.05,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    dataset: str | None = None,
) -> ScoreCalibrations:
    """Calibrate a loaded checkpoint on DIR/val (no_sub, and sphere / vort when present)."""
    data_dir = Path(data_dir)
    val = load_split(data_dir, "val", image_size=loaded.model.image_size)
    if NORMAL not in val or len(val[NORMAL]) < 2:
        raise DatasetError(f"{data_dir / 'val'}: calibration needs at least two no_sub images")
    return calibrate_model(
        loaded.model,
        val,
        loaded.config.input.psf_sigma_pixels,
        fpr=fpr,
        dataset=dataset,
        device=device,
        batch_size=batch_size,
    )

"""Threshold calibration on held-out normal images.

The threshold is the (1 - fpr) quantile of the scores of normal (no_sub) validation images,
so about `fpr` of normal images are flagged; the 101 quantiles (0%, 1%, ..., 100%) of those
scores travel in the checkpoint so the service can turn any score into a percentile. With
labelled data, the Youden-J threshold (maximising TPR - FPR) is added too.
"""

from pathlib import Path

import numpy as np
import torch

from deeplense.errors import DatasetError
from deeplense.scoring import score_array
from models.checkpoint import N_QUANTILES, Calibration, LoadedCheckpoint
from training.datasets import LABELS, load_split


def calibration_from_scores(
    normal_scores: np.ndarray,
    fpr: float = 0.05,
    dataset: str | None = None,
    labelled_scores: np.ndarray | None = None,
    labels: np.ndarray | None = None,
) -> Calibration:
    """Build a Calibration from the scores (N,) of normal images (and optional labelled ones)."""
    scores = np.asarray(normal_scores, dtype=np.float64)
    if scores.ndim != 1 or len(scores) < 2:
        raise ValueError("calibration needs at least two normal scores")
    if not 0 < fpr < 1:
        raise ValueError(f"fpr must lie in (0, 1), got {fpr}")
    quantiles = np.quantile(scores, np.linspace(0.0, 1.0, N_QUANTILES))
    youden = None
    if labelled_scores is not None and labels is not None:
        youden = youden_threshold(np.asarray(labelled_scores), np.asarray(labels))
    return Calibration(
        fpr=fpr,
        threshold=float(np.quantile(scores, 1.0 - fpr)),
        quantiles=[float(q) for q in quantiles],
        n_images=len(scores),
        dataset=dataset,
        youden_threshold=youden,
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


def calibrate_checkpoint(
    loaded: LoadedCheckpoint,
    data_dir: Path,
    fpr: float = 0.05,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    dataset: str | None = None,
) -> Calibration:
    """Calibrate a loaded checkpoint: threshold and quantiles from DIR/val no_sub scores, plus
    the Youden-J threshold when DIR/test holds labelled images (sub = anything but no_sub)."""
    data_dir = Path(data_dir)
    size = loaded.model.image_size
    val = load_split(data_dir, "val", image_size=size)
    if "no_sub" not in val or len(val["no_sub"]) < 2:
        raise DatasetError(f"{data_dir / 'val'}: calibration needs at least two no_sub images")
    normal = score_array(loaded.model, val["no_sub"], device=device, batch_size=batch_size).loss
    labelled_scores = labels = None
    if (data_dir / "test").is_dir():
        test = load_split(data_dir, "test", image_size=size)
        if "no_sub" in test and any(len(v) for c, v in test.items() if c != "no_sub"):
            parts = [
                (score_array(loaded.model, x, device=device, batch_size=batch_size).loss, c)
                for c, x in test.items()
                if len(x)
            ]
            labelled_scores = np.concatenate([s for s, _ in parts])
            labels = np.concatenate([np.full(len(s), LABELS[c]) for s, c in parts])
    return calibration_from_scores(
        normal, fpr=fpr, dataset=dataset, labelled_scores=labelled_scores, labels=labels
    )

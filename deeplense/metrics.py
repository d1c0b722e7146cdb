"""Per-image metrics shared by evaluation and serving (so both report the same numbers)."""

import math

import numpy as np
from scipy.stats import rankdata
from torch import Tensor


def column_w1(x: Tensor, x_hat: Tensor) -> Tensor:
    """First Wasserstein distance between the column sums of input and reconstruction.

    For each image the W column sums of x and of x_hat (summing over rows, i.e. the y axis)
    are treated as two samples of W values each, exactly as
    `scipy.stats.wasserstein_distance(x.sum(axis=0), x_hat.sum(axis=0))` on a 2-D image
    (REFERENCE.md). For equal-size samples W1 is the mean absolute difference of the sorted
    values. (N, 1, H, W) x 2 -> (N,), in summed-pixel units.
    """
    cols = x.double().sum(dim=-2).flatten(1).sort(dim=1).values  # (N, W), float64 sums
    cols_hat = x_hat.double().sum(dim=-2).flatten(1).sort(dim=1).values  # (N, W)
    return (cols - cols_hat).abs().mean(dim=1)


def roc_auc(normal: np.ndarray, anomalous: np.ndarray) -> float:
    """ROC-AUC of scores where higher = anomalous: P(anomalous > normal) + P(tie) / 2, by
    ranks (the Mann-Whitney U statistic; equals scikit-learn's roc_auc_score)."""
    a = np.asarray(normal, dtype=np.float64)
    b = np.asarray(anomalous, dtype=np.float64)
    if len(a) == 0 or len(b) == 0:
        raise ValueError("ROC-AUC needs at least one score of each class")
    ranks = rankdata(np.concatenate([a, b]))  # average ranks on ties
    u = ranks[len(a) :].sum() - len(b) * (len(b) + 1) / 2.0
    return float(u / (len(a) * len(b)))


def auc_standard_error(auc: float, n_anomalous: int, n_normal: int) -> float:
    """Hanley and McNeil's (1982) standard error of an ROC-AUC from n_anomalous and n_normal
    scores (at 20 per class and AUC 0.5-0.8: 0.07-0.09)."""
    q1, q2 = auc / (2.0 - auc), 2.0 * auc**2 / (1.0 + auc)
    var = (auc * (1 - auc) + (n_anomalous - 1) * (q1 - auc**2) + (n_normal - 1) * (q2 - auc**2)) / (
        n_anomalous * n_normal
    )
    return math.sqrt(max(var, 0.0))

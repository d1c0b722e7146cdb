"""Optimiser noise of a refined model: how much a score moves when the refinement starts a
hair away from the encoder's guess.

LensFit 2 refines each image by a few Levenberg-Marquardt steps from its encoder's guess. Far
from the minimum those steps are chaotic (docs/results.md): a start moved by rounding can end
elsewhere. This module scores the same test images as `evaluate` does (`default_scores`: the
default score, each image's own PSF), once from the encoder's guess and again from guesses
moved by `eps` times each parameter's range, and summarises what that does to the scores and
to the AUC. bench/refine_noise.py prints it.
"""

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from deeplense.metrics import roc_auc
from models.checkpoint import LoadedCheckpoint
from training.sensitivity import default_scores

CLASSES = ("no_sub", "sphere", "vort")
SUB = ("sphere", "vort")


class NotRefinedError(ValueError):
    """The model has no encoder start to perturb (only a model that refines from one does)."""


def refined_start(model: torch.nn.Module) -> tuple[Callable[..., Tensor], Tensor]:
    """The model's `encoder_start` and its parameters' ranges `span` (P,); NotRefinedError
    when it has not both (only a model that refines from an encoder's guess has)."""
    start, span = getattr(model, "encoder_start", None), getattr(model, "span", None)
    if start is None or not isinstance(span, Tensor):
        raise NotRefinedError(f"{type(model).__name__} does not refine from an encoder start")
    return start, span


@contextmanager
def jittered_start(model: torch.nn.Module, eps: float, seed: int) -> Iterator[None]:
    """Within the block, `model.encoder_start` returns the encoder's guess (N, P) plus
    eps * the parameter's range * a standard normal draw, a new draw for every image."""
    original, span = refined_start(model)
    generator = torch.Generator().manual_seed(seed)

    def jittered(x: Tensor, pixel_scale: float | None = None) -> Tensor:
        theta = original(x, pixel_scale)  # (N, P)
        z = torch.randn(theta.shape, generator=generator, dtype=theta.dtype)
        return theta + eps * span.to(theta) * z.to(theta.device)

    model.encoder_start = jittered  # type: ignore[method-assign]  # an instance attribute
    try:
        yield
    finally:
        del model.encoder_start


@dataclass(frozen=True)
class StartNoise:
    """Scores from the encoder's start and from `repeats` perturbed starts at one eps."""

    eps: float
    base: dict[str, np.ndarray]  # class -> (n,) from the encoder's guess
    runs: list[dict[str, np.ndarray]]  # one per perturbed start: class -> (n,)

    def auc(self, scores: dict[str, np.ndarray]) -> float:
        return roc_auc(scores["no_sub"], np.concatenate([scores[c] for c in SUB]))

    @property
    def base_auc(self) -> float:
        return self.auc(self.base)

    @property
    def run_aucs(self) -> np.ndarray:
        return np.array([self.auc(r) for r in self.runs])

    def relative_change(self, cls: str) -> np.ndarray:
        """(repeats * n,) |score - base score| / |base score| of class `cls`."""
        base = self.base[cls]
        return np.concatenate([np.abs(r[cls] - base) / np.abs(base) for r in self.runs])


def start_noise(
    loaded: LoadedCheckpoint,
    directory: Path,
    n: int,
    eps: Sequence[float],
    repeats: int,
    seed: int = 0,
) -> list[StartNoise]:
    """For each eps: the default scores of the first n test images per class from the
    encoder's start, and from `repeats` starts perturbed by eps (`jittered_start`)."""
    refined_start(loaded.model)  # refuse before any scoring
    base = default_scores(loaded, directory, n, CLASSES)
    out = []
    for k, e in enumerate(eps):
        runs = []
        for r in range(repeats):
            with jittered_start(loaded.model, float(e), seed + 1000 * k + r):
                runs.append(default_scores(loaded, directory, n, CLASSES))
        out.append(StartNoise(float(e), base, runs))
    return out

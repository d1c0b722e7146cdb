"""A served model: a loaded checkpoint, the facts its card shows, and its life cycle."""

import hashlib
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np
import torch

from app.residual_images import pixel_residual_scale
from deeplense.calibration import Calibration
from deeplense.errors import CheckpointError
from deeplense.inference import score_array
from deeplense.scores import check_offered
from models.base import count_parameters
from models.checkpoint import WEIGHTS_FILE, LoadedCheckpoint, load_checkpoint

WARMUP_BATCH = 8
COST_SMOOTHING = 0.2  # weight of the newest measurement in the seconds-per-image average


class ModelState(StrEnum):
    """Life cycle of one configured checkpoint, as /ready reports it."""

    PENDING = "pending"
    LOADING = "loading"
    WARMING = "warming"
    READY = "ready"


@dataclass
class ServedModel:
    """A loaded checkpoint plus the facts the model cards show."""

    name: str
    checkpoint: LoadedCheckpoint
    parameters: int
    weights_sha256: str
    load_seconds: float
    # Seconds of service per image: the forward pass at warm-up, then a moving average over
    # requests of their forward pass, decoding and images (not their wait for the other
    # slot). A request's cost for admission control (app.admission).
    cost_per_image_s: float = 0.0

    def observe(self, seconds: float, n_images: int) -> None:
        """Fold one measured forward pass of `n_images` into `cost_per_image_s`."""
        if n_images > 0:
            one = seconds / n_images
            old = self.cost_per_image_s
            self.cost_per_image_s = one if old <= 0 else old + COST_SMOOTHING * (one - old)

    def chunk(self, batch_size: int, seconds: float, smallest: int = 1) -> int:
        """Images per forward pass: about `seconds` of work, `smallest` to `batch_size`."""
        if self.cost_per_image_s <= 0:
            return batch_size
        return max(smallest, min(batch_size, int(seconds / self.cost_per_image_s)))

    @property
    def size(self) -> int:
        """Side of the square model input, in pixels."""
        return self.checkpoint.model.image_size

    @property
    def renders_any_grid(self) -> bool:
        """Whether the model draws the lens on any pixel grid (LensFit): an image of another
        pixel scale is then fitted on its own pixels, not resampled."""
        return bool(self.checkpoint.model.renders_any_grid)

    def check_score(self, score: str) -> None:
        """ScoreNotOfferedError for a score drawn by a fit this model has not (an uncalibrated
        score is served, without a flag)."""
        check_offered(self.checkpoint.model, [score], self.name)

    def calibration_for(self, score: str) -> Calibration | None:
        """The calibration of `score`, or None."""
        return self.checkpoint.config.calibration_for(score)

    @property
    def default_score(self) -> str:
        """The score a request gets when it names none (the checkpoint's)."""
        return self.checkpoint.config.default_score

    @property
    def psf_sigma_pixels(self) -> float:
        """The noise-aware scores' matched-filter width, in input pixels."""
        return self.checkpoint.config.input.psf_sigma_pixels

    @property
    def pixel_residual_scale(self) -> float | None:
        """Top of this model's mse heat map (pixel units), from its MSE calibration."""
        mse = self.calibration_for("mse")
        return pixel_residual_scale(None if mse is None else mse.threshold)


def load_served(name: str, path: Path, device: torch.device) -> ServedModel:
    """Load checkpoint folder `path` onto `device` (CheckpointError naming the file)."""
    start = time.perf_counter()
    checkpoint = load_checkpoint(path, device=device)
    return ServedModel(
        name=name,
        checkpoint=checkpoint,
        parameters=count_parameters(checkpoint.model),
        weights_sha256=_sha256(path / WEIGHTS_FILE),
        load_seconds=time.perf_counter() - start,
    )


def warm_up(served: ServedModel, device: torch.device) -> None:
    """One batch of 1 (the latency path) and one of WARMUP_BATCH, by the default score (the
    cost a request measures with; LensFit 2's imaging_gain more than doubles it): the first real
    request does not pay for allocations and kernel selection, and broken weights show here."""
    start = time.perf_counter()
    rng = np.random.default_rng(0)
    for n in (1, WARMUP_BATCH):
        x = rng.random((n, 1, served.size, served.size), dtype=np.float32)
        began = time.perf_counter()
        scored = score_array(
            served.checkpoint.model, x, device=device, batch_size=n, scores=[served.default_score]
        )
        if not np.all(np.isfinite(scored.loss)):
            weights = served.checkpoint.path / WEIGHTS_FILE
            raise CheckpointError(f"{weights}: the model produces non-finite output")
    served.cost_per_image_s = (time.perf_counter() - began) / WARMUP_BATCH  # the warm batch
    served.load_seconds += time.perf_counter() - start


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

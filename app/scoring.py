"""The loaded models: start-up loading and warm-up, readiness, and batched scoring.

`ModelService.load()` runs in the app's lifespan: it loads every checkpoint folder under
the configured directory (a bad one raises CheckpointError naming the file, so the server
never starts half-broken), warms each model up and records its state for /ready.
`score()` runs in a worker thread: decoding, one batched forward pass per model through
`deeplense.scoring.score_array` (the function evaluation and the `score` CLI use), and the
response images. Forward passes hold one lock, so concurrent requests queue for the compute
device instead of fighting over its cores; decoding and PNG encoding run outside it.
"""

import hashlib
import logging
import threading
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Literal

import anyio
import numpy as np
import torch

from app.decode_pool import DecodePool
from app.errors import NoReadableFileError
from app.imaging import Prepared, Upload, gray_png, heatmap_png
from app.runtime import keep_freed_memory
from app.schemas import MemberScore, ScoreResponse, ScoreResult
from app.settings import Settings
from deeplense.device import resolve_device
from deeplense.errors import CheckpointError, NotReadyError, UnknownModelError
from deeplense.scoring import ScoredBatch, score_array
from models.base import count_parameters
from models.checkpoint import (
    WEIGHTS_FILE,
    Calibration,
    LoadedCheckpoint,
    find_checkpoints,
    load_checkpoint,
)

logger = logging.getLogger(__name__)

ENSEMBLE = "ensemble"
# Default model when settings name none: the loaded model with the highest measured AUC in
# its card (metrics.auc_sub, written by `training evaluate --update-checkpoints`); without
# metrics, the published AUC ranking (REFERENCE.md).
PREFERENCE = ("aae", "vae", "dcae", "rbm")
WARMUP_BATCH = 8
SCORING_SLOTS = 2


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

    @property
    def size(self) -> int:
        """Side of the square model input, in pixels."""
        return self.checkpoint.model.image_size

    @property
    def calibration(self) -> Calibration | None:
        return self.checkpoint.config.calibration


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class ModelService:
    """Every model the service loaded, their readiness, and the scoring entry point."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.device = torch.device("cpu")
        self.models: dict[str, ServedModel] = {}
        self.states: dict[str, ModelState] = {}
        self.default_model: str | None = None
        self.ensemble_members: list[str] = []
        self.started = False  # True once discovery ran (the lifespan began)
        self.loaded = False  # True once every model is ready and the default is chosen
        self._compute = threading.Lock()
        # Requests scored at once: one in the forward pass while the next one decodes.
        self.limiter = anyio.CapacityLimiter(SCORING_SLOTS)
        self.decoder = DecodePool(settings)  # decoding in killable worker processes

    # ---- start-up -------------------------------------------------------------------------

    def discover(self) -> dict[str, Path]:
        """Find the checkpoint folders and mark them pending; CheckpointError when none."""
        root = self.settings.checkpoint_dir
        found = find_checkpoints(root)
        if not found:
            raise CheckpointError(f"{root}: no checkpoint folders (none holds a config.json)")
        self.states = {name: ModelState.PENDING for name in found}
        self.started = True
        return found

    def load(self) -> None:
        """Load, check and warm up every checkpoint, then pick the default and the ensemble."""
        found = self.discover()
        self.device = resolve_device(self.settings.device)
        if self.settings.torch_threads is not None:
            torch.set_num_threads(self.settings.torch_threads)
        keep_freed_memory()
        for name, path in found.items():
            self.states[name] = ModelState.LOADING
            start = time.perf_counter()
            checkpoint = load_checkpoint(path, device=self.device)
            served = ServedModel(
                name=name,
                checkpoint=checkpoint,
                parameters=count_parameters(checkpoint.model),
                weights_sha256=_sha256(path / WEIGHTS_FILE),
                load_seconds=0.0,
            )
            self.states[name] = ModelState.WARMING
            self._warm_up(served)
            served.load_seconds = time.perf_counter() - start
            self.models[name] = served
            self.states[name] = ModelState.READY
            logger.info(
                "loaded %s (%s, %d parameters, %dx%d) on %s in %.2f s",
                name, checkpoint.config.architecture, served.parameters,
                served.size, served.size, self.device, served.load_seconds,
            )  # fmt: skip
        self.ensemble_members = self._pick_ensemble()
        self.default_model = self._pick_default()
        self.decoder.start()
        self.loaded = True
        logger.info(
            "default model %s; ensemble members %s",
            self.default_model, self.ensemble_members or "(none)",
        )  # fmt: skip

    def _warm_up(self, served: ServedModel) -> None:
        # One batch of 1 (the latency path) and one of WARMUP_BATCH: the first real request
        # does not pay for allocations and kernel selection, and broken weights show here.
        rng = np.random.default_rng(0)
        for n in (1, WARMUP_BATCH):
            x = rng.random((n, 1, served.size, served.size), dtype=np.float32)
            scored = score_array(served.checkpoint.model, x, device=self.device, batch_size=n)
            if not np.all(np.isfinite(scored.loss)):
                weights = served.checkpoint.path / WEIGHTS_FILE
                raise CheckpointError(f"{weights}: the model produces non-finite output")

    def _pick_default(self) -> str:
        wanted = self.settings.default_model
        if wanted is None:
            measured = {
                name: m.checkpoint.config.metrics["auc_sub"]
                for name, m in self.models.items()
                if "auc_sub" in m.checkpoint.config.metrics
            }
            if measured:
                return max(sorted(measured), key=lambda name: measured[name])
            preferred = [name for name in PREFERENCE if name in self.models]
            return preferred[0] if preferred else sorted(self.models)[0]
        if wanted != ENSEMBLE and wanted not in self.models:
            raise UnknownModelError(wanted, self.choices())
        return wanted

    def _pick_ensemble(self) -> list[str]:
        # Members: calibrated models sharing the most common input size (so one prepared
        # input serves all and their reconstructions can be averaged). Needs two or more.
        calibrated = [m for m in self.models.values() if m.calibration is not None]
        if not calibrated:
            return []
        sizes = [m.size for m in calibrated]
        size = max(set(sizes), key=sizes.count)
        members = sorted(m.name for m in calibrated if m.size == size)
        if self.settings.default_model == ENSEMBLE and len(members) < 2:
            raise UnknownModelError(ENSEMBLE, sorted(self.models))
        return members if len(members) >= 2 else []

    def close(self, timeout_s: float = 30.0) -> None:
        """Wait (bounded) for forward passes still running, e.g. of requests past their
        deadline, so the process does not exit under a running torch kernel."""
        if self._compute.acquire(timeout=timeout_s):
            self._compute.release()
        self.decoder.close()

    # ---- state ----------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self.loaded and all(s is ModelState.READY for s in self.states.values())

    def not_ready(self) -> dict[str, str]:
        """Configured models that are not ready yet, with their state."""
        return {n: s.value for n, s in self.states.items() if s is not ModelState.READY}

    def require_ready(self) -> None:
        """NotReadyError naming what is missing, unless every model is ready."""
        if not self.started:
            raise NotReadyError("the service is starting: models are not loaded yet")
        if not self.ready:
            waiting = ", ".join(f"{n} ({s})" for n, s in self.not_ready().items())
            raise NotReadyError(f"models not ready yet: {waiting or 'finishing start-up'}")

    def choices(self) -> list[str]:
        """Valid values of ?model=: the loaded names, plus ensemble when it is available."""
        return sorted(self.models) + ([ENSEMBLE] if self.ensemble_members else [])

    def resolve(self, name: str | None) -> str:
        """The model a request means (None = default); UnknownModelError lists the valid ones."""
        name = name or self.default_model
        if name is None or name not in self.choices():
            raise UnknownModelError(str(name), self.choices())
        return name

    def get(self, name: str) -> ServedModel:
        """A loaded model by name (not the ensemble)."""
        if name not in self.models:
            raise UnknownModelError(name, sorted(self.models))
        return self.models[name]

    def ensemble_threshold(self) -> float:
        """The ensemble's flag threshold in percentile units: 100 (1 - fpr), using the
        smallest fpr among its members (the most conservative when they differ)."""
        fprs = [c.fpr for m in self.ensemble_members if (c := self.models[m].calibration)]
        return 100.0 * (1.0 - min(fprs))

    # ---- scoring (runs in a worker thread) --------------------------------------------------

    def score(
        self,
        name: str,
        uploads: list[Upload],
        threshold: float | None = None,
        include_images: bool = True,
    ) -> ScoreResponse:
        """Score `uploads` with model `name` (or the ensemble); unreadable files get `error`."""
        members = self.ensemble_members if name == ENSEMBLE else [name]
        size = self.models[members[0]].size
        prepared = self.decoder.prepare_all(uploads, size, self.settings.max_pixels)
        good = [p for p in prepared if p.error is None]
        if not good:
            raise NoReadableFileError([(p.filename, p.error or "unreadable") for p in prepared])
        batch = np.stack([p.image for p in good if p.image is not None])  # (N, 1, S, S)
        with self._compute:
            scored = {
                m: score_array(
                    self.models[m].checkpoint.model, batch, device=self.device,
                    batch_size=self.settings.batch_size, keep_reconstructions=include_images,
                )
                for m in members
            }  # fmt: skip
        units: Literal["loss", "percentile"]
        if name == ENSEMBLE:
            results = self._ensemble_results(good, scored, threshold)
            units = "percentile"
        else:
            results = self._single_results(self.models[name], good, scored[name], threshold)
            units = "loss"
        if include_images:
            recons = [s.reconstruction for s in scored.values() if s.reconstruction is not None]
            recon = np.mean(recons, axis=0)  # (N, 1, S, S); the ensemble's: the members' mean
            for result, x, x_hat in zip(results, batch, recon, strict=True):
                _attach_images(result, x, x_hat)
        in_order = iter(results)
        return ScoreResponse(
            model=name,
            threshold_units=units,
            results=[
                ScoreResult(filename=p.filename, error=p.error) if p.error else next(in_order)
                for p in prepared
            ],
        )

    @staticmethod
    def _single_results(
        model: ServedModel, good: list[Prepared], scored: ScoredBatch, threshold: float | None
    ) -> list[ScoreResult]:
        cal = model.calibration
        if threshold is None and cal is not None:
            threshold = cal.threshold
        percentiles = cal.percentile(scored.loss) if cal is not None else None
        results = []
        for i, p in enumerate(good):
            loss = float(scored.loss[i])
            results.append(
                ScoreResult(
                    filename=p.filename,
                    reconstruction_loss=loss,
                    threshold=threshold,
                    is_anomaly=None if threshold is None else loss > threshold,
                    percentile=None if percentiles is None else float(percentiles[i]),
                    w1=float(scored.w1[i]),
                    input_shape=list(p.input_shape or ()),
                    resized=p.resized,
                    warnings=list(p.warnings),
                )
            )
        return results

    def _ensemble_results(
        self, good: list[Prepared], scored: dict[str, ScoredBatch], threshold: float | None
    ) -> list[ScoreResult]:
        per_member: dict[str, np.ndarray] = {}
        for m, s in scored.items():
            cal = self.models[m].calibration
            assert cal is not None  # members are calibrated by construction
            per_member[m] = cal.percentile(s.loss)
        mean_pct = np.mean(list(per_member.values()), axis=0)  # (N,)
        if threshold is None:
            threshold = self.ensemble_threshold()
        results = []
        for i, p in enumerate(good):
            members = []
            for m, s in scored.items():
                cal = self.models[m].calibration
                assert cal is not None
                loss = float(s.loss[i])
                members.append(
                    MemberScore(
                        model=m,
                        reconstruction_loss=loss,
                        w1=float(s.w1[i]),
                        percentile=float(per_member[m][i]),
                        threshold=cal.threshold,
                        is_anomaly=loss > cal.threshold,
                    )
                )
            pct = float(mean_pct[i])
            results.append(
                ScoreResult(
                    filename=p.filename,
                    threshold=threshold,
                    is_anomaly=pct > threshold,
                    percentile=pct,
                    input_shape=list(p.input_shape or ()),
                    resized=p.resized,
                    warnings=list(p.warnings),
                    members=members,
                )
            )
        return results


def _attach_images(result: ScoreResult, x: np.ndarray, x_hat: np.ndarray) -> None:
    residual = np.abs(x - x_hat)  # (1, S, S)
    vmax = float(residual.max())
    result.input = gray_png(x)
    result.reconstruction = gray_png(x_hat)
    result.residual = heatmap_png(residual, vmax)
    result.residual_max = vmax

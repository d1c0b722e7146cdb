"""The loaded models: start-up loading and warm-up, readiness, and batched scoring.

`ModelService.load()` runs in the app's lifespan: it loads every checkpoint folder under
the configured directory (a bad one raises CheckpointError naming the file, so the server
never starts half-broken), warms each model up and records its state for /ready.
`score()` runs in a worker thread: decoding in killable worker processes (`app.decode_pool`:
a file past its decode timeout or the request deadline costs nothing afterwards), one batched
forward pass per model through `deeplense.scoring.score_array` (the function evaluation and
the `score` CLI use, for every named score), the flags by `deeplense.judge`, and the response
images. Forward passes hold one lock, so concurrent requests queue for the compute device
instead of fighting over its cores; decoding and PNG encoding run outside it.
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
from app.imaging import Prepared, Upload
from app.residual_images import attach_images, pixel_residual_scale
from app.runtime import keep_freed_memory
from app.schemas import MemberScore, ScoreResponse, ScoreResult
from app.settings import Settings
from deeplense.device import resolve_device
from deeplense.errors import (
    CheckpointError,
    NotReadyError,
    UncalibratedScoreError,
    UnknownModelError,
)
from deeplense.judge import judge
from deeplense.scores import PREFERENCE as SCORE_PREFERENCE
from deeplense.scores import get_score
from deeplense.scoring import ScoredBatch, score_array
from models.base import count_parameters
from models.checkpoint import (
    WEIGHTS_FILE,
    Calibration,
    LoadedCheckpoint,
    find_checkpoints,
    load_checkpoint,
)
from models.selection import choose_default_model

logger = logging.getLogger(__name__)

ENSEMBLE = "ensemble"
# Default model when settings name none: models.selection (best labelled-validation AUC).
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

    def calibration_for(self, score: str) -> Calibration | None:
        """The calibration of `score`, or None."""
        return self.checkpoint.config.calibration_for(score)

    @property
    def psf_sigma_pixels(self) -> float:
        """The noise-aware scores' matched-filter width, in input pixels."""
        return self.checkpoint.config.input.psf_sigma_pixels

    @property
    def pixel_residual_scale(self) -> float | None:
        """Top of this model's mse heat map (pixel units), from its MSE calibration."""
        mse = self.calibration_for("mse")
        return pixel_residual_scale(None if mse is None else mse.threshold)


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
        self.default_reason = ""
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
            choice = choose_default_model(
                {name: m.checkpoint.config for name, m in self.models.items()}
            )
            self.default_reason = choice.reason
            return choice.model
        if wanted != ENSEMBLE and wanted not in self.models:
            raise UnknownModelError(wanted, self.choices())
        self.default_reason = "set by DEEPLENSE_DEFAULT_MODEL (--default-model)"
        return wanted

    def _pick_ensemble(self) -> list[str]:
        # Members: calibrated models sharing the most common input size (so one prepared
        # input serves all and their reconstructions can be averaged). Needs two or more.
        calibrated = [m for m in self.models.values() if m.checkpoint.config.calibrations]
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

    def default_score(self, name: str) -> str:
        """The score a request to model `name` (or the ensemble) gets when it names none.

        A model: its checkpoint's default score. The ensemble: among the scores every member
        is calibrated for, the members' most common default (ties and fallbacks in the order
        chi2_psf, chi2, mse).
        """
        if name != ENSEMBLE:
            return self.models[name].checkpoint.config.default_score
        shared = set.intersection(
            *(set(self.models[m].checkpoint.config.calibrations) for m in self.ensemble_members)
        )
        defaults = [self.models[m].checkpoint.config.default_score for m in self.ensemble_members]
        ranked = sorted(
            shared,
            key=lambda s: (-defaults.count(s), _rank(s)),
        )
        return ranked[0] if ranked else "mse"

    def resolve_score(self, name: str, score: str | None) -> str:
        """The score a request means; UnknownScoreError lists the registered ones, and the
        ensemble refuses a score one of its members is not calibrated for."""
        score = get_score(score).name if score is not None else self.default_score(name)
        if name == ENSEMBLE:
            missing = [
                m for m in self.ensemble_members if self.models[m].calibration_for(score) is None
            ]
            if missing:
                raise UncalibratedScoreError(
                    f"the ensemble needs every member calibrated for score {score!r}; "
                    f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not"
                )
        return score

    def ensemble_threshold(self, score: str) -> float:
        """The ensemble's flag threshold in percentile units: 100 (1 - fpr), using the
        smallest fpr among its members' calibrations of `score` (the most conservative)."""
        fprs = [
            c.fpr for m in self.ensemble_members if (c := self.models[m].calibration_for(score))
        ]
        return 100.0 * (1.0 - min(fprs)) if fprs else 95.0

    # ---- scoring (runs in a worker thread) --------------------------------------------------

    def score(
        self,
        name: str,
        uploads: list[Upload],
        threshold: float | None = None,
        include_images: bool = True,
        score: str | None = None,
    ) -> ScoreResponse:
        """Score `uploads` with model `name` (or the ensemble) by the named score (None: the
        default); unreadable files get `error`."""
        score = self.resolve_score(name, score)
        members = self.ensemble_members if name == ENSEMBLE else [name]
        size = self.models[members[0]].size
        psf = self.models[members[0]].psf_sigma_pixels
        prepared = self.decoder.prepare_all(uploads, size, self.settings.max_pixels)
        good = [p for p in prepared if p.error is None]
        if not good:
            raise NoReadableFileError([(p.filename, p.error or "unreadable") for p in prepared])
        batch = np.stack([p.image for p in good if p.image is not None])  # (N, 1, S, S)
        # A single model's residual map comes with its scores; the ensemble's is drawn from
        # the members' mean reconstruction below.
        map_of = score if include_images and name != ENSEMBLE else None
        with self._compute:
            scored = {
                m: score_array(
                    self.models[m].checkpoint.model, batch, device=self.device,
                    batch_size=self.settings.batch_size, keep_reconstructions=include_images,
                    scores=[score], psf_sigma_pixels=self.models[m].psf_sigma_pixels,
                    map_of=map_of,
                )
                for m in members
            }  # fmt: skip
        units: Literal["score", "percentile"]
        if name == ENSEMBLE:
            results = self._ensemble_results(good, scored, score, threshold)
            units = "percentile"
        else:
            results = self._single_results(self.models[name], good, scored[name], score, threshold)
            units = "score"
        if include_images:
            recons = [s.reconstruction for s in scored.values() if s.reconstruction is not None]
            recon = np.mean(recons, axis=0)  # (N, 1, S, S); the ensemble's: the members' mean
            maps = None if name == ENSEMBLE else scored[name].residual_map
            scales = [self.models[m].pixel_residual_scale for m in members]
            known = [v for v in scales if v is not None]
            pixel_scale = float(np.mean(known)) if len(known) == len(scales) else None
            attach_images(results, batch, recon, score, psf, maps, pixel_scale)
        in_order = iter(results)
        return ScoreResponse(
            model=name,
            score=score,
            threshold_units=units,
            results=[
                ScoreResult(filename=p.filename, error=p.error) if p.error else next(in_order)
                for p in prepared
            ],
        )

    @staticmethod
    def _single_results(
        model: ServedModel,
        good: list[Prepared],
        scored: ScoredBatch,
        score: str,
        threshold: float | None,
    ) -> list[ScoreResult]:
        values = scored.scores[score]
        verdict = judge(values, model.calibration_for(score), threshold)
        results = []
        for i, p in enumerate(good):
            results.append(
                ScoreResult(
                    filename=p.filename,
                    score=score,
                    anomaly_score=float(values[i]),
                    reconstruction_loss=float(scored.loss[i]),
                    threshold=verdict.threshold,
                    is_anomaly=None if verdict.is_anomaly is None else bool(verdict.is_anomaly[i]),
                    percentile=None if verdict.percentile is None else float(verdict.percentile[i]),
                    w1=float(scored.w1[i]),
                    input_shape=list(p.input_shape or ()),
                    resized=p.resized,
                    warnings=list(p.warnings),
                )
            )
        return results

    def _ensemble_results(
        self,
        good: list[Prepared],
        scored: dict[str, ScoredBatch],
        score: str,
        threshold: float | None,
    ) -> list[ScoreResult]:
        verdicts = {
            m: judge(s.scores[score], self.models[m].calibration_for(score))
            for m, s in scored.items()
        }
        percentiles = []
        for v in verdicts.values():
            assert v.percentile is not None  # members are calibrated for `score` (resolve_score)
            percentiles.append(v.percentile)
        mean_pct = np.mean(percentiles, axis=0)  # (N,)
        if threshold is None:
            threshold = self.ensemble_threshold(score)
        overall = judge(mean_pct, None, threshold)  # the same rule, in percentile units
        assert overall.is_anomaly is not None
        results = []
        for i, p in enumerate(good):
            members = []
            for m, s in scored.items():
                v = verdicts[m]
                assert v.threshold is not None and v.is_anomaly is not None
                assert v.percentile is not None
                members.append(
                    MemberScore(
                        model=m,
                        score=score,
                        anomaly_score=float(s.scores[score][i]),
                        reconstruction_loss=float(s.loss[i]),
                        w1=float(s.w1[i]),
                        percentile=float(v.percentile[i]),
                        threshold=v.threshold,
                        is_anomaly=bool(v.is_anomaly[i]),
                    )
                )
            results.append(
                ScoreResult(
                    filename=p.filename,
                    score=score,
                    threshold=threshold,
                    is_anomaly=bool(overall.is_anomaly[i]),
                    percentile=float(mean_pct[i]),
                    input_shape=list(p.input_shape or ()),
                    resized=p.resized,
                    warnings=list(p.warnings),
                    members=members,
                )
            )
        return results


def _rank(score: str) -> int:
    return SCORE_PREFERENCE.index(score) if score in SCORE_PREFERENCE else len(SCORE_PREFERENCE)

"""The model service: start-up loading and readiness, request resolution, batched scoring.

`prepare()` runs in the app's lifespan (folders, configs, device), then `load_models()` in
the background (`app.startup.Startup`): it loads and warms up every checkpoint (a bad one
raises CheckpointError naming the file: the server stops rather than serve half-broken) and
records each one's state for /ready. `score()` runs in a worker thread: decoding in killable
worker processes (`app.decode_pool`), one batched forward pass per model through
`deeplense.inference` (as evaluation and the `score` CLI), then the response. Forward passes
hold one lock: requests queue for the device instead of fighting over its cores.
"""

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import torch

from app.admission import Admission
from app.decode_pool import DecodePool
from app.ensemble import ENSEMBLE, Ensemble, pick_members
from app.errors import NoReadableFileError
from app.imaging import Upload, prepare
from app.loading import check_configs, describe_loading, load_all, pick_default
from app.request_instrument import request_instrument
from app.responses import response_of, scored_results
from app.runtime import TrimWhenIdle, keep_freed_memory
from app.schemas import ScoreResponse
from app.served import ModelState, ServedModel
from app.settings import Settings
from app.startup import Startup, StartupState
from deeplense.device import resolve_device
from deeplense.errors import CheckpointError, NotReadyError, UnknownModelError
from deeplense.inference import score_observations
from deeplense.scores import get_score
from models.checkpoint import find_checkpoints

logger = logging.getLogger(__name__)

SCORING_SLOTS = 2  # requests scored at once: one in the forward pass while the next decodes
# Forward passes of about CHECK_EVERY_S seconds, at least MIN_CHUNK images: between two, a
# request nobody waits for stops. LensFit fits 4 images at a time 1.9x faster per image than
# 1, 16 only 1.3x faster than 4 (2-core CPU, one thread, in-process), so chunks of 4 or more
# cost it little; a CNN's chunk is the whole batch_size.
CHECK_EVERY_S = 1.0
MIN_CHUNK = 4


class ModelService:
    """Every model the service loaded, their readiness, and the scoring entry point."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.device = torch.device("cpu")
        self.models: dict[str, ServedModel] = {}
        self.states: dict[str, ModelState] = {}
        self.default_model: str | None = None
        self.default_reason = ""
        self.ensemble: Ensemble | None = None
        self.found: dict[str, Path] = {}
        self.started = False  # True once discovery ran (the lifespan began)
        self.loaded = False  # True once every model is ready and the default is chosen
        self.closed = False
        self.startup = Startup(
            self.load_models, lambda: describe_loading(self.states), settings.startup_timeout_s
        )
        self._life = threading.Lock()  # load_models' end vs close()
        self._compute = threading.Lock()
        self.limiter = anyio.CapacityLimiter(SCORING_SLOTS)
        self.decoder = DecodePool(settings)  # decoding in killable worker processes
        self.admission = Admission(settings)  # how much work is admitted (app.admission)
        self.trimmer = TrimWhenIdle(lambda: self.admission.busy)  # RSS back after work

    # ---- start-up -------------------------------------------------------------------------

    def discover(self) -> dict[str, Path]:
        """Find the checkpoint folders and mark them pending; CheckpointError when none."""
        root = self.settings.checkpoint_dir
        found = find_checkpoints(root)
        if not found:
            raise CheckpointError(f"{root}: no checkpoint folders (none holds a config.json)")
        self.states = {name: ModelState.PENDING for name in found}
        self.found, self.started = found, True
        return found

    def prepare(self) -> None:
        """The fast checks, before the server answers: the folders, each config.json, the
        device and the default model's name (one-line errors). `load_models` does the rest."""
        check_configs(self.discover(), self.settings.default_model)
        self.device = resolve_device(self.settings.device)
        if self.settings.torch_threads is not None:
            torch.set_num_threads(self.settings.torch_threads)
        keep_freed_memory()

    def load_models(self) -> None:
        """Load, check and warm up every checkpoint, then pick the default and the ensemble
        (in the start-up thread, app.startup.Startup)."""
        self.models = load_all(self.found, self.device, self.states)
        members = pick_members(self.models)
        if self.settings.default_model == ENSEMBLE and not members:
            raise UnknownModelError(ENSEMBLE, sorted(self.models))
        self.ensemble = Ensemble([self.models[m] for m in members]) if members else None
        wanted = self.settings.default_model
        self.default_model, self.default_reason = pick_default(self.models, self.choices(), wanted)
        with self._life:  # not after close(): no workers left behind
            if self.closed:
                return
            self.decoder.start()
            self.trimmer.start()
            self.loaded = True
        members_text = ", ".join(self.ensemble_members) or "(none)"
        logger.info("default model %s; ensemble members %s", self.default_model, members_text)

    def close(self, timeout_s: float = 30.0) -> None:
        """Wait (bounded) for forward passes still running, e.g. of requests past their
        deadline, so the process does not exit under a running torch kernel."""
        with self._life:
            self.closed = True
        if self._compute.acquire(timeout=timeout_s):
            self._compute.release()
        self.decoder.close()
        self.trimmer.stop()

    @property
    def ready(self) -> bool:
        return self.loaded and self.startup.state is StartupState.READY

    @property
    def ensemble_members(self) -> list[str]:
        """The ensemble's member names ([] when there is no ensemble)."""
        return [] if self.ensemble is None else self.ensemble.names

    def not_ready(self) -> dict[str, str]:
        """Configured models that are not ready yet, with their state."""
        return {n: s.value for n, s in self.states.items() if s is not ModelState.READY}

    def why_not_ready(self) -> str | None:
        """Why requests cannot be served yet (for /ready and a request's 503), or None."""
        if self.startup.problem is not None:
            return self.startup.problem
        if not self.started:
            return "the service is starting, checkpoints not discovered yet"
        if not self.ready:
            seconds = self.startup.seconds
            return f"still loading ({seconds:.0f} s so far): {describe_loading(self.states)}"
        return None

    def require_ready(self) -> None:
        """NotReadyError saying why, unless start-up is done and every model is ready."""
        if (reason := self.why_not_ready()) is not None:
            raise NotReadyError(f"not ready: {reason}")

    def choices(self) -> list[str]:
        """Valid values of ?model=: the loaded names, plus ensemble when it is available."""
        return sorted(self.models) + ([ENSEMBLE] if self.ensemble else [])

    def resolve(self, name: str | None) -> str:
        """The model a request means (None = default); UnknownModelError lists the valid ones."""
        name = name or self.default_model
        if name is None or name not in self.choices():
            raise UnknownModelError(str(name), self.choices())
        return name

    def cost_s(self, name: str, n_files: int) -> float:
        """Estimated seconds to score `n_files` files with `name` (the ensemble: every member),
        from each model's measured seconds per image, whatever the files' sizes."""
        members = self.ensemble.members if name == ENSEMBLE and self.ensemble else [self.get(name)]
        return n_files * sum(m.cost_per_image_s for m in members)

    def get(self, name: str) -> ServedModel:
        """A loaded model by name (not the ensemble)."""
        if name not in self.models:
            raise UnknownModelError(name, sorted(self.models))
        return self.models[name]

    def default_score(self, name: str) -> str:
        """The score a request to model `name` (or the ensemble) gets when it names none."""
        if name == ENSEMBLE and self.ensemble is not None:
            return self.ensemble.default_score()
        return self.models[name].default_score

    def resolve_score(self, name: str, score: str | None) -> str:
        """The score a request means: registered (UnknownScoreError), drawn by the model or
        every ensemble member (ScoreNotOfferedError), calibrated in every member."""
        score = get_score(score).name if score is not None else self.default_score(name)
        (self.ensemble if name == ENSEMBLE and self.ensemble else self.get(name)).check_score(score)
        return score

    # ---- scoring (runs in a worker thread) --------------------------------------------------

    def score(
        self,
        name: str,
        uploads: list[Upload],
        threshold: float | None = None,
        include_images: bool = True,
        score: str | None = None,
        psf: Upload | None = None,
        pixel_scale: float | None = None,
        check: Callable[[], None] | None = None,
    ) -> ScoreResponse:
        """Score `uploads` with model `name` (or the ensemble) by the named score (None: the
        default); `psf` (a FITS or .npy kernel) and `pixel_scale` (arcsec) apply to every
        image that carries none of its own; unreadable files get `error`. `check` runs
        between files and between chunks of images: what it raises ends the work."""
        started = time.perf_counter()
        score = self.resolve_score(name, score)
        ensemble = self.ensemble if name == ENSEMBLE else None
        members = list(ensemble.members) if ensemble else [self.models[name]]
        first = members[0]
        instrument = request_instrument(self.decoder, psf, pixel_scale, self.settings.max_pixels)
        decoded = self.decoder.decode_all(uploads, self.settings.max_pixels, check)
        card = first.checkpoint.config.input.instrument()
        smallest = self.settings.min_image_side
        own_grid = ensemble is None and first.renders_any_grid  # the ensemble: the model's grid
        prepared = [
            prepare(u.filename, d, first.size, card, instrument, smallest, own_grid)
            for u, d in zip(uploads, decoded, strict=True)
        ]
        good = [p for p in prepared if p.observation is not None]
        if not good:
            raise NoReadableFileError([(p.filename, p.error or "unreadable") for p in prepared])
        observations = [p.observation for p in good if p.observation is not None]
        # A single model's residual map comes with its scores; the ensemble's is drawn from
        # the members' mean reconstruction (attach_images).
        map_of = score if include_images and ensemble is None else None
        queued = time.perf_counter()
        with self._compute:
            queued = time.perf_counter() - queued  # waiting for the other slot's pass
            scored, forward = {}, {}
            for m in members:  # chunks of about CHECK_EVERY_S: a cancelled request stops soon
                began = time.perf_counter()
                scored[m.name] = score_observations(
                    m.checkpoint.model, observations, device=self.device,
                    batch_size=m.chunk(self.settings.batch_size, CHECK_EVERY_S, MIN_CHUNK),
                    keep_reconstructions=include_images, scores=[score], map_of=map_of,
                    check=check,
                )  # fmt: skip
                forward[m.name] = time.perf_counter() - began
        results, units = scored_results(
            members, ensemble, good, scored, score, threshold, include_images
        )
        # A request's cost: its forward pass plus a share of its decoding and images.
        rest = time.perf_counter() - started - queued - sum(forward.values())
        for m in members:
            m.observe(forward[m.name] + rest / len(members), len(observations))
        return response_of(name, score, units, prepared, results)

"""The app factory and its lifespan. `uvicorn app.main:app` serves the module-level app;
tests build their own with `create_app(settings)`."""

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi_offline import FastAPIOffline

from app.admission import AdmissionMiddleware
from app.docs_csp import DocsContentSecurityPolicy
from app.errors import install_error_handlers
from app.limits import BodyLimitMiddleware, TimeoutMiddleware
from app.metrics import install_metrics
from app.openapi import install_openapi
from app.routes import health, models, score, ui
from app.service import ModelService
from app.settings import Settings, SettingsError, get_settings
from app.startup import OneLineStartupErrors, stop_server
from deeplense.numerics import set_process_numerics

logger = logging.getLogger(__name__)

DESCRIPTION = """
Anomaly scores for strong-lensing images: a model trained only on images **without**
dark-matter substructure reconstructs each uploaded image, and a high reconstruction error
flags a likely substructure (arXiv 2008.12731).

* `POST /score`: upload FITS, .npy, PNG or TIFF files; get the reconstruction loss, its
  percentile among calibration normals, the anomaly flag and the images.
* `GET /models`: model cards (architecture, calibration, evaluation metrics, training).
* `GET /health`, `GET /ready`, `GET /metrics`: operations.

When the service runs with an API key, send it in the `X-API-Key` header.
"""


def configure_logging(level: str) -> None:
    """Give the project's loggers a level and, when nothing else did, a stderr handler."""
    for name in ("app", "deeplense", "models"):
        log = logging.getLogger(name)
        log.setLevel(level)
        if not log.handlers and not logging.getLogger().handlers:
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter("%(levelname)s:     %(name)s: %(message)s"))
            log.addHandler(handler)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; nothing is loaded until the lifespan starts (server start-up), and the
    models load in the background from there (`wait_started` waits for them)."""
    if settings is None:
        settings = get_settings()
    configure_logging(settings.log_level)
    set_process_numerics()  # the same as the training CLI's (deeplense.numerics)
    service = ModelService(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # The fast checks first: a missing folder or a bad config.json raises CheckpointError
        # naming its file, and the server does not start (OneLineStartupErrors: one line).
        await anyio.to_thread.run_sync(service.prepare)
        # Then the weights load in the background while the server answers (503 meanwhile).
        # A failure there stops the server, by a signal as `docker stop` would, when the
        # server runs on the main thread (uvicorn catches signals only there); otherwise
        # (TestClient, an embedding host) the service stays up and /ready says why.
        on_main_thread = threading.current_thread() is threading.main_thread()
        service.startup.start(stop=stop_server if on_main_thread else None)
        yield
        await anyio.to_thread.run_sync(service.close)

    # FastAPIOffline: a FastAPI whose /docs and /redoc load Swagger UI and ReDoc from the
    # fastapi-offline package (under /static-offline-docs), never from a CDN.
    app = FastAPIOffline(
        title="DeepLense anomaly service",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.service = service
    install_error_handlers(app)
    # Middlewares, innermost first: body limit, admission (API key and room, before the
    # body is read), deadline, metrics, CORS (outermost, so that even a 413, 503 or 504
    # carries the CORS headers a browser needs to read it).
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_request_bytes)
    app.add_middleware(
        AdmissionMiddleware,
        admission=service.admission,
        settings=settings,
        require_ready=service.require_ready,
    )
    app.add_middleware(TimeoutMiddleware, seconds=settings.request_timeout_s)
    app.state.metrics = install_metrics(app)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["X-API-Key", "Content-Type"],
        )
    for router in (score.router, models.router, health.router, ui.router):
        app.include_router(router)
    app.add_middleware(DocsContentSecurityPolicy, paths={"/docs", "/redoc"})
    app.add_middleware(OneLineStartupErrors)
    install_openapi(app, settings)
    return app


def wait_started(app: FastAPI, timeout_s: float = 120.0) -> None:
    """Block until the app's models are loaded (after its lifespan began); re-raise the
    start-up's error, or NotReadyError when it is still running after `timeout_s`."""
    app.state.service.startup.wait(timeout_s)


try:
    app = create_app()
except SettingsError as exc:  # uvicorn imports this module: one line, not a traceback
    raise SystemExit(f"error: {exc}") from None

"""FastAPI dependencies as `Annotated` aliases: settings, the model service, the API key.

All are `async def`: FastAPI runs a plain `def` dependency in the thread pool, a thread hop
per dependency per request for functions that only read an attribute. The settings come
from `app.state.settings` (what `create_app` was given, by default `get_settings()`) rather
than a `dependency_overrides` entry: with any override present FastAPI re-analyses every
dependency signature on every request (about 1 ms each request, measured).
"""

from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader

from app.api_key import check_api_key
from app.metrics import ScoringMetrics
from app.service import ModelService
from app.settings import Settings


async def get_app_settings(request: Request) -> Settings:
    """The settings the app was created with."""
    settings: Settings = request.app.state.settings
    return settings


SettingsDep = Annotated[Settings, Depends(get_app_settings)]


async def get_service(request: Request) -> ModelService:
    """The app's ModelService (made by create_app, loaded by the lifespan)."""
    service: ModelService = request.app.state.service
    return service


async def get_ready_service(service: Annotated[ModelService, Depends(get_service)]) -> ModelService:
    """The ModelService once every model is ready; NotReadyError (503) before."""
    service.require_ready()
    return service


async def get_metrics(request: Request) -> ScoringMetrics:
    """The app's scoring counters."""
    metrics: ScoringMetrics = request.app.state.metrics
    return metrics


ServiceDep = Annotated[ModelService, Depends(get_service)]
ReadyServiceDep = Annotated[ModelService, Depends(get_ready_service)]
MetricsDep = Annotated[ScoringMetrics, Depends(get_metrics)]

_api_key_header = APIKeyHeader(
    name="X-API-Key",
    auto_error=False,
    description="Needed only when the service runs with DEEPLENSE_API_KEY set.",
)


async def require_api_key(
    settings: SettingsDep, key: Annotated[str | None, Security(_api_key_header)]
) -> None:
    """401 unless the X-API-Key header matches the configured key (no-op when none is set)."""
    check_api_key(settings, key)

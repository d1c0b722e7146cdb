"""Liveness and readiness probes (always open, no API key)."""

from typing import Any

import torch
from fastapi import APIRouter
from fastapi.responses import JSONResponse

from app.dependencies import ServiceDep
from app.errors import RETRY_AFTER_S
from app.health_schemas import Health, Readiness
from app.service import ModelService

router = APIRouter(tags=["operations"])


def runtime_info(service: ModelService) -> dict[str, Any]:
    """The RuntimeInfo fields: the device chosen at start-up, torch and its CUDA."""
    return {
        "device": str(service.device) if service.loaded else None,
        "device_setting": service.settings.device,
        "torch_version": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
    }


@router.get("/health", summary="Liveness: the process answers")
async def health(service: ServiceDep) -> Health:
    """Always 200 while the process runs, even while models load; `state` says how start-up
    goes."""
    return Health(state=service.startup.state.value, **runtime_info(service))


@router.get(
    "/ready",
    summary="Readiness: every model loaded and warmed up, and room for more work",
    response_model=Readiness,
    responses={
        503: {
            "model": Readiness,
            "description": "Start-up still runs (the body says which model it loads) or failed "
            "(the body says why), or the service is saturated: its admitted work or request "
            "bodies in flight are at their bound, so a load balancer should send new requests "
            "elsewhere for now.",
            "content": {
                "application/json": {
                    "example": {
                        "ready": False,
                        "detail": "not ready: still loading (3 s so far): vae (loading), rbm "
                        "(pending); 2 of 4 models ready",
                        "models": {"aae": "ready", "vae": "loading", "rbm": "pending"},
                        "not_ready": ["vae", "rbm"],
                        "saturated": False,
                        "device": None,
                        "device_setting": "auto",
                        "torch_version": "2.13.0+cpu",
                        "torch_cuda": None,
                        "cuda_available": False,
                    }
                }
            },
        }
    },
)
async def ready(service: ServiceDep) -> JSONResponse:
    """200 once every configured checkpoint is loaded and warmed up and the service has room
    for more work, else 503."""
    states = {name: state.value for name, state in service.states.items()}
    waiting = service.not_ready()
    saturation = service.admission.saturation()
    ready = service.ready and saturation is None
    reason = service.why_not_ready()
    detail = f"not ready: {reason}" if reason else saturation or f"all {len(states)} models ready"
    body = Readiness(
        ready=ready,
        detail=detail,
        models=states,
        not_ready=list(waiting),
        saturated=saturation is not None,
        **runtime_info(service),
    )
    if ready:
        return JSONResponse(body.model_dump())
    return JSONResponse(
        body.model_dump(), status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)}
    )

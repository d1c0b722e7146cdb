"""Liveness and readiness probes (always open, no API key)."""

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from app.dependencies import ServiceDep
from app.schemas import Health, Readiness

router = APIRouter(tags=["operations"])


@router.get("/health", summary="Liveness: the process answers")
async def health() -> Health:
    """Always 200 while the process runs, even while models load."""
    return Health()


@router.get(
    "/ready",
    summary="Readiness: every model loaded and warmed up",
    response_model=Readiness,
    responses={
        503: {
            "model": Readiness,
            "description": "Some configured model is not ready; the body says which.",
            "content": {
                "application/json": {
                    "example": {
                        "ready": False,
                        "detail": "not ready: vae (loading), rbm (pending)",
                        "models": {"aae": "ready", "vae": "loading", "rbm": "pending"},
                        "not_ready": ["vae", "rbm"],
                    }
                }
            },
        }
    },
)
async def ready(service: ServiceDep) -> JSONResponse:
    """200 once every configured checkpoint is loaded and warmed up, else 503."""
    states = {name: state.value for name, state in service.states.items()}
    waiting = service.not_ready()
    if service.ready:
        detail = f"all {len(states)} models ready"
    elif not service.started:
        detail = "not ready: the service is starting, checkpoints not discovered yet"
    else:
        listed = ", ".join(f"{n} ({s})" for n, s in waiting.items())
        detail = "not ready: " + (listed or "finishing start-up")
    body = Readiness(ready=service.ready, detail=detail, models=states, not_ready=list(waiting))
    return JSONResponse(body.model_dump(), status_code=200 if service.ready else 503)

"""POST /score: upload one or more images, get each one's anomaly score."""

from functools import partial
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Query, Request, UploadFile

from app.admission import ADMISSION_DEADLINE, CLIENT
from app.cancel import run_while_awaited
from app.dependencies import MetricsDep, ReadyServiceDep, SettingsDep, require_api_key
from app.imaging import check_file_count, read_uploads
from app.schemas import ErrorBody, ScoreResponse
from deeplense.scores import SCORES, list_scores
from models import list_models

router = APIRouter(tags=["score"], dependencies=[Depends(require_api_key)])

# The documented names come from the registries, so a new model or score is listed for free.
MODEL_DESCRIPTION = (
    f"A loaded checkpoint, named after its folder (the registered models: "
    f"{', '.join(list_models())}), or ensemble. Default: the service's default model, "
    "GET /models says which."
)
SCORE_DESCRIPTION = (
    "Anomaly score to judge by: "
    + "; ".join(f"{name} ({SCORES[name].description})" for name in list_scores())
    + ". Default: the model's (GET /models says which). reconstruction_loss (the MSE) is "
    "returned either way."
)


def _error(description: str, example: Any) -> dict[str, Any]:
    return {
        "model": ErrorBody,
        "description": description,
        "content": {"application/json": {"example": {"detail": example}}},
    }


_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _error("the body is not valid multipart/form-data", "Invalid multipart data."),
    401: _error("API key required and missing or wrong", "invalid API key in the X-API-Key header"),
    404: _error(
        "unknown model",
        f"unknown model 'foo'; valid models: {', '.join(sorted([*list_models(), 'ensemble']))}",
    ),
    413: _error(
        "over a byte or file-count limit, or an estimated cost over the whole admission "
        "budget (the detail says how many files fit)",
        "big.fits: 31 MiB (32505856 bytes) exceeds the per-file limit of 20 MiB (20971520 "
        "bytes) (max_file_bytes, env DEEPLENSE_MAX_FILE_BYTES)",
    ),
    422: _error(
        "no uploaded file could be read (one entry per file), an unknown score (the detail "
        "lists the valid ones), a score an ensemble member is not calibrated for, or a bad "
        "query parameter",
        [
            {
                "loc": ["body", "files", 0],
                "msg": "notes.txt: unsupported format",
                "type": "invalid_image",
                "filename": "notes.txt",
            }
        ],
    ),
    429: _error(
        "with an API key set: this client's admitted work is over its share (Retry-After)",
        "too many requests from this client: 9.6 s of its work admitted, and this request's "
        "2.4 s does not fit in its share of 10 s (client_budget_s)",
    ),
    503: _error(
        "models still loading, or the service is overloaded: no room for the request's cost "
        "within a short wait (Retry-After says when to come back)",
        "service overloaded: 19.2 s of scoring work admitted, and this request's 2.4 s does "
        "not fit in the budget of 20 s (admission_budget_s); retry later",
    ),
    504: _error("over the request deadline", "request took longer than 60 s (request_timeout_s)"),
}


@router.post("/score", summary="Score uploaded lensing images", responses=_RESPONSES)
async def score(
    files: Annotated[
        list[UploadFile],
        File(
            min_length=1,
            description="One or more images: FITS (.fits, .fit, .fz), NumPy (.npy), PNG, TIFF. "
            "Each is read as one 2-D image, min-max scaled to [0, 1] and area-resized to the "
            "model's size when it differs.",
        ),
    ],
    request: Request,
    service: ReadyServiceDep,
    settings: SettingsDep,
    metrics: MetricsDep,
    model: Annotated[
        str | None,
        Query(description=MODEL_DESCRIPTION, examples=["lensfit"]),
    ] = None,
    score: Annotated[
        str | None,
        Query(description=SCORE_DESCRIPTION, examples=["chi2_psf_light"]),
    ] = None,
    threshold: Annotated[
        float | None,
        Query(
            description="Override the calibrated threshold: the score's units for a single "
            "model, percentile (0-100) for the ensemble",
            examples=[1.5],
            allow_inf_nan=False,
        ),
    ] = None,
    include_images: Annotated[
        bool,
        Query(description="Return input, reconstruction and residual PNGs (base64)"),
    ] = True,
    psf: Annotated[
        UploadFile | None,
        File(
            description="Optional PSF kernel (FITS: its PSF extension, else its image; or "
            ".npy): odd-sized, non-negative, on the images' pixel grid; normalised here. "
            "Applies to every image that brings no PSF extension of its own.",
        ),
    ] = None,
    pixel_scale: Annotated[
        float | None,
        Query(
            description="Arcsec per pixel of every image whose file states none (FITS "
            "PIXSCALE, CD or CDELT). Default: the model's.",
            gt=0,
            allow_inf_nan=False,
            examples=[0.1],
        ),
    ] = None,
) -> ScoreResponse:
    """Score each file with one model (or the ensemble) in batched forward passes.

    The response has one result per file, in upload order. A file that cannot be read gets
    an `error` and the others are still scored; when no file can be read the answer is 422.
    When the service has no room for the request's cost within a short wait, the answer is
    a prompt 503 (429 for one client's excess, with an API key) with Retry-After.
    """
    name = service.resolve(model)
    score_name = service.resolve_score(name, score)  # a bad name is a 422 before any upload work
    check_file_count(len(files), settings)  # a 413 whatever the load
    cost_s = service.cost_s(name, len(files))
    service.admission.check_cost(cost_s, len(files))  # a 413 when it could never fit
    client = getattr(request.state, CLIENT, "unknown")  # set by the body's gate (app.api_key)
    deadline = getattr(request.state, ADMISSION_DEADLINE, None)  # set by the body's gate
    async with service.admission.work(cost_s, client, deadline):
        uploads = await read_uploads(files, settings)  # into memory only once admitted
        psf_upload = (await read_uploads([psf], settings))[0] if psf is not None else None
        run = partial(
            service.score, name, uploads, threshold, include_images, score_name, psf_upload,
            pixel_scale,
        )  # fmt: skip
        # Off the event loop, at most service.limiter requests at a time (one in the forward
        # pass, the next decoding); the rest wait here, not in threads. Past the deadline (a
        # 504 at once) or once the client has gone, the thread stops at its next check.
        outcome = await run_while_awaited(
            lambda cancellation: run(check=cancellation.check), request.receive, service.limiter
        )
    metrics.record(outcome)
    return outcome

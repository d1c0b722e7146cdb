"""Errors -> HTTP: the one table of status codes, and the exception handlers that use it.

Routes hold no try/except: they (and the modules under them) raise domain exceptions from
`deeplense.errors` or the few service-only ones below, and a handler here turns each into
FastAPI's usual body, `{"detail": ...}`. Anything unexpected becomes a 500 with a safe
message; the traceback goes to the log, never to the client.
"""

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from deeplense.errors import (
    CheckpointError,
    DeepLenseError,
    DeviceError,
    ImageTooLargeError,
    InvalidImageError,
    InvalidInstrumentError,
    NotReadyError,
    PayloadTooLargeError,
    ScoreNotOfferedError,
    UncalibratedScoreError,
    UnknownModelError,
    UnknownScoreError,
)
from deeplense.printable import printable

logger = logging.getLogger(__name__)

MAX_VALIDATION_ERRORS = 10  # entries of a 422 for a malformed request
MAX_ECHOED_CHARS = 64  # characters of an invalid value echoed back in its entry


class InvalidApiKeyError(DeepLenseError):
    """The X-API-Key header is missing or wrong (only when an API key is configured)."""


class RequestTimeoutError(DeepLenseError):
    """A request ran past the configured deadline."""

    @classmethod
    def after(cls, seconds: float) -> "RequestTimeoutError":
        return cls(
            f"request took longer than {seconds:g} s "
            "(request_timeout_s, env DEEPLENSE_REQUEST_TIMEOUT_S)"
        )


class OverloadedError(DeepLenseError):
    """The service has no room for this request within its bounded wait (503); the client
    should come back after `retry_after_s` seconds."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(message)


class ClientOverBudgetError(OverloadedError):
    """One client (with an API key set) holds more admitted work than its share (429)."""


class AbandonedError(DeepLenseError):
    """Nobody waits for the answer any more: the client went away or the deadline passed."""


class NoReadableFileError(DeepLenseError):
    """None of the uploaded files could be read; `problems` holds (filename, message) pairs."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__(f"none of the {len(problems)} uploaded files could be read")


# The table. Looked up along the exception's class hierarchy, most specific class first.
STATUS_CODES: dict[type[DeepLenseError], int] = {
    InvalidApiKeyError: 401,  # no or wrong X-API-Key
    UnknownModelError: 404,  # /score?model=... and /models/{name} alike; detail lists models
    PayloadTooLargeError: 413,  # bytes per file or request, files per request
    ImageTooLargeError: 413,  # pixels per image (when raised for a whole request)
    UnknownScoreError: 422,  # /score?score=...; detail lists the registered scores
    ScoreNotOfferedError: 422,  # a score drawn by a fit the model has not; detail: its scores
    UncalibratedScoreError: 422,  # an ensemble asked for a score a member is not calibrated for
    InvalidImageError: 422,  # unreadable image (normally reported per file in `error`)
    InvalidInstrumentError: 422,  # a request's PSF or pixel scale that cannot be used
    NoReadableFileError: 422,  # a request in which no file could be read
    NotReadyError: 503,  # models still loading
    ClientOverBudgetError: 429,  # one client over its share of admitted work (with an API key)
    OverloadedError: 503,  # no room for the request's cost within the bounded wait
    AbandonedError: 499,  # the client closed the request (nginx's code); nobody reads it
    RequestTimeoutError: 504,  # request_timeout_s exceeded
    CheckpointError: 500,  # only at start-up; listed so it can never leak a traceback
    DeviceError: 500,  # only at start-up (DEEPLENSE_DEVICE=cuda without a GPU)
    DeepLenseError: 400,  # any other deliberate error is the client's
}

RETRY_AFTER_S = 5  # what a 503 (models still loading) tells the client to wait, seconds
_HEADERS: dict[int, dict[str, str]] = {
    401: {"WWW-Authenticate": "APIKey"},
    503: {"Retry-After": str(RETRY_AFTER_S)},
}


def status_for(exc: DeepLenseError) -> int:
    """HTTP status of a domain exception, from the table."""
    for cls in type(exc).__mro__:
        if cls in STATUS_CODES:
            return STATUS_CODES[cls]
    return 400


def detail_for(exc: DeepLenseError) -> Any:
    """The `detail` of the body: the message, or one entry per file for NoReadableFileError."""
    if isinstance(exc, NoReadableFileError):
        return [
            {"loc": ["body", "files", i], "msg": message, "type": "invalid_image", "filename": name}
            for i, (name, message) in enumerate(exc.problems)
        ]
    return str(exc)


def error_response(exc: DeepLenseError) -> JSONResponse:
    """`{"detail": ...}` with the table's status code (also used by the ASGI middlewares);
    an overload's Retry-After is its own estimate."""
    status = status_for(exc)
    headers = _HEADERS.get(status)
    if isinstance(exc, OverloadedError):
        headers = {"Retry-After": str(exc.retry_after_s)}
    return JSONResponse({"detail": detail_for(exc)}, status_code=status, headers=headers)


async def _domain_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, DeepLenseError)
    metrics = getattr(request.app.state, "metrics", None)
    if isinstance(exc, NoReadableFileError) and metrics is not None:
        metrics.record_unreadable(len(exc.problems))
    path, message = printable(request.url.path), printable(exc)  # no forged log lines
    logger.info("%s %s -> %s: %s", request.method, path, status_for(exc), message)
    return error_response(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    # FastAPI turns any error raised while it parses a body into "400 error parsing the body";
    # when that error is ours (the byte counter of app.limits), answer with ours instead.
    if isinstance(exc.__cause__, DeepLenseError):
        return await _domain_error(request, exc.__cause__)
    assert isinstance(exc, StarletteHTTPException)
    return await http_exception_handler(request, exc)


async def _validation_error(request: Request, exc: Exception) -> Response:
    # FastAPI echoes each invalid value in `input` (95 text parts named `files` made a
    # 194 MiB answer): keep at most MAX_VALIDATION_ERRORS entries, inputs cut to a prefix.
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    shown = [_short_error(e) for e in errors[:MAX_VALIDATION_ERRORS]]
    if len(errors) > MAX_VALIDATION_ERRORS:
        shown.append({"msg": f"{len(errors) - MAX_VALIDATION_ERRORS} more errors not shown"})
    return JSONResponse({"detail": shown}, status_code=422)


# Clearer words for FastAPI's messages about the `files` field (no class reprs): a form
# field sent where a file belongs, and no file (a browser's empty file input sends a part
# with an empty filename and no bytes, which FastAPI counts as none).
_FILES_MESSAGES = {
    "value_error": "not a file: a form field without a filename; send each image as a file",
    "missing": "no file uploaded (a part with an empty filename counts as none); send one or "
    "more images as files named `files`",
}


def _short_error(error: Any) -> dict[str, Any]:
    entry = {k: error[k] for k in ("type", "loc", "msg") if k in error}
    if tuple(entry.get("loc", ()))[:2] == ("body", "files"):
        entry["msg"] = _FILES_MESSAGES.get(str(entry.get("type")), entry.get("msg"))
    if "input" in error:
        text = error["input"] if isinstance(error["input"], str) else repr(error["input"])
        cut = len(text) > MAX_ECHOED_CHARS
        entry["input"] = text[:MAX_ECHOED_CHARS] + ("..." if cut else "")
    return jsonable_encoder(entry)


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    logger.exception("unhandled error on %s %s", request.method, printable(request.url.path))
    return JSONResponse(
        {"detail": "internal server error; the service logged the details"}, status_code=500
    )


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers above on `app`."""
    app.add_exception_handler(DeepLenseError, _domain_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected_error)

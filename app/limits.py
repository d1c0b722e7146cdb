"""ASGI middlewares for the request-wide limits: body bytes and the deadline.

Both answer through `app.errors.error_response`, so their bodies and codes come from the
one table. Per-file limits (bytes, pixels, file count) are checked in `app.imaging`.
"""

import time
from contextvars import ContextVar

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import RequestTimeoutError, error_response
from deeplense.errors import PayloadTooLargeError

request_deadline: ContextVar[float | None] = ContextVar("request_deadline", default=None)
"""When the current request's deadline passes (time.monotonic()); None outside a request.
Set by TimeoutMiddleware; work in threads (which copy the context) stops there."""


def describe_bytes(n: int) -> str:
    """A byte count for people: '20 MiB (20971520 bytes)'."""
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:g} {unit} ({n} bytes)"
    return f"{n} bytes"


def request_too_large(limit: int) -> PayloadTooLargeError:
    """The error for a body over `limit` bytes."""
    return PayloadTooLargeError(
        f"request body exceeds the limit of {describe_bytes(limit)} "
        "(max_request_bytes, env DEEPLENSE_MAX_REQUEST_BYTES)"
    )


class BodyLimitMiddleware:
    """413 when a request body is over `max_bytes`: at once from Content-Length when that
    header announces too much, and by counting the bytes as they arrive in any case (a
    missing or lying header does not help)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for key, value in scope["headers"]:
            if key == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await error_response(request_too_large(self.max_bytes))(scope, receive, send)
                return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # Surfaces through FastAPI's body parsing; app.errors unwraps it into a 413.
                    raise request_too_large(self.max_bytes)
            return message

        await self.app(scope, counting_receive, send)


class TimeoutMiddleware:
    """504 when a request takes more than `seconds` from its first byte to its response."""

    def __init__(self, app: ASGIApp, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        request_deadline.set(time.monotonic() + self.seconds)
        try:
            with anyio.fail_after(self.seconds):
                await self.app(scope, receive, tracking_send)
        except TimeoutError:
            if started:  # too late for a status code; the server closes the connection
                raise
            await error_response(RequestTimeoutError.after(self.seconds))(scope, receive, send)

"""Start-up failures in one line.

A bad checkpoint (or device) stops the server at start-up. Starlette reports any lifespan
failure to the server with the whole traceback as its message, which uvicorn prints; for our
own domain errors the message already names the file and the problem, so this middleware
sends that one line instead. Other exceptions (bugs) keep their traceback.
"""

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from deeplense.errors import DeepLenseError


class OneLineStartupErrors:
    """Pure ASGI middleware: rewrites `lifespan.startup.failed` for DeepLenseError."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        held: list[Message] = []

        async def hold_startup_failure(message: Message) -> None:
            if message["type"] == "lifespan.startup.failed":
                held.append(message)  # decided below, once the exception is known
            else:
                await send(message)

        try:
            await self.app(scope, receive, hold_startup_failure)
        except DeepLenseError as exc:
            await send({"type": "lifespan.startup.failed", "message": f"start-up failed: {exc}"})
            raise
        except BaseException:
            for message in held:
                await send(message)
            raise
        for message in held:
            await send(message)

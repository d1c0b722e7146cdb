"""A Content-Security-Policy on the documentation pages: nothing loads from another host.

Swagger UI and ReDoc come from the fastapi-offline package, but ReDoc's bundle still asks
a CDN for its "API docs by Redocly" logo (and hides the image when that fails). With this
policy the browser never makes that request: /docs and /redoc load only from this server.
"""

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Swagger UI and ReDoc start from inline scripts and set inline styles; ReDoc's search runs
# in a blob: worker. Everything else: this origin only.
POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:; connect-src 'self'"
)


class DocsContentSecurityPolicy:
    """Pure ASGI middleware: adds POLICY to the responses of the given paths."""

    def __init__(self, app: ASGIApp, paths: set[str]) -> None:
        self.app = app
        self.paths = paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return

        async def add_policy(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)["Content-Security-Policy"] = POLICY
            await send(message)

        await self.app(scope, receive, add_policy)

"""Start-up: the fast checks before the server answers, the models in the background.

The lifespan runs the fast checks (checkpoint folders, each config.json, device, default
model name) before the server answers: a failure there stops the server at once. Starlette
reports a lifespan failure to the server with the whole traceback as its message, which
uvicorn prints; for our own domain errors the message already names the file and the
problem, so `OneLineStartupErrors` sends that one line instead (bugs keep their traceback).
Then `Startup` loads and warms the weights in a thread while the server answers.
"""

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from enum import StrEnum

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from deeplense.errors import DeepLenseError, NotReadyError

logger = logging.getLogger(__name__)


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


class StartupState(StrEnum):
    """The service's start-up, as /health reports it."""

    STARTING = "starting"
    READY = "ready"
    FAILED = "failed"


def stop_server() -> None:
    """Ask the server hosting this process to stop, as `docker stop` or Ctrl-C would: uvicorn
    shuts down gracefully, then ends by the signal (`deeplense serve` exits 1, its own code)."""
    os.kill(os.getpid(), signal.SIGTERM)


class Startup:
    """Runs the slow part of start-up (loading and warming the weights) in a daemon thread,
    so the server accepts connections at once and /health, /ready and /score answer.

    A failure, or a start-up still running after `timeout_s` (a warm-up that never ends),
    is logged in one line, kept in `problem` for /ready, and then `stop` runs (the server
    exits non-zero). Without a `stop` (an app hosted off the main thread, e.g. by TestClient,
    where a signal would hit the host) the service stays up and /ready says why it is not.
    """

    def __init__(self, load: Callable[[], None], doing: Callable[[], str], timeout_s: float):
        self.load = load
        self.doing = doing  # what start-up is busy with, in words (for the overrun's line)
        self.timeout_s = timeout_s
        self.state = StartupState.STARTING
        self.problem: str | None = None
        self.error: BaseException | None = None
        self.began = time.monotonic()
        self._stop: Callable[[], None] | None = None
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._timer: threading.Timer | None = None

    @property
    def seconds(self) -> float:
        """Seconds since start-up began."""
        return time.monotonic() - self.began

    def start(self, stop: Callable[[], None] | None) -> None:
        """Begin loading in the background; `stop` ends the server on a failure or overrun."""
        self._stop = stop
        self.began = time.monotonic()
        self._timer = threading.Timer(self.timeout_s, self._overrun)
        self._timer.daemon = True
        self._timer.start()
        threading.Thread(target=self._run, name="deeplense-startup", daemon=True).start()

    def wait(self, timeout_s: float) -> None:
        """Block until start-up ends; re-raise its error (NotReadyError after an overrun, or
        when it is still running after `timeout_s`)."""
        self._done.wait(timeout_s)
        if self.state is StartupState.READY:
            return
        if self.error is not None:
            raise self.error
        raise NotReadyError(self.problem or f"start-up still running after {timeout_s:g} s")

    def _run(self) -> None:
        try:
            self.load()
        except DeepLenseError as exc:  # a bad checkpoint: its message names the file
            self._fail(f"start-up failed: {exc}", exc)
        except BaseException as exc:  # a bug: keep its traceback
            logger.exception("start-up failed")
            self._fail(f"start-up failed: {type(exc).__name__}: {exc}", exc, logged=True)
        else:
            with self._lock:
                if self.state is StartupState.STARTING:
                    self.state = StartupState.READY
                    logger.info("start-up done in %.1f s", self.seconds)
            self._done.set()
        finally:
            if self._timer is not None:
                self._timer.cancel()

    def _overrun(self) -> None:
        self._fail(
            f"start-up still running after {self.timeout_s:g} s (startup_timeout_s, env "
            f"DEEPLENSE_STARTUP_TIMEOUT_S): {self.doing()}"
        )

    def _fail(self, problem: str, exc: BaseException | None = None, logged: bool = False) -> None:
        with self._lock:
            if self.state is not StartupState.STARTING:
                return
            self.state, self.problem, self.error = StartupState.FAILED, problem, exc
        if not logged:
            logger.error("%s", problem)
        self._done.set()
        if self._stop is not None:
            self._stop()

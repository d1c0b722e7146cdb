"""Work that stops when nobody waits for it.

A request's scoring runs in a worker thread, which cannot be stopped from outside. Instead it
carries a `Cancellation` and checks it between files and between chunks of images
(`deeplense.inference.score_observations(check=...)`, chunks of about a second): once
the client has gone away, or the deadline has answered 504 (the middleware cancels the
awaiting task), the flag is set and the thread stops at its next check, so no CPU goes to
answers nobody reads.
"""

import threading
from collections.abc import Callable
from functools import partial
from typing import TypeVar

import anyio
from starlette.types import Receive

from app.errors import AbandonedError

T = TypeVar("T")


class Cancellation:
    """Set once nobody waits for the request's answer; `check` raises from then on."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        """AbandonedError once cancelled (called in the worker thread)."""
        if self._event.is_set():
            raise AbandonedError("nobody waits for this request's answer any more")


async def _watch_disconnect(receive: Receive, scope: anyio.CancelScope) -> None:
    # The body has been read: the next message is http.disconnect, once the client goes.
    while (await receive())["type"] != "http.disconnect":
        pass
    scope.cancel()


async def run_while_awaited(
    work: Callable[[Cancellation], T], receive: Receive, limiter: anyio.CapacityLimiter
) -> T:
    """`work(cancellation)` in a worker thread (at most `limiter` at once), cancelled when
    the client disconnects (AbandonedError) or this task is cancelled (the deadline)."""
    cancellation = Cancellation()
    outcome: list[T] = []
    failure: list[Exception] = []
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(_watch_disconnect, receive, group.cancel_scope)
            try:
                outcome.append(
                    await anyio.to_thread.run_sync(
                        partial(work, cancellation), abandon_on_cancel=True, limiter=limiter
                    )
                )
            except Exception as exc:  # re-raised below, outside the task group's wrapping
                failure.append(exc)
            group.cancel_scope.cancel()
    finally:
        cancellation.cancel()  # done, deadline or disconnect: the thread stops if it runs
    if failure:
        raise failure[0]
    if not outcome:
        raise AbandonedError("the client closed the connection before the answer")
    return outcome[0]

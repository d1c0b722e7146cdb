"""Admission control: shed what cannot be served, promptly, instead of queueing toward a 504.

Two gates on `POST /score`, both bounded by `admission_wait_s`:

- before the body is read (`AdmissionMiddleware`): the API key, room for the body's bytes
  among the bodies in flight (`max_inflight_bytes`) and some room for work at all; a request
  refused here costs no upload memory;
- once the files are counted (`Admission.work`, in the route): room for the request's cost,
  its files x its model's measured seconds per image, within `admission_budget_s`, and,
  with an API key set, within its client's share (`client_budget_s`, else 429).

A refusal is an `OverloadedError` (503, or 429 for one client's excess) whose Retry-After
is the estimated seconds until room. Everything here runs on the event loop: no locks.
"""

import math
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api_key import check_api_key, client_identity, keys_of
from app.errors import ClientOverBudgetError, OverloadedError, error_response
from app.limits import describe_bytes
from app.settings import Settings
from deeplense.errors import DeepLenseError, PayloadTooLargeError

MAX_RETRY_AFTER_S = 60
ADMISSION_DEADLINE = "admission_deadline"  # request.state key: when a request's wait ends
CLIENT = "client"  # request.state key: who the request counts against (app.api_key)


@dataclass(eq=False)
class Ticket:
    """One admitted request: its estimated cost (seconds) and its client."""

    cost_s: float
    client: str


class Admission:
    """The admitted work and the bodies in flight, and the bounded waits for room."""

    def __init__(self, settings: Settings) -> None:
        self.budget_s = settings.admission_budget_s
        self.wait_s = settings.admission_wait_s
        # Per client only with an API key: without one, clients behind one proxy share an
        # address and would share a budget. A client is its key's name, else its address.
        self.client_budget_s = settings.client_budget_s if keys_of(settings) else None
        self.max_bytes = settings.max_inflight_bytes
        self.tickets: set[Ticket] = set()
        self.inflight_bytes = 0
        self._waiters: list[anyio.Event] = []

    @property
    def work_s(self) -> float:
        """Estimated seconds of admitted work (running or queued)."""
        return sum(t.cost_s for t in self.tickets)

    @property
    def busy(self) -> bool:
        """Whether any request is admitted or any body in flight."""
        return bool(self.tickets) or self.inflight_bytes > 0

    def check_cost(self, cost_s: float, n_files: int) -> None:
        """PayloadTooLargeError (413) when a request's cost alone exceeds the whole budget: it
        would never fit beside other work, so it is refused at once with what would fit,
        rather than wait for an idle moment that a busy service may never have."""
        if cost_s <= self.budget_s or n_files < 1:
            return
        per_file = cost_s / n_files
        fits = int(self.budget_s // per_file)
        advice = f"send at most {fits} files per request" if fits else "one image costs more"
        raise PayloadTooLargeError(
            f"this request's estimated cost, {cost_s:.1f} s of scoring ({n_files} files x "
            f"{per_file:.3g} s per image, measured), exceeds the whole admission budget of "
            f"{self.budget_s:g} s (admission_budget_s, env DEEPLENSE_ADMISSION_BUDGET_S): "
            f"{advice}, or raise the budget"
        )

    def client_work_s(self, client: str) -> float:
        return sum(t.cost_s for t in self.tickets if t.client == client)

    def saturation(self) -> str | None:
        """Why the service takes no more work now (for /ready), or None."""
        if self.tickets and self.work_s >= self.budget_s:
            return (
                f"saturated: {self.work_s:.1f} s of scoring work admitted, the budget is "
                f"{self.budget_s:g} s (admission_budget_s)"
            )
        if self.inflight_bytes >= self.max_bytes:
            return (
                f"saturated: {describe_bytes(self.inflight_bytes)} of request bodies in "
                f"flight (max_inflight_bytes)"
            )
        return None

    async def take_body(self, n_bytes: int, deadline: float | None = None) -> None:
        """Take `n_bytes` of the in-flight body budget (give it back with `give_body`),
        waiting for room until `deadline` (time.monotonic(); None: wait_s from now)."""

        def fits() -> bool:
            work_room = not self.tickets or self.work_s < self.budget_s
            byte_room = not self.inflight_bytes or self.inflight_bytes + n_bytes <= self.max_bytes
            return work_room and byte_room

        if not await self._wait_for(fits, deadline):
            reason = self.saturation() or "saturated"
            excess = self.work_s - self.budget_s
            raise OverloadedError(
                f"service overloaded ({reason}); retry later", self._retry(excess)
            )
        self.inflight_bytes += n_bytes

    def give_body(self, n_bytes: int) -> None:
        self.inflight_bytes -= n_bytes
        self._wake()

    @asynccontextmanager
    async def work(
        self, cost_s: float, client: str, deadline: float | None = None
    ) -> AsyncIterator[Ticket]:
        """Hold `cost_s` seconds of the work budget while the request is scored, waiting for
        room until `deadline` (the one the body's gate began; None: wait_s from now)."""
        budget = self.client_budget_s

        def client_fits() -> bool:
            held = self.client_work_s(client)
            return budget is None or not held or held + cost_s <= budget

        def fits() -> bool:
            return client_fits() and (not self.tickets or self.work_s + cost_s <= self.budget_s)

        if not await self._wait_for(fits, deadline):
            if not client_fits():
                raise ClientOverBudgetError(
                    f"too many requests from this client ({client}): "
                    f"{self.client_work_s(client):.1f} s "
                    f"of its work admitted, and this request's {cost_s:.1f} s does not fit in "
                    f"its share of {budget:g} s (client_budget_s)",
                    self._retry(self.client_work_s(client) + cost_s - (budget or 0.0)),
                )
            raise OverloadedError(
                f"service overloaded: {self.work_s:.1f} s of scoring work admitted, and this "
                f"request's {cost_s:.1f} s does not fit in the budget of {self.budget_s:g} s "
                "(admission_budget_s); retry later",
                self._retry(self.work_s + cost_s - self.budget_s),
            )
        ticket = Ticket(cost_s, client)
        self.tickets.add(ticket)
        try:
            yield ticket
        finally:
            self.tickets.discard(ticket)
            self._wake()

    async def _wait_for(self, fits: Callable[[], bool], deadline: float | None) -> bool:
        if deadline is None:
            deadline = time.monotonic() + self.wait_s
        while not fits():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            event = anyio.Event()
            self._waiters.append(event)
            with anyio.move_on_after(left):
                await event.wait()
        return True

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for event in waiters:
            event.set()

    def _retry(self, excess_s: float) -> int:
        """Whole seconds until `excess_s` seconds of work have drained, 1 to 60."""
        return min(MAX_RETRY_AFTER_S, max(1, math.ceil(excess_s)))


class AdmissionMiddleware:
    """The gate before the body of `POST /score`: API key, start-up done, bytes in flight,
    room for work."""

    def __init__(
        self,
        app: ASGIApp,
        admission: Admission,
        settings: Settings,
        require_ready: Callable[[], None] = lambda: None,
    ) -> None:
        self.app = app
        self.admission = admission
        self.settings = settings
        self.require_ready = require_ready  # NotReadyError (503) during start-up

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != "/score":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        declared = headers.get("content-length", "")
        limit = self.settings.max_request_bytes
        n_bytes = min(int(declared), limit) if declared.isdigit() else limit
        # One bounded wait for both gates: the route's waits until the same deadline.
        deadline = time.monotonic() + self.admission.wait_s
        scope.setdefault("state", {})[ADMISSION_DEADLINE] = deadline
        try:
            key_name = check_api_key(self.settings, headers.get("x-api-key"))
            address = scope["client"][0] if scope.get("client") else None
            scope["state"][CLIENT] = client_identity(key_name, address)
            self.require_ready()  # a 503 during start-up, before any upload is read
            await self.admission.take_body(n_bytes, deadline)
        except DeepLenseError as exc:
            await error_response(exc)(scope, receive, send)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            self.admission.give_body(n_bytes)

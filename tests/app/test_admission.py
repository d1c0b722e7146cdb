"""Admission by cost (issue 20, D1-D3): prompt 503/429 with Retry-After instead of queueing
toward a 504, /ready while saturated, no body read before a refusal, tiny images refused."""

import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from app.admission import Admission, AdmissionMiddleware, Ticket
from app.errors import ClientOverBudgetError, OverloadedError, status_for
from app.main import create_app
from app.settings import Settings
from deeplense.errors import PayloadTooLargeError
from tests.app.conftest import image, make_settings, started, upload
from tests.encode import npy_bytes


def admission(tiny_checkpoints: Path, **overrides: Any) -> Admission:
    values = {"admission_budget_s": 10.0, "admission_wait_s": 0.0} | overrides
    return Admission(make_settings(tiny_checkpoints, **values))


def test_work_within_the_budget_is_admitted_and_over_it_is_a_503(tiny_checkpoints: Path) -> None:
    gate = admission(tiny_checkpoints)

    async def scenario() -> None:
        async with gate.work(6.0, "a"):
            with pytest.raises(OverloadedError) as refused:
                async with gate.work(6.0, "b"):
                    pass
            assert status_for(refused.value) == 503
            assert refused.value.retry_after_s == 2  # 6 + 6 - 10 seconds of excess
            assert "admission_budget_s" in str(refused.value)
            async with gate.work(4.0, "b"):  # what fits is still admitted
                assert gate.work_s == 10.0
        assert gate.work_s == 0.0
        async with gate.work(6.0, "b"):  # room again once the first is done
            pass

    anyio.run(scenario)


def test_a_request_over_the_whole_budget_is_a_prompt_413_saying_what_fits(
    tiny_checkpoints: Path,
) -> None:
    gate = admission(tiny_checkpoints)  # a budget of 10 s
    gate.check_cost(10.0, 4)  # exactly the budget: admitted when there is room
    with pytest.raises(PayloadTooLargeError) as refused:
        gate.check_cost(12.0, 4)
    assert status_for(refused.value) == 413
    assert str(refused.value) == (
        "this request's estimated cost, 12.0 s of scoring (4 files x 3 s per image, measured), "
        "exceeds the whole admission budget of 10 s (admission_budget_s, env "
        "DEEPLENSE_ADMISSION_BUDGET_S): send at most 3 files per request, or raise the budget"
    )
    with pytest.raises(PayloadTooLargeError, match="one image costs more, or raise"):
        gate.check_cost(11.0, 1)


def test_over_http_a_request_over_the_budget_gets_413_even_when_idle(
    tiny_checkpoints: Path,
) -> None:
    settings = make_settings(tiny_checkpoints, admission_budget_s=2.5, admission_wait_s=5.0)
    with started(create_app(settings)) as client:
        service = client.app.state.service  # type: ignore[attr-defined]
        service.models["dcae"].cost_per_image_s = 1.0  # as if measured: 1 s per image
        files = [upload(f"{i}.npy", npy_bytes(image(i))) for i in range(3)]
        began = time.monotonic()
        response = client.post("/score", params={"model": "dcae"}, files=files)
        assert response.status_code == 413 and time.monotonic() - began < 2.0  # no wait
        detail = response.json()["detail"]
        assert "3.0 s of scoring" in detail and "budget of 2.5 s" in detail
        assert "DEEPLENSE_ADMISSION_BUDGET_S" in detail and "at most 2 files" in detail
        response = client.post("/score", params={"model": "dcae"}, files=files[:2])
        assert response.status_code == 200


def test_a_waiting_request_is_admitted_when_room_frees_within_the_wait(
    tiny_checkpoints: Path,
) -> None:
    gate = admission(tiny_checkpoints, admission_wait_s=30.0)
    order: list[str] = []

    async def first(done: anyio.Event) -> None:
        async with gate.work(8.0, "a"):
            await done.wait()
            order.append("first done")

    async def scenario() -> None:
        done = anyio.Event()
        async with anyio.create_task_group() as group:
            group.start_soon(first, done)
            await anyio.wait_all_tasks_blocked()

            async def release() -> None:
                done.set()

            group.start_soon(release)
            async with gate.work(8.0, "b"):
                order.append("second admitted")

    anyio.run(scenario)
    assert order == ["first done", "second admitted"]


def test_with_an_api_key_one_client_over_its_share_gets_429(tiny_checkpoints: Path) -> None:
    gate = admission(tiny_checkpoints, client_budget_s=4.0, api_key=SecretStr("k"))

    async def scenario() -> None:
        async with gate.work(3.0, "greedy"):
            with pytest.raises(ClientOverBudgetError) as refused:
                async with gate.work(3.0, "greedy"):
                    pass
            assert status_for(refused.value) == 429 and refused.value.retry_after_s == 2
            async with gate.work(3.0, "other"):  # another client still gets in
                pass

    anyio.run(scenario)
    without_key = admission(tiny_checkpoints, client_budget_s=4.0)
    assert without_key.client_budget_s is None


def test_bodies_in_flight_are_capped(tiny_checkpoints: Path) -> None:
    gate = admission(tiny_checkpoints, max_inflight_bytes=1000)

    async def scenario() -> None:
        await gate.take_body(5000)  # alone: over the cap, still served
        with pytest.raises(OverloadedError):
            await gate.take_body(10)
        assert gate.saturation() is not None and "max_inflight_bytes" in gate.saturation()
        gate.give_body(5000)
        await gate.take_body(600)
        with pytest.raises(OverloadedError):
            await gate.take_body(600)
        gate.give_body(600)
        assert gate.inflight_bytes == 0

    anyio.run(scenario)


async def _call(app: Any, headers: list[tuple[bytes, bytes]]) -> tuple[list[dict], bool]:
    """POST /score through `app` with a body that must not be read; what it sent, and
    whether anything asked for the body."""
    sent: list[dict] = []
    asked = False

    async def receive() -> dict:
        nonlocal asked
        asked = True
        return {"type": "http.request", "body": b"x" * 100, "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/score", "headers": headers}
    await app(scope, receive, send)
    return sent, asked


def test_the_gate_answers_401_and_503_without_reading_the_body(tiny_checkpoints: Path) -> None:
    reached: list[str] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        reached.append("app")

    settings = make_settings(tiny_checkpoints, api_key=SecretStr("k"), admission_wait_s=0.0)
    gate = Admission(settings)
    middleware = AdmissionMiddleware(inner, gate, settings)
    sent, asked = anyio.run(_call, middleware, [(b"content-length", b"100")])
    assert sent[0]["status"] == 401 and not asked and reached == []
    gate.tickets.add(Ticket(settings.admission_budget_s, "someone"))  # the budget is full
    sent, asked = anyio.run(_call, middleware, [(b"x-api-key", b"k")])
    assert sent[0]["status"] == 503 and not asked and reached == []
    assert (b"retry-after", b"1") in sent[0]["headers"]
    gate.tickets.clear()
    anyio.run(_call, middleware, [(b"x-api-key", b"k")])
    assert reached == ["app"] and gate.inflight_bytes == 0


def test_a_saturated_service_sheds_with_503_and_ready_says_so(tiny_checkpoints: Path) -> None:
    settings = make_settings(tiny_checkpoints, admission_wait_s=0.0, admission_budget_s=5.0)
    with started(create_app(settings)) as client:
        service = client.app.state.service  # type: ignore[attr-defined]
        assert all(m.cost_per_image_s > 0 for m in service.models.values())  # measured
        assert client.get("/ready").json()["saturated"] is False
        service.admission.tickets.add(Ticket(5.0, "a long request"))
        response = client.post("/score", files=[upload("a.npy", npy_bytes(image()))])
        assert response.status_code == 503
        assert int(response.headers["Retry-After"]) >= 1
        assert "overloaded" in response.json()["detail"]
        ready = client.get("/ready")
        assert ready.status_code == 503 and ready.json()["saturated"] is True
        assert "admission_budget_s" in ready.json()["detail"]
        service.admission.tickets.clear()
        assert client.get("/ready").status_code == 200
        response = client.post("/score", files=[upload("a.npy", npy_bytes(image()))])
        assert response.status_code == 200


def test_a_request_costs_its_files_whatever_their_size(tiny_checkpoints: Path) -> None:
    settings = make_settings(tiny_checkpoints)
    with started(create_app(settings)) as client:
        service = client.app.state.service  # type: ignore[attr-defined]
        one = service.cost_s("dcae", 1)
        assert service.cost_s("dcae", 64) == pytest.approx(64 * one)
        members = service.ensemble.members
        assert service.cost_s("ensemble", 2) == pytest.approx(
            2 * sum(m.cost_per_image_s for m in members)
        )


def test_images_below_the_minimum_side_get_a_file_error(client: TestClient) -> None:
    files = [
        upload("tiny.npy", npy_bytes(image(size=32)[:2, :2])),
        upload("ok.npy", npy_bytes(image())),
    ]
    results = client.post("/score", files=files).json()["results"]
    assert "2 x 2 pixels" in results[0]["error"] and "min_image_side" in results[0]["error"]
    assert results[1]["error"] is None
    only_tiny = [upload(f"{i}.npy", npy_bytes(image(i)[:3, :5])) for i in range(4)]
    response = client.post("/score", files=only_tiny)
    assert response.status_code == 422 and len(response.json()["detail"]) == 4


def test_settings_refuse_a_negative_budget() -> None:
    with pytest.raises(ValueError):
        Settings(admission_budget_s=-1)


def test_clients_with_their_own_keys_have_their_own_share_behind_one_address(
    tiny_checkpoints: Path,
) -> None:
    keys = {"survey-a": SecretStr("ka"), "survey-b": SecretStr("kb")}
    settings = make_settings(
        tiny_checkpoints, api_key=SecretStr("shared"), api_keys=keys, admission_wait_s=0.0,
        client_budget_s=1.5,
    )  # fmt: skip
    with started(create_app(settings)) as client:  # every request comes from one address
        service = client.app.state.service  # type: ignore[attr-defined]
        service.models["dcae"].cost_per_image_s = 1.0
        service.admission.tickets.add(Ticket(1.0, "key survey-a"))  # survey-a is busy

        def post(key: str) -> Any:
            files = [upload("a.npy", npy_bytes(image()))]
            return client.post("/score", params={"model": "dcae"}, files=files,
                               headers={"X-API-Key": key})  # fmt: skip

        refused = post("ka")
        assert refused.status_code == 429 and "(key survey-a)" in refused.json()["detail"]
        assert post("kb").status_code == 200  # another key behind the same address
        assert post("shared").status_code == 200  # the shared key counts by address
        service.admission.tickets.add(Ticket(1.0, "address testclient"))
        refused = post("shared")
        assert refused.status_code == 429 and "(address testclient)" in refused.json()["detail"]
        assert post("wrong").status_code == 401

"""Work that stops when nobody waits (issue 20, D1): after a disconnect or past the deadline
the request's remaining chunks are not computed."""

import threading
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest
import torch

from app.cancel import Cancellation, run_while_awaited
from app.errors import AbandonedError
from app.imaging import Upload
from app.main import create_app
from app.service import ModelService
from deeplense.inference import score_observations
from deeplense.instrument import Instrument
from deeplense.observation import prepare_observation
from tests.app.conftest import image, make_settings, started, upload
from tests.conftest import TINY_SIZE
from tests.encode import npy_bytes


class CountingModel(torch.nn.Module):
    """Identity reconstruction that counts the images it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = 0

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        self.seen += len(x)
        return x.clone()


def test_score_observations_stops_at_the_check_between_batches() -> None:
    observations = [
        prepare_observation(image(i).astype(np.float64), TINY_SIZE, Instrument(), f"{i}.npy")
        for i in range(10)
    ]
    model = CountingModel()
    calls = 0

    def check() -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise AbandonedError("gone")

    with pytest.raises(AbandonedError):
        score_observations(model, observations, batch_size=2, check=check)
    assert model.seen == 4  # two batches of two, then the check stopped the rest


def test_a_cancelled_request_decodes_and_computes_nothing_more(tiny_checkpoints: Path) -> None:
    with started(create_app(make_settings(tiny_checkpoints))) as client:
        service: ModelService = client.app.state.service  # type: ignore[attr-defined]
        cancellation = Cancellation()
        cancellation.cancel()
        uploads = [Upload(f"{i}.npy", npy_bytes(image(i))) for i in range(3)]
        with pytest.raises(AbandonedError):
            service.score("dcae", uploads, check=cancellation.check)


def test_lensfit_is_fitted_in_chunks_of_about_a_second(tiny_checkpoints: Path) -> None:
    with started(create_app(make_settings(tiny_checkpoints))) as client:
        service: ModelService = client.app.state.service  # type: ignore[attr-defined]
        lensfit = service.get("lensfit")
        lensfit.cost_per_image_s = 0.15  # the shipped LensFit's measured cost on 2 cores
        assert lensfit.chunk(64, 1.0, 4) == 6
        lensfit.cost_per_image_s = 0.5  # a loaded machine: never fewer than 4 at a time
        assert lensfit.chunk(64, 1.0, 4) == 4
        lensfit.cost_per_image_s = 0.002  # a CNN's
        assert lensfit.chunk(64, 1.0, 4) == 64
        lensfit.observe(seconds=1.0, n_images=1)  # one slow pass moves the average, not all
        assert 0.002 < lensfit.cost_per_image_s < 1.0


def test_a_client_that_disconnects_cancels_its_work() -> None:
    started, saw_cancel = threading.Event(), threading.Event()

    def work(cancellation: Cancellation) -> str:
        started.set()
        for _ in range(1000):  # a long job checking between chunks
            if cancellation.cancelled:
                saw_cancel.set()
                cancellation.check()
            threading.Event().wait(0.01)
        return "finished"

    async def receive() -> dict[str, Any]:
        while not started.is_set():  # the client leaves once the work runs
            await anyio.sleep(0.01)
        return {"type": "http.disconnect"}

    async def scenario() -> None:
        with pytest.raises(AbandonedError):
            await run_while_awaited(work, receive, anyio.CapacityLimiter(1))

    anyio.run(scenario)
    assert saw_cancel.wait(10)


def test_work_finishes_normally_while_the_client_waits() -> None:
    async def receive() -> dict[str, Any]:
        await anyio.sleep_forever()
        return {}

    async def scenario() -> str:
        return await run_while_awaited(lambda c: "done", receive, anyio.CapacityLimiter(1))

    assert anyio.run(scenario) == "done"


def test_past_the_deadline_the_thread_stops_before_the_forward_pass(
    tiny_checkpoints: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import app.service as service_module

    original = ModelService.score
    forward = threading.Event()
    ended = threading.Event()
    outcome: list[str] = []

    def slow_score(self: ModelService, *args: Any, **kwargs: Any) -> Any:
        try:
            threading.Event().wait(1.0)  # the 0.2 s deadline passes meanwhile
            return original(self, *args, **kwargs)
        except AbandonedError:
            outcome.append("abandoned")
            raise
        finally:
            ended.set()

    def counting_forward(*args: Any, **kwargs: Any) -> Any:
        forward.set()
        return score_observations(*args, **kwargs)

    monkeypatch.setattr(ModelService, "score", slow_score)
    monkeypatch.setattr(service_module, "score_observations", counting_forward)
    settings = make_settings(tiny_checkpoints, request_timeout_s=0.2)
    with started(create_app(settings)) as client:
        response = client.post("/score", files=[upload("a.npy", npy_bytes(image()))])
        assert response.status_code == 504
        assert ended.wait(10)
    assert outcome == ["abandoned"] and not forward.is_set()

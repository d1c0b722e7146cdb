"""A start-up failure reaches the server as one line that names the file, not a traceback."""

from pathlib import Path
from typing import Any

import anyio
import pytest

from app.main import create_app
from deeplense.errors import CheckpointError
from tests.app.conftest import make_settings


async def _start(app: Any) -> list[dict[str, Any]]:
    """Drive the ASGI lifespan start-up as a server does; return what the app sent."""
    sent: list[dict[str, Any]] = []
    messages = iter([{"type": "lifespan.startup"}])

    async def receive() -> dict[str, Any]:
        return next(messages, {"type": "lifespan.shutdown"})

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    with pytest.raises(CheckpointError):
        await app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send)
    return sent


def test_a_bad_checkpoint_dir_fails_start_up_in_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    sent = anyio.run(_start, create_app(make_settings(missing)))
    failed = [m for m in sent if m["type"] == "lifespan.startup.failed"]
    assert len(failed) == 1
    message = failed[0]["message"]
    assert message == f"start-up failed: {missing}: checkpoint directory not found"
    assert "Traceback" not in message

"""Checkpoints are world-readable (0644 files, 0755 folders) whatever the umask or safetensors
chose: the Docker image reads mounted checkpoints as uid 10001."""

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from models.card import config_for
from models.checkpoint import read_config, save_checkpoint, write_config
from tests.conftest import tiny_model


@pytest.fixture
def private_umask() -> Iterator[None]:
    """umask 077, as on a locked-down cluster login: new files 0600, new folders 0700."""
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


def _modes(root: Path) -> dict[str, int]:
    modes = {".": stat.S_IMODE(root.stat().st_mode)}
    for path in root.rglob("*"):
        modes[str(path.relative_to(root))] = stat.S_IMODE(path.stat().st_mode)
    return modes


def test_saved_checkpoint_files_are_0644_and_folders_0755(
    tmp_path: Path, private_umask: None
) -> None:
    model = tiny_model("dcae")
    out = save_checkpoint(model, config_for(model), tmp_path / "ckpt" / "dcae")

    modes = _modes(out)
    assert modes == {".": 0o755, "model.safetensors": 0o644, "config.json": 0o644}


def test_rewritten_config_stays_0644(tmp_path: Path, private_umask: None) -> None:
    model = tiny_model("dcae")
    out = save_checkpoint(model, config_for(model), tmp_path / "dcae")
    write_config(read_config(out), out)
    assert stat.S_IMODE((out / "config.json").stat().st_mode) == 0o644

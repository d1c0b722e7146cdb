"""The checkpoint loader refuses bad folders with one message that names the file."""

import json
import shutil
from pathlib import Path

import pytest

import models
from deeplense.errors import CheckpointError, OutputExistsError
from models.card import config_for
from models.checkpoint import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    find_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from tests.conftest import tiny_model


def _copy(tiny_checkpoints: Path, name: str, tmp_path: Path) -> Path:
    target = tmp_path / name
    shutil.copytree(tiny_checkpoints / name, target)
    return target


def test_tiny_checkpoints_load(tiny_checkpoints: Path, model_name: str) -> None:
    loaded = load_checkpoint(tiny_checkpoints / model_name)
    assert loaded.name == model_name
    assert loaded.config.calibration is not None
    assert model_name in find_checkpoints(tiny_checkpoints)


def test_corrupted_config_json_is_refused(tiny_checkpoints: Path, tmp_path: Path) -> None:
    folder = _copy(tiny_checkpoints, "vae", tmp_path)
    (folder / CONFIG_FILE).write_text('{"architecture": "vae", "arguments": {')
    with pytest.raises(CheckpointError, match=str(folder / CONFIG_FILE)) as info:
        load_checkpoint(folder)
    assert "not valid JSON" in str(info.value)


def test_config_json_with_bad_fields_is_refused(tiny_checkpoints: Path, tmp_path: Path) -> None:
    folder = _copy(tiny_checkpoints, "aae", tmp_path)
    raw = json.loads((folder / CONFIG_FILE).read_text())
    raw["format_version"] = 99
    raw["surprise"] = True
    (folder / CONFIG_FILE).write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match=str(folder / CONFIG_FILE)) as info:
        load_checkpoint(folder)
    assert "format_version" in str(info.value)


def test_unknown_architecture_is_refused(tiny_checkpoints: Path, tmp_path: Path) -> None:
    folder = _copy(tiny_checkpoints, "dcae", tmp_path)
    raw = json.loads((folder / CONFIG_FILE).read_text())
    raw["architecture"] = "gan"
    (folder / CONFIG_FILE).write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match="gan") as info:
        load_checkpoint(folder)
    assert str(folder / CONFIG_FILE) in str(info.value)
    assert "dcae" in str(info.value)  # lists the valid names


def test_truncated_safetensors_is_refused(
    tiny_checkpoints: Path, tmp_path: Path, model_name: str
) -> None:
    folder = _copy(tiny_checkpoints, model_name, tmp_path)
    weights = folder / WEIGHTS_FILE
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=str(weights)) as info:
        load_checkpoint(folder)
    assert "truncated" in str(info.value)


def test_weights_of_another_architecture_are_refused(
    tiny_checkpoints: Path, tmp_path: Path
) -> None:
    folder = _copy(tiny_checkpoints, "vae", tmp_path)
    shutil.copy(tiny_checkpoints / "dcae" / WEIGHTS_FILE, folder / WEIGHTS_FILE)
    with pytest.raises(CheckpointError, match=str(folder / WEIGHTS_FILE)) as info:
        load_checkpoint(folder)
    assert "'vae'" in str(info.value)


def test_weights_of_another_size_are_refused(tmp_path: Path) -> None:
    small = tiny_model("rbm")
    save_checkpoint(small, config_for(small), tmp_path / "rbm")
    bigger = models.create_model("rbm", image_size=32, n_hidden=17)
    save_checkpoint(bigger, config_for(bigger), tmp_path / "other")
    shutil.copy(tmp_path / "other" / WEIGHTS_FILE, tmp_path / "rbm" / WEIGHTS_FILE)
    with pytest.raises(CheckpointError, match="do not match"):
        load_checkpoint(tmp_path / "rbm")


@pytest.mark.parametrize("missing", [CONFIG_FILE, WEIGHTS_FILE])
def test_missing_file_is_named(tiny_checkpoints: Path, tmp_path: Path, missing: str) -> None:
    folder = _copy(tiny_checkpoints, "rbm", tmp_path)
    (folder / missing).unlink()
    with pytest.raises(CheckpointError, match=str(folder / missing)) as info:
        load_checkpoint(folder)
    assert "missing" in str(info.value)


def test_missing_folder_is_named(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=str(tmp_path / "nothing")):
        load_checkpoint(tmp_path / "nothing")


def test_existing_checkpoint_is_not_overwritten(tmp_path: Path) -> None:
    model = tiny_model("dcae")
    save_checkpoint(model, config_for(model), tmp_path / "dcae")
    before = (tmp_path / "dcae" / WEIGHTS_FILE).read_bytes()
    other = tiny_model("dcae", seed=1)
    with pytest.raises(OutputExistsError):
        save_checkpoint(other, config_for(other), tmp_path / "dcae")
    assert (tmp_path / "dcae" / WEIGHTS_FILE).read_bytes() == before
    save_checkpoint(other, config_for(other), tmp_path / "dcae", overwrite=True)
    assert (tmp_path / "dcae" / WEIGHTS_FILE).read_bytes() != before


def test_a_folder_without_config_json_is_skipped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from models.checkpoint import find_checkpoints

    (tmp_path / "half_copied").mkdir()
    (tmp_path / "half_copied" / "model.safetensors").write_bytes(b"")
    (tmp_path / ".cache").mkdir()
    with caplog.at_level("WARNING"):
        assert find_checkpoints(tmp_path) == {}
    assert "half_copied" in caplog.text and "config.json" in caplog.text
    assert ".cache" not in caplog.text


def test_an_unknown_model_name_is_not_echoed_in_full() -> None:
    from deeplense.errors import UnknownModelError

    message = str(UnknownModelError("x" * 10_000, ["aae"]))
    assert len(message) < 200 and "valid models: aae" in message


def test_deeply_nested_config_json_is_one_error(tiny_checkpoints: Path, tmp_path: Path) -> None:
    folder = _copy(tiny_checkpoints, "vae", tmp_path)
    (folder / CONFIG_FILE).write_text("[" * 100_000 + "]" * 100_000)  # RecursionError in json
    with pytest.raises(CheckpointError, match="nested too deeply") as info:
        load_checkpoint(folder)
    assert str(folder / CONFIG_FILE) in str(info.value)


def test_a_huge_image_size_is_one_error(tiny_checkpoints: Path, tmp_path: Path) -> None:
    folder = _copy(tiny_checkpoints, "dcae", tmp_path)
    config = json.loads((folder / CONFIG_FILE).read_text())
    config["arguments"]["image_size"] = 10**9  # layers whose size overflows
    config["input"]["height"] = config["input"]["width"] = 10**9
    (folder / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="cannot build dcae") as info:
        load_checkpoint(folder)
    assert str(folder / CONFIG_FILE) in str(info.value)

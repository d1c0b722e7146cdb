"""deeplense.vocabulary.dataset_label: the one name a card or calibration gives a data folder."""

import json
from pathlib import Path

import pytest

from deeplense.vocabulary import MANIFEST_FILE, MANIFEST_FORMAT, dataset_label


def test_a_simulated_set_is_named_by_its_manifest(tmp_path: Path) -> None:
    folder = tmp_path / "my_copy"
    folder.mkdir()
    manifest = {"format_version": MANIFEST_FORMAT, "dataset": "model_r"}
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest))
    assert dataset_label(folder) == "model_r"


def test_a_folder_without_a_manifest_is_named_by_itself_even_as_dot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "own_images"
    folder.mkdir()
    assert dataset_label(folder) == "own_images"
    monkeypatch.chdir(folder)
    assert dataset_label(Path(".")) == "own_images"  # Path(".").name would be ""

"""`deeplense default-model`: the set's default model said, and recorded with --record."""

import shutil
from pathlib import Path

import pytest

from models.checkpoint import read_config, write_config
from models.selection import DefaultChoice, choose_default_model
from training.__main__ import main
from training.default_record import (
    read_default_choice,
    record_default_choice,
    recorded_choice,
    with_choice,
)


@pytest.fixture
def checkpoints(tiny_checkpoints: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_checkpoints, tmp_path / "ckpt"))


def _cards(root: Path) -> dict:
    return {f.name: read_config(f) for f in sorted(root.iterdir()) if f.is_dir()}


def _config_bytes(root: Path) -> dict[str, bytes]:
    return {f.name: (f / "config.json").read_bytes() for f in root.iterdir() if f.is_dir()}


def test_it_says_the_choice_and_the_cards_that_record_another_without_writing(
    checkpoints: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _config_bytes(checkpoints)
    choice = choose_default_model(_cards(checkpoints))
    assert main(["default-model", "--checkpoints", str(checkpoints)]) == 0
    out = capsys.readouterr().out
    assert f"serves {choice.model} ({choice.score}) by default: {choice.reason}" in out
    stale = sorted(n for n, c in _cards(checkpoints).items() if recorded_choice(c) is None)
    assert stale and f"another choice or none: {', '.join(stale)}" in out
    assert _config_bytes(checkpoints) == before  # said, not written


def test_record_writes_the_choice_into_every_card_that_differs(
    checkpoints: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["default-model", "--checkpoints", str(checkpoints), "--record"]) == 0
    assert "recorded in " in capsys.readouterr().out
    cards = _cards(checkpoints)
    choice = choose_default_model(cards).as_record()
    assert all(recorded_choice(card) == choice for card in cards.values())
    # A card with a stale record is the only one rewritten; the others keep their bytes.
    name = next(iter(cards))
    write_config(
        with_choice(cards[name], DefaultChoice("someone-else", "mse", "")), checkpoints / name
    )
    assert read_default_choice(checkpoints).stale == (name,)
    before = _config_bytes(checkpoints)
    assert main(["default-model", "--checkpoints", str(checkpoints)]) == 0
    assert f"another choice or none: {name}" in capsys.readouterr().out
    assert main(["default-model", "--checkpoints", str(checkpoints), "--record"]) == 0
    after = _config_bytes(checkpoints)
    assert [n for n in after if after[n] != before[n]] == [name]
    assert recorded_choice(read_config(checkpoints / name)) == choice
    assert main(["default-model", "--checkpoints", str(checkpoints)]) == 0
    assert "every card records this choice" in capsys.readouterr().out


def test_the_choice_follows_a_card_changed_by_the_caller(checkpoints: Path) -> None:
    # The caller's card (not yet on disk) takes part in the choice and is written with it.
    cards = _cards(checkpoints)
    name = next(iter(cards))
    changed = cards[name].model_copy(update={"metrics": {"auc_sub": 0.5}})
    choice = record_default_choice(checkpoints, {name: (changed, checkpoints / name)}).choice
    assert choice is not None
    assert read_config(checkpoints / name).metrics == {"auc_sub": 0.5}
    assert all(recorded_choice(c) == choice.as_record() for c in _cards(checkpoints).values())


@pytest.mark.parametrize("make", ["missing", "empty"])
def test_a_folder_without_checkpoints_is_a_one_line_error(
    tmp_path: Path, make: str, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "set"
    if make == "empty":
        folder.mkdir()
    assert main(["default-model", "--checkpoints", str(folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and str(folder) in err and "\n" not in err

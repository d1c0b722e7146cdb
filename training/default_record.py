"""The service's default model (`models.selection.choose_default_model`), recorded in every
card of a checkpoint set as `training.extra["service_default"]`.

The service chooses again at start-up from the cards' validation measurements (unless
`DEEPLENSE_DEFAULT_MODEL` names a model); the record lets a reader of any one card see which
model the set serves and why, without starting it. Whatever changes those measurements keeps
the record true by calling `record_default_choice`: `evaluate --update-checkpoints`,
`calibrate`, and `deeplense default-model --record` for a set assembled by hand
(`read_default_choice` says the choice and the cards that differ, writing nothing).
"""

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from models.card import CheckpointConfig
from models.checkpoint import find_checkpoints, read_config, write_config
from models.selection import DefaultChoice, choose_default_model

log = logging.getLogger(__name__)
RECORD_KEY = "service_default"


def with_choice(config: CheckpointConfig, choice: DefaultChoice | None) -> CheckpointConfig:
    """`config` with `choice` as its record (unchanged without a choice)."""
    if choice is None:
        return config
    extra = {**config.training.extra, RECORD_KEY: choice.as_record()}
    return config.model_copy(
        update={"training": config.training.model_copy(update={"extra": extra})}
    )


def recorded_choice(config: CheckpointConfig) -> dict[str, str] | None:
    """The choice a card records, or None."""
    record = config.training.extra.get(RECORD_KEY)
    return dict(record) if isinstance(record, dict) else None


@dataclass(frozen=True)
class SetChoice:
    """A set's default choice over its cards, and the cards whose record of it differs."""

    choice: DefaultChoice | None  # None for a set without cards
    stale: tuple[str, ...]  # cards under the root, not the caller's, recording another choice


def _choose(
    root: Path | None, changed: Mapping[str, tuple[CheckpointConfig, Path]]
) -> tuple[SetChoice, dict[str, tuple[CheckpointConfig, Path]]]:
    """The choice over the cards under `root` with `changed` replacing theirs, and the other
    cards (name -> (card, folder)) read from disk."""
    on_disk = {} if root is None else find_checkpoints(Path(root))
    neighbours = {n: (read_config(p), p) for n, p in on_disk.items() if n not in changed}
    every = {n: card for n, (card, _) in (neighbours | dict(changed)).items()}
    choice = choose_default_model(every) if every else None
    stale = tuple(
        sorted(n for n, (card, _) in neighbours.items() if with_choice(card, choice) != card)
    )
    return SetChoice(choice, stale), neighbours


def read_default_choice(root: Path) -> SetChoice:
    """The set's default choice and the cards that do not record it; nothing written."""
    return _choose(root, {})[0]


def record_default_choice(
    root: Path | None, changed: Mapping[str, tuple[CheckpointConfig, Path]] | None = None
) -> SetChoice:
    """Choose the set's default over its cards and record it in each.

    `changed`: cards just updated by the caller (name -> (card, folder)), which replace those
    on disk in the choice and are written whatever their record (an error is raised: they are
    the caller's output). The other cards under `root` (none without `root`) are rewritten
    only where their record differs (`stale`); a card that cannot be written is logged and
    left.
    """
    changed = dict(changed or {})
    result, neighbours = _choose(root, changed)
    choice = result.choice
    for card, folder in changed.values():
        write_config(with_choice(card, choice), folder)
        log.info("stored %s", Path(folder) / "config.json")
    for name in result.stale:
        card, folder = neighbours[name]
        try:
            write_config(with_choice(card, choice), folder)
        except OSError as exc:
            log.warning("could not record the default in %s: %s", folder / "config.json", exc)
    if choice is not None:
        log.info("default model %s, score %s: %s", choice.model, choice.score, choice.reason)
    return result

"""The service's default model (`models.selection.choose_default_model`), recorded in every
card of a checkpoint set as `training.extra["service_default"]`.

The service chooses again at start-up from the cards' validation measurements (unless
`DEEPLENSE_DEFAULT_MODEL` names a model); the record lets a reader of any one card see which
model the set serves and why, without starting it. Whatever changes those measurements keeps the
record true by calling `record_default_choice`: `evaluate --update-checkpoints`,
`calibrate`, and `deeplense default-model --record` for a set assembled by hand.
"""

import logging
from collections.abc import Mapping
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


def record_default_choice(
    root: Path | None, changed: Mapping[str, tuple[CheckpointConfig, Path]] | None = None
) -> DefaultChoice | None:
    """Choose the set's default over its cards and record it in each.

    `changed`: cards just updated by the caller (name -> (card, folder)), which replace those
    on disk in the choice and are written whatever their record (an error is raised: they are
    the caller's output). The other cards under `root` (none without `root`) are rewritten
    only where their record differs; a card that cannot be written is logged and left.
    Returns the choice, or None for a set without cards.
    """
    changed = dict(changed or {})
    on_disk = {} if root is None else find_checkpoints(Path(root))
    neighbours = {n: p for n, p in on_disk.items() if n not in changed}
    every = {n: read_config(p) for n, p in neighbours.items()}
    every |= {n: card for n, (card, _) in changed.items()}
    choice = choose_default_model(every) if every else None
    for card, folder in changed.values():
        write_config(with_choice(card, choice), folder)
        log.info("stored %s", Path(folder) / "config.json")
    for name, folder in neighbours.items():
        update = with_choice(every[name], choice)
        if update == every[name]:
            continue
        try:
            write_config(update, folder)
        except OSError as exc:
            log.warning("could not record the default in %s: %s", folder / "config.json", exc)
    if choice is not None:
        log.info("default model %s, score %s: %s", choice.model, choice.score, choice.reason)
    return choice

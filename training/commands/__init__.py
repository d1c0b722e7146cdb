"""One module per CLI subcommand (`COMMANDS`: the command names; a dash in a name is an
underscore in its module's). Each exposes `register(subparsers)`, which adds its parser
and sets `func` to a callable taking the parsed args and returning an exit code.

`--help` must answer at once (under a second), so a command module imports nothing heavy
(torch, the models, scipy) at module level: its `run` imports what it needs. Choices that
come from a registry are a `RegistryChoice` type, read only when a value is checked.
"""

import argparse
from collections.abc import Callable

COMMANDS = [
    "serve",
    "simulate",
    "fit",
    "calibrate",
    "default-model",
    "retune",
    "supervise",
    "evaluate",
    "score",
    "bench",
]


class RegistryChoice:
    """argparse `type`: a name from a registry, read on first use rather than when the parser
    is built (argparse's `choices` would be listed, so imported, by `--help`).

    `extra` names (e.g. "all") are accepted without reading the registry; a wrong name is
    refused with the valid ones, as `choices` would.
    """

    def __init__(self, names: Callable[[], list[str]], *extra: str) -> None:
        self._names = names
        self._extra = extra
        self.__name__ = "name"  # argparse's "invalid name value" wording, should one escape

    def __call__(self, text: str) -> str:
        if text in self._extra:
            return text
        valid = [*self._names(), *self._extra]
        if text not in valid:
            choices = ", ".join(map(repr, valid))
            raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from {choices})")
        return text


def registered_models() -> list[str]:
    """models.list_models(), importing the models (and torch) only now."""
    import models

    return models.list_models()


def registered_scores() -> list[str]:
    """deeplense.scores.list_scores(), importing torch only now."""
    from deeplense.scores import list_scores

    return list_scores()

"""Every shipped checkpoint set (checkpoints/<dataset>/) loads safely, is calibrated and
measured, and names a default the service can serve: what `DEEPLENSE_CHECKPOINT_DIR` may point
at. Loading only, no scoring: the service's own tests score the Model A set."""

import math
from pathlib import Path

import pytest

from app.settings import Settings
from models.checkpoint import find_checkpoints, load_checkpoint, read_config
from models.selection import choose_default_model

SHIPPED = Path(__file__).resolve().parents[2] / "checkpoints"
ROOTS = sorted(p for p in SHIPPED.iterdir() if p.is_dir())


def test_the_shipped_sets_are_there() -> None:
    assert {"model_a", "model_b", "model_r"} <= {p.name for p in ROOTS}


def test_the_service_serves_a_shipped_set_by_default() -> None:
    default = Settings.model_fields["checkpoint_dir"].default  # the real-image set, Model R's
    assert default.resolve() in {p.resolve() for p in ROOTS} and default.name == "model_r"


@pytest.mark.parametrize("root", ROOTS, ids=[p.name for p in ROOTS])
def test_every_shipped_checkpoint_loads_calibrated_and_measured(root: Path) -> None:
    found = find_checkpoints(root)
    assert found, f"{root}: no checkpoint"
    cards = {}
    for name, path in found.items():
        loaded = load_checkpoint(path)  # safetensors and a validated card, or it raises
        assert not loaded.model.training, name
        card = read_config(path)
        cal = card.calibrations.get(card.default_score)
        assert cal is not None and math.isfinite(cal.threshold), (name, card.default_score)
        assert math.isfinite(card.metrics.get("mse_no_sub", math.nan)), name
        cards[name] = card
    choice = choose_default_model(cards)
    assert choice.model in found and choice.score in cards[choice.model].calibrations

"""Which model is served by default: one rule, used by the service at start-up and by
`evaluate --update-checkpoints`, which records the choice in every card.

The rule: the best ROC-AUC (sub vs no_sub) of each model's default score on the labelled
validation split (`Calibration.validation_auc`, measured at calibration; never the test
split), rounded to 4 decimals, ties broken in the study's order (AAE, VAE, DCAE, RBM), then
ours (LensFit), then by name. Without any validation AUC (checkpoints calibrated on no_sub
images only), the first model in that order.
"""

from collections.abc import Mapping
from dataclasses import dataclass

from models.checkpoint import CheckpointConfig

MODEL_PREFERENCE = ("aae", "vae", "dcae", "rbm", "lensfit")


@dataclass(frozen=True)
class DefaultChoice:
    """The default model (a served name), its default score, and why it was chosen."""

    model: str
    score: str
    reason: str

    def as_record(self) -> dict[str, str]:
        return {"model": self.model, "score": self.score, "reason": self.reason}


def _rank(name: str, card: CheckpointConfig) -> tuple[int, str]:
    order = (
        MODEL_PREFERENCE.index(card.architecture)
        if card.architecture in MODEL_PREFERENCE
        else len(MODEL_PREFERENCE)
    )
    return order, name


def validation_auc(card: CheckpointConfig) -> float | None:
    """The labelled-validation AUC of a card's default score, or None."""
    calibration = card.calibration
    return None if calibration is None else calibration.validation_auc


def choose_default_model(cards: Mapping[str, CheckpointConfig]) -> DefaultChoice:
    """The default among `cards` (served name -> config); ValueError when there is none."""
    if not cards:
        raise ValueError("no models to choose a default from")
    measured = {n: auc for n, c in cards.items() if (auc := validation_auc(c)) is not None}
    if not measured:
        name = min(cards, key=lambda n: _rank(n, cards[n]))
        return DefaultChoice(
            name,
            cards[name].default_score,
            "no labelled validation AUC in any card: the first in the study's order "
            f"({', '.join(MODEL_PREFERENCE)})",
        )
    best = min(measured, key=lambda n: (-round(measured[n], 4), *_rank(n, cards[n])))
    table = ", ".join(f"{n} {cards[n].default_score} {measured[n]:.4f}" for n in sorted(measured))
    return DefaultChoice(
        best,
        cards[best].default_score,
        "best ROC-AUC (sub vs no_sub) of each model's default score on the labelled "
        f"validation split, ties in the study's order ({table})",
    )

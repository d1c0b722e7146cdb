"""Every "default" policy in one place, with one tie order for models and one for scores.

- `choose_default_score`: a checkpoint's default score, chosen at calibration.
- `choose_ensemble_score`: the ensemble's score when a request names none.
- `choose_default_model`: the model served by default, used by the service at start-up;
  `training.default_record` records it in every card of a set (`calibrate`,
  `evaluate --update-checkpoints`, `default-model --record`).

The model rule, on the labelled validation split (measured at calibration; never the test
split), for each model's default score:

1. Where every card records its detection rate at its calibrated threshold
   (`Calibration.validation_tpr`: the share of the split's substructure lenses it flags) at
   one shared false-positive rate, the best rate, rounded to 3 decimals, then the better
   ROC-AUC. The service answers with flags: a model with the better AUC can flag fewer
   lenses at the operating point (Model B: the rigid LensFit's AUC 0.742 flagged 9% of the
   test's lenses with subhalos at its threshold, LensFit 2's 0.715 flagged 40%;
   docs/results.md).
2. Otherwise (a card calibrated before the rate was recorded, or at another rate), the best
   ROC-AUC (sub vs no_sub, `Calibration.validation_auc`) rounded to 4 decimals.

Ties go to the study's order (AAE, VAE, DCAE, RBM), then ours (LensFit, LensFit 2), then
by name. Without any validation AUC (checkpoints calibrated on no_sub images only), the
first model in that order.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from deeplense.calibration import Calibration
from deeplense.scores import PREFERENCE as SCORE_PREFERENCE
from models.card import CheckpointConfig

MODEL_PREFERENCE = ("aae", "vae", "dcae", "rbm", "lensfit", "lensfit2")
# A checkpoint calibrated without a labelled split: the best score in the detection bounds
# (bench/oracle_auc.py) that does not depend on a light region.
NO_LABELS_SCORE = "chi2_psf"
# The ensemble's score when its members share no calibrated score (the study's).
FALLBACK_SCORE = "mse"


def score_rank(score: str) -> tuple[int, str]:
    """The one tie order of scores: deeplense.scores.PREFERENCE, then others by name."""
    order = SCORE_PREFERENCE.index(score) if score in SCORE_PREFERENCE else len(SCORE_PREFERENCE)
    return order, score


def choose_default_score(calibrations: Mapping[str, Calibration]) -> tuple[str, str]:
    """(score, reason) for a checkpoint: the best validation AUC (rounded to 4 decimals, ties
    in the score order); without labels, NO_LABELS_SCORE."""
    measured = {s: c.validation_auc for s, c in calibrations.items() if c.validation_auc}
    if not measured:
        return NO_LABELS_SCORE, (
            f"no labelled validation split: {NO_LABELS_SCORE}, the best score in the "
            "detection bounds"
        )
    best = min(measured, key=lambda s: (-round(measured[s], 4), *score_rank(s)))
    table = ", ".join(f"{s} {measured[s]:.4f}" for s in sorted(measured))
    return best, f"best ROC-AUC on the labelled validation split ({table})"


def choose_ensemble_score(members: Sequence[CheckpointConfig]) -> str:
    """The ensemble's default score: among the scores every member is calibrated for, the
    members' most common default, ties in the score order; FALLBACK_SCORE if they share none."""
    if not members:
        return FALLBACK_SCORE
    shared = set.intersection(*(set(card.calibrations) for card in members))
    defaults = [card.default_score for card in members]
    ranked = sorted(shared, key=lambda s: (-defaults.count(s), *score_rank(s)))
    return ranked[0] if ranked else FALLBACK_SCORE


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


def _detection_rates(
    cards: Mapping[str, CheckpointConfig],
) -> tuple[dict[str, tuple[float, float]], float] | None:
    """Each card's (detection rate, AUC) of its default score, and their shared calibrated
    false-positive rate, when every card records both at one rate; else None."""
    rates: dict[str, tuple[float, float]] = {}
    fprs = set()
    for name, card in cards.items():
        cal = card.calibration
        if cal is None or cal.validation_tpr is None or cal.validation_auc is None:
            return None
        rates[name] = (cal.validation_tpr, cal.validation_auc)
        fprs.add(cal.fpr)
    return (rates, fprs.pop()) if len(fprs) == 1 else None


def choose_default_model(cards: Mapping[str, CheckpointConfig]) -> DefaultChoice:
    """The default among `cards` (served name -> config); ValueError when there is none."""
    if not cards:
        raise ValueError("no models to choose a default from")
    shared = _detection_rates(cards)
    if shared is not None:
        rates, fpr = shared
        best = min(
            rates,
            key=lambda n: (-round(rates[n][0], 3), -round(rates[n][1], 4), *_rank(n, cards[n])),
        )
        table = ", ".join(
            f"{n} {cards[n].default_score} {rates[n][0]:.3f} (AUC {rates[n][1]:.4f})"
            for n in sorted(rates)
        )
        return DefaultChoice(
            best,
            cards[best].default_score,
            "best detection rate (share of substructure lenses flagged) of each model's "
            f"default score at its threshold for a {fpr:g} false-positive rate on the labelled "
            f"validation split, ties by ROC-AUC, then the study's order ({table})",
        )
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
        f"validation split, ties in the study's order ({table}); not every card records "
        "its detection rate at one false-positive rate",
    )

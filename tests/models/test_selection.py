"""The default model: the best labelled-validation detection rate at the calibrated threshold
where every card has one, else the best validation AUC; ties in the study's order."""

import pytest

from deeplense.calibration import Calibration
from models.card import CheckpointConfig, InputSpec
from models.selection import MODEL_PREFERENCE, choose_default_model


def _card(
    architecture: str,
    auc: float | None,
    score: str = "chi2_psf",
    tpr: float | None = None,
    fpr: float = 0.05,
) -> CheckpointConfig:
    calibration = Calibration(
        fpr=fpr,
        threshold=1.0,
        quantiles=[i / 100 for i in range(101)],
        n_images=10,
        validation_auc=auc,
        validation_tpr=tpr,
    )
    return CheckpointConfig(
        architecture=architecture,
        arguments={},
        input=InputSpec(height=8, width=8),
        calibrations={score: calibration},
        default_score=score,
    )


def test_the_best_validation_auc_wins() -> None:
    cards = {"aae": _card("aae", 0.6), "lensfit": _card("lensfit", 0.9), "rbm": _card("rbm", 0.7)}
    choice = choose_default_model(cards)
    assert (choice.model, choice.score) == ("lensfit", "chi2_psf")
    assert "lensfit chi2_psf 0.9000" in choice.reason


def test_ties_go_to_the_study_order() -> None:
    cards = {n: _card(n, 0.75001 if n == "lensfit" else 0.75) for n in reversed(MODEL_PREFERENCE)}
    assert choose_default_model(cards).model == "aae"  # equal to 4 decimals: the study's first


def test_without_validation_aucs_the_study_order_decides() -> None:
    cards = {"rbm": _card("rbm", None), "vae": _card("vae", None)}
    choice = choose_default_model(cards)
    assert choice.model == "vae"
    assert "no labelled validation AUC" in choice.reason


def test_a_model_without_a_validation_auc_never_beats_one_with() -> None:
    cards = {"aae": _card("aae", None), "dcae": _card("dcae", 0.51)}
    assert choose_default_model(cards).model == "dcae"


def test_nothing_to_choose_from_is_an_error() -> None:
    with pytest.raises(ValueError, match="no models"):
        choose_default_model({})


def test_where_every_card_has_a_detection_rate_the_best_rate_wins() -> None:
    cards = {
        "aae": _card("aae", 0.60, tpr=0.07),
        "lensfit": _card("lensfit", 0.74, tpr=0.09),  # the better AUC, the fewer flags
        "lensfit2": _card("lensfit2", 0.71, tpr=0.40),
    }
    choice = choose_default_model(cards)
    assert choice.model == "lensfit2"
    assert "detection rate" in choice.reason and "lensfit2 chi2_psf 0.400" in choice.reason


def test_equal_detection_rates_go_to_the_better_auc() -> None:
    cards = {"aae": _card("aae", 0.60, tpr=0.2001), "rbm": _card("rbm", 0.70, tpr=0.2)}
    assert choose_default_model(cards).model == "rbm"  # equal to 3 decimals


@pytest.mark.parametrize(
    "other",
    [
        _card("lensfit2", 0.71, tpr=None),  # calibrated before the rate was recorded
        _card("lensfit2", 0.71, tpr=0.40, fpr=0.10),  # at another false-positive rate
    ],
    ids=["a card without a rate", "another false-positive rate"],
)
def test_rates_that_cannot_be_compared_leave_the_auc_rule(other: CheckpointConfig) -> None:
    cards = {"lensfit": _card("lensfit", 0.74, tpr=0.09), "lensfit2": other}
    choice = choose_default_model(cards)
    assert choice.model == "lensfit"
    assert "best ROC-AUC" in choice.reason

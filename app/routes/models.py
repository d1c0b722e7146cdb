"""Model cards: what each loaded checkpoint is, how it was calibrated and how it scored."""

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path

from app.card_schemas import CalibrationSummary, EnsembleCard, ModelCard, ModelList
from app.dependencies import ReadyServiceDep, require_api_key
from app.schemas import ErrorBody
from app.served import ServedModel
from app.service import ModelService
from deeplense.calibration import Calibration
from deeplense.scores import scores_for

router = APIRouter(prefix="/models", tags=["models"], dependencies=[Depends(require_api_key)])

# Names of the calibration quantiles a card shows -> their index among the 101 stored.
_QUANTILES = {"min": 0, "p5": 5, "p25": 25, "median": 50, "p75": 75, "p95": 95, "p99": 99}
_QUANTILES["max"] = 100
_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "API key required and missing or wrong"},
    503: {"model": ErrorBody, "description": "models still loading"},
}


def calibration_summary(score: str, cal: Calibration) -> CalibrationSummary:
    """What a card shows of one score's calibration."""
    return CalibrationSummary(
        score=score,
        fpr=cal.fpr,
        threshold=cal.threshold,
        n_images=cal.n_images,
        dataset=cal.dataset,
        youden_threshold=cal.youden_threshold,
        validation_auc=cal.validation_auc,
        validation_tpr=cal.validation_tpr,
        normal_loss_quantiles={k: cal.quantiles[i] for k, i in _QUANTILES.items()},
    )


def model_card(service: ModelService, served: ServedModel) -> ModelCard:
    """The card of one loaded model."""
    config = served.checkpoint.config
    summaries = {s: calibration_summary(s, c) for s, c in config.calibrations.items()}
    return ModelCard(
        name=served.name,
        architecture=config.architecture,
        arguments=config.arguments,
        parameters=served.parameters,
        input=config.input,
        default_score=config.default_score,
        default_score_reason=config.default_score_reason,
        scores=scores_for(served.checkpoint.model),
        calibration=summaries.get(config.default_score),
        calibrations=summaries,
        metrics=config.metrics,
        training=config.training,
        weights_sha256=served.weights_sha256,
        device=str(service.device),
        is_default=served.name == service.default_model,
    )


@router.get("", summary="List the loaded models", responses=_ERRORS)
async def list_models(service: ReadyServiceDep) -> ModelList:
    """Every loaded model's card, the default model and the valid `?model=` values."""
    ensemble = None
    if service.ensemble is not None:
        score = service.ensemble.default_score()
        threshold = service.ensemble.threshold(score)
        ensemble = EnsembleCard(
            members=service.ensemble.names,
            default_score=score,
            threshold_percentile=threshold,
            rule=f"mean of the members' calibrated percentiles of the requested score "
            f"(default {score}); flagged when it exceeds "
            f"{threshold:g}. Not calibrated on its own: its false-positive rate on normal "
            "images is usually below the members' fpr (they rarely all score high together).",
        )
    assert service.default_model is not None
    return ModelList(
        default=service.default_model,
        default_reason=service.default_reason,
        choices=service.choices(),
        models=[model_card(service, m) for m in service.models.values()],
        ensemble=ensemble,
    )


@router.get(
    "/{name}",
    summary="One model's card",
    responses={
        404: {"model": ErrorBody, "description": "no such model; lists the valid ones"},
        **_ERRORS,
    },
)
async def get_model(
    name: Annotated[str, Path(description="a loaded model's name", examples=["aae"])],
    service: ReadyServiceDep,
) -> ModelCard:
    """Architecture, arguments, parameter count, input, calibration, metrics, training facts."""
    return model_card(service, service.get(name))

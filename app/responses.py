"""The /score response, built from the ground floor's `ImageScore` records.

A single model's result is its `deeplense.image_score.ImageScore` as the API's schema; the
`score` CLI writes the same record as a CSV row, so the two cannot drift apart.
"""

from collections.abc import Sequence
from dataclasses import asdict
from typing import Literal

from app.schemas import ScoreResponse, ScoreResult
from deeplense.image_score import ImageScore
from deeplense.observation import Prepared


def result_of(record: ImageScore) -> ScoreResult:
    """The API's result for one image record."""
    fields = asdict(record)
    shape = fields.pop("input_shape")
    warnings = fields.pop("warnings")
    return ScoreResult(
        **fields,
        input_shape=None if shape is None else list(shape),
        warnings=list(warnings),
    )


def response_of(
    model: str,
    score: str,
    units: Literal["score", "percentile"],
    prepared: Sequence[Prepared],
    scored_results: Sequence[ScoreResult],
) -> ScoreResponse:
    """Every upload's result in upload order: the scored ones (in the order of the readable
    uploads) and an error result for each file that could not be read."""
    in_order = iter(scored_results)
    return ScoreResponse(
        model=model,
        score=score,
        threshold_units=units,
        results=[
            ScoreResult(filename=p.filename, error=p.error) if p.error else next(in_order)
            for p in prepared
        ],
    )

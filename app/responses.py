"""The /score response, built from the ground floor's `ImageScore` records.

A single model's result is its `deeplense.image_score.ImageScore` as the API's schema; the
`score` CLI writes the same record as a CSV row, so the two cannot drift apart.
"""

from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Literal

import numpy as np

from app.ensemble import Ensemble
from app.residual_images import attach_images
from app.schemas import ScoreResponse, ScoreResult
from app.served import ServedModel
from deeplense.calibration import judge
from deeplense.image_score import ImageScore, image_scores
from deeplense.inference import ScoredBatch
from deeplense.observation import Observation, Prepared


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


def scored_results(
    members: Sequence[ServedModel],
    ensemble: Ensemble | None,
    good: Sequence[Prepared],
    scored: Mapping[str, ScoredBatch],
    score: str,
    threshold: float | None,
    include_images: bool,
) -> tuple[list[ScoreResult], Literal["score", "percentile"]]:
    """The results of the readable uploads `good` from each member's scores (one member
    unless `ensemble`), judged by the one judge, and their units; the PNGs when asked."""
    units: Literal["score", "percentile"]
    if ensemble is not None:
        results = ensemble.results(good, scored, score, threshold)
        units = "percentile"
    else:
        served = members[0]
        one = scored[served.name]
        verdict = judge(
            one.scores[score], served.calibration_for(score), threshold,
            one.not_applicable.get(score, ()),
        )  # fmt: skip
        results = [result_of(r) for r in image_scores(good, one, score, verdict)]
        units = "score"
    if include_images:
        observations: list[Observation] = [p.observation for p in good if p.observation]
        recons = [s.reconstruction for s in scored.values() if s.reconstruction is not None]
        # (1, h, w) per image; the ensemble's: the members' mean (all on the model's grid)
        recon = [np.mean([r[i] for r in recons], axis=0) for i in range(len(observations))]
        maps = None if ensemble is not None else scored[members[0].name].residual_map
        scales = [m.pixel_residual_scale for m in members]
        known = [v for v in scales if v is not None]
        pixel_scale = float(np.mean(known)) if len(known) == len(scales) else None
        attach_images(results, observations, recon, score, maps, pixel_scale)
    return results, units

"""The ensemble: calibrated models that share an input size, judged by their mean percentile.

Each member's score is judged by its own calibration (`deeplense.calibration.judge`); the
ensemble's percentile is the members' mean, and the same judge flags it in percentile units.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from app.schemas import Instrument, MemberScore, ScoreResult
from app.served import ServedModel
from deeplense.calibration import judge
from deeplense.errors import UncalibratedScoreError
from deeplense.inference import ScoredBatch
from deeplense.observation import Prepared
from models.selection import choose_ensemble_score

ENSEMBLE = "ensemble"
DEFAULT_PERCENTILE_THRESHOLD = 95.0  # when no member has a calibration of the score


def pick_members(models: Mapping[str, ServedModel]) -> list[str]:
    """Calibrated models sharing the most common input size (one prepared input serves all
    and their reconstructions can be averaged); [] unless there are two or more."""
    calibrated = [m for m in models.values() if m.checkpoint.config.calibrations]
    if not calibrated:
        return []
    sizes = [m.size for m in calibrated]
    size = max(set(sizes), key=sizes.count)
    members = sorted(m.name for m in calibrated if m.size == size)
    return members if len(members) >= 2 else []


@dataclass
class Ensemble:
    """The members (served models) and the rules of the ensemble's answer."""

    members: Sequence[ServedModel]

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.members]

    def default_score(self) -> str:
        """The score a request to the ensemble gets when it names none (models.selection)."""
        return choose_ensemble_score([m.checkpoint.config for m in self.members])

    def check_score(self, score: str) -> None:
        """ScoreNotOfferedError unless every member can draw `score`, then
        UncalibratedScoreError unless every member is calibrated for it."""
        for member in self.members:
            member.check_score(score)
        missing = [m.name for m in self.members if m.calibration_for(score) is None]
        if missing:
            raise UncalibratedScoreError(
                f"the ensemble needs every member calibrated for score {score!r}; "
                f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not"
            )

    def threshold(self, score: str) -> float:
        """The flag threshold in percentile units: 100 (1 - fpr), using the smallest fpr among
        the members' calibrations of `score` (the most conservative)."""
        fprs = [c.fpr for m in self.members if (c := m.calibration_for(score))]
        return 100.0 * (1.0 - min(fprs)) if fprs else DEFAULT_PERCENTILE_THRESHOLD

    def results(
        self,
        good: Sequence[Prepared],
        scored: Mapping[str, ScoredBatch],
        score: str,
        threshold: float | None,
    ) -> list[ScoreResult]:
        """One result per readable upload: the members' own verdicts and their mean percentile,
        flagged above `threshold` (percentile units; None: `self.threshold(score)`)."""
        verdicts = {
            m.name: judge(scored[m.name].scores[score], m.calibration_for(score))
            for m in self.members
        }
        percentiles = []
        for v in verdicts.values():
            assert v.percentile is not None  # members are calibrated for `score` (check_score)
            percentiles.append(v.percentile)
        mean_pct = np.mean(percentiles, axis=0)  # (N,)
        if threshold is None:
            threshold = self.threshold(score)
        # The same rule, in percentile units; an image any member cannot judge is not judged.
        reasons = [
            next(
                (
                    r
                    for s in scored.values()
                    if (r := s.not_applicable.get(score, [""] * len(good))[i])
                ),
                "",
            )
            for i in range(len(good))
        ]
        overall = judge(mean_pct, None, threshold, reasons)
        assert overall.is_anomaly is not None
        results = []
        for i, p in enumerate(good):
            members = []
            for name, s in scored.items():
                v = verdicts[name]
                assert v.threshold is not None and v.is_anomaly is not None
                assert v.percentile is not None
                members.append(
                    MemberScore(
                        model=name,
                        score=score,
                        anomaly_score=float(s.scores[score][i]),
                        reconstruction_loss=float(s.loss[i]),
                        w1=float(s.w1[i]),
                        percentile=float(v.percentile[i]),
                        threshold=v.threshold,
                        is_anomaly=bool(v.is_anomaly[i]),
                    )
                )
            results.append(
                ScoreResult(
                    filename=p.filename,
                    score=score,
                    threshold=threshold,
                    is_anomaly=bool(overall.is_anomaly[i]) if overall.applies(i) else None,
                    percentile=float(mean_pct[i]) if overall.applies(i) else None,
                    input_shape=list(p.input_shape or ()),
                    resized=p.resized,
                    warnings=[*p.warnings, *([] if overall.applies(i) else [reasons[i]])],
                    instrument=None if p.instrument is None else Instrument(**p.instrument),
                    members=members,
                )
            )
        return results

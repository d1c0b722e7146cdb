"""`concatenate_scored`: parts scored apart join into what one call gives, in order."""

import numpy as np
import pytest

from deeplense.fit_drawn import FINDINGS
from deeplense.inference import ScoredBatch, concatenate_scored, score_observations
from deeplense.instrument import Instrument
from deeplense.observation import Observation, prepare_observation
from tests.conftest import TINY_SIZE, tiny_images, tiny_model


@pytest.mark.parametrize("name", ["dcae", "lensfit2"])
def test_parts_join_into_the_whole(name: str) -> None:
    model = tiny_model(name)
    drawn = ["imaging_gain"] if name == "lensfit2" else []  # with the fit's findings
    images = tiny_images(5, seed=3)[:, 0]
    observations = [
        prepare_observation(image, TINY_SIZE, Instrument(), f"image{i}")
        for i, image in enumerate(images)
    ]

    def scored(chunk: list[Observation]) -> ScoredBatch:
        return score_observations(
            model, chunk, batch_size=1, keep_reconstructions=True,
            scores=["mse", "chi2", *drawn], map_of="chi2",
        )  # fmt: skip

    whole = scored(observations)
    joined = concatenate_scored([scored(observations[:2]), scored(observations[2:])])
    np.testing.assert_array_equal(joined.loss, whole.loss)
    np.testing.assert_array_equal(joined.w1, whole.w1)
    for key in whole.scores:
        np.testing.assert_array_equal(joined.scores[key], whole.scores[key])
        assert joined.not_applicable[key] == whole.not_applicable[key]
    np.testing.assert_array_equal(joined.reconstruction, whole.reconstruction)
    np.testing.assert_array_equal(joined.residual_map, whole.residual_map)
    assert (joined.goodness is None) == (whole.goodness is None) == (name == "dcae")
    if whole.goodness is not None and joined.goodness is not None:
        np.testing.assert_array_equal(joined.goodness.p_value, whole.goodness.p_value)
        np.testing.assert_array_equal(joined.goodness.chi2_per_dof, whole.goodness.chi2_per_dof)
    assert set(whole.findings) == (set(FINDINGS) if drawn else set())
    assert set(joined.findings) == set(whole.findings)
    for key in whole.findings:
        np.testing.assert_array_equal(joined.findings[key], whole.findings[key])


def test_findings_missing_from_a_part_join_as_nan() -> None:
    def part(n: int, tension: list[float] | None) -> ScoredBatch:
        found = {} if tension is None else {"tension": np.array(tension)}
        return ScoredBatch(loss=np.zeros(n), w1=np.zeros(n), findings=found)

    joined = concatenate_scored([part(2, [1.0, 2.0]), part(1, None), part(1, [4.0])])
    np.testing.assert_array_equal(joined.findings["tension"], [1.0, 2.0, np.nan, 4.0])
    assert concatenate_scored([part(1, None)]).findings == {}


def test_nothing_to_join_is_an_error() -> None:
    with pytest.raises(ValueError, match="no parts"):
        concatenate_scored([])

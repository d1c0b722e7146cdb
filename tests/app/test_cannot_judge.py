"""An image the model cannot judge is never reported as confidently normal (issue 20, D7):
pure noise, a checkerboard or a huge random image gets no flag and no percentile, and a
warning saying why; a lens is still judged. Decided per score, in the one judge."""

import numpy as np
import pytest
from fastapi.testclient import TestClient

from deeplense.scores import SCORES, list_scores
from tests.app.conftest import image, upload
from tests.conftest import serving_model
from tests.encode import npy_bytes, png_bytes

S = 32


def _noise() -> np.ndarray:
    return np.random.default_rng(1).standard_normal((S, S)).astype(np.float32)


def _checkerboard() -> np.ndarray:
    return (np.indices((S, S)).sum(axis=0) % 2).astype(np.float32)


@pytest.mark.parametrize("score", list_scores())
def test_noise_and_patterns_are_not_judged_while_a_lens_is(client: TestClient, score: str) -> None:
    rng = np.random.default_rng(2)
    files = [
        upload("noise.npy", npy_bytes(_noise())),
        upload("checker.npy", npy_bytes(_checkerboard())),
        upload("big_random.png", png_bytes(rng.random((512, 512)).astype(np.float32))),
        upload("ring.npy", npy_bytes(image(1))),
    ]
    drawn = SCORES[score].drawn_by_fit  # only by a model whose fit draws it, not an ensemble
    for model in (serving_model(score),) if drawn else ("dcae", "ensemble"):
        response = client.post(
            "/score", params={"model": model, "score": score, "include_images": "false"},
            files=files,
        )  # fmt: skip
        assert response.status_code == 200, response.text
        *odd, ring = response.json()["results"]
        for result in odd:
            assert result["error"] is None
            assert result["is_anomaly"] is None and result["percentile"] is None, (model, result)
            assert any("cannot judge" in w for w in result["warnings"]), result["warnings"]
        if score == "chi2_psf_light" and ring["is_anomaly"] is None:
            # The tiny random-weight models draw almost no light: their fault, said so.
            assert any("fewer than one PSF area" in w for w in ring["warnings"])
            continue
        assert ring["is_anomaly"] is not None and ring["percentile"] is not None, (model, score)

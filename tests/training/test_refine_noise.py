"""training.refine_noise and bench/refine_noise.py: the same scores as `evaluate` from the
encoder's start, other scores from a perturbed start, and a clear refusal for a model that
does not refine from one."""

import sys
from pathlib import Path

import numpy as np
import pytest

from models.checkpoint import load_checkpoint
from tests.bench_scripts import load_bench
from tests.lenses import tiny_model_r
from training.refine_noise import NotRefinedError, jittered_start, start_noise
from training.sensitivity import default_scores


@pytest.fixture(scope="module")
def model_r(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model_r(tmp_path_factory.mktemp("noise") / "r", n_test=2)


def test_no_perturbation_reproduces_the_scores_and_a_perturbation_moves_them(
    tiny_checkpoints: Path, model_r: Path
) -> None:
    loaded = load_checkpoint(tiny_checkpoints / "lensfit2")
    expected = default_scores(loaded, model_r, 2)
    zero, moved = start_noise(loaded, model_r, 2, eps=[0.0, 0.05], repeats=2)
    for cls, values in expected.items():
        np.testing.assert_array_equal(zero.base[cls], values)  # the encoder's start: evaluate's
        for run in zero.runs:
            np.testing.assert_array_equal(run[cls], values)  # eps 0 changes nothing
    assert max(float(np.max(moved.relative_change(c))) for c in expected) > 1e-6
    assert moved.runs[0]["no_sub"].tolist() != moved.runs[1]["no_sub"].tolist()  # new draws
    assert 0.0 <= moved.base_auc <= 1.0 and len(moved.run_aucs) == 2
    # The perturbation is gone after the block: the model scores as before.
    np.testing.assert_array_equal(default_scores(loaded, model_r, 2)["vort"], expected["vort"])


def test_a_model_without_an_encoder_start_is_refused(tiny_checkpoints: Path) -> None:
    dcae = load_checkpoint(tiny_checkpoints / "dcae").model
    with pytest.raises(NotRefinedError, match="does not refine"), jittered_start(dcae, 1e-3, 0):
        pass


def test_the_bench_prints_the_table_and_refuses_a_model_it_cannot_perturb(
    tiny_checkpoints: Path, model_r: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    bench = load_bench("refine_noise")
    argv = ["refine_noise.py", str(model_r), "--checkpoint", str(tiny_checkpoints / "lensfit2"),
            "--n", "2", "--eps", "1e-7", "--repeats", "1"]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    assert bench.main() == 0
    out = capsys.readouterr().out
    assert "AUC from the encoder's start" in out and "| 1e-07 |" in out
    monkeypatch.setattr(sys, "argv", [*argv[:3], str(tiny_checkpoints / "dcae"), "--n", "2"])
    assert bench.main() == 2
    assert "does not refine" in capsys.readouterr().err

"""bench/prior_spread.py: what LensFit 2's learnt prior measures, parameter by parameter."""

from pathlib import Path

import numpy as np
import pytest

from deeplense.lensing.flexible import INDEX, NAMES
from tests.bench_scripts import load_bench
from tests.lenses import tiny_model_r
from training.flexible_bound import truth_theta
from training.simulate import read_rows


@pytest.fixture(scope="module")
def model_r(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model_r(tmp_path_factory.mktemp("spread") / "r", n_train=3, n_test=0)


def test_each_column_is_measured_on_the_sets_own_lenses(
    tiny_checkpoints: Path, model_r: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bench = load_bench("prior_spread")
    result = bench.prior_spread(tiny_checkpoints / "lensfit2", model_r, 3, 1)
    truths = np.stack([truth_theta(r) for r in read_rows(model_r, "train", n=3).values()])
    np.testing.assert_allclose(result["population"], truths.std(axis=0, ddof=1), rtol=1e-6)
    assert result["population"][INDEX["theta_e"]] == 0.0  # Model R holds it at 1.2"
    assert result["population"][INDEX["gamma1"]] > 0.0
    for key in bench.COLUMNS:
        assert result[key].shape == (len(NAMES),) and np.isfinite(result[key]).all()
    assert (result["one_fit_noise"] > 0).all()
    assert bench.main([str(tiny_checkpoints / "lensfit2"), str(model_r), "--n", "2",
                       "--steps", "1"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert out.count("| theta_e | 0.0000 |") == 1 and out.count("\n|") == len(NAMES) + 2


def test_too_few_lenses_is_refused_in_one_line(tiny_checkpoints: Path, model_r: Path) -> None:
    bench = load_bench("prior_spread")
    with pytest.raises(SystemExit, match="need at least 2 training lenses"):
        bench.prior_spread(tiny_checkpoints / "lensfit2", model_r, 1, 1)

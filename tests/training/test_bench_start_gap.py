"""bench/start_gap.py: LensFit 2 refitted from its encoder's guess, the truth and a moved truth."""

import argparse
from pathlib import Path

import numpy as np
import pytest

from tests.bench_scripts import load_bench
from tests.lenses import tiny_model_r


@pytest.fixture(scope="module")
def model_r(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model_r(tmp_path_factory.mktemp("gap") / "r", n_test=2)


def test_each_start_is_refitted_and_a_zero_move_is_the_truth(
    tiny_checkpoints: Path, model_r: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bench = load_bench("start_gap")
    starts = [("encoder", 1), ("truth", 1), ("eps0.0", 1), ("eps0.3", 1)]
    result = bench.start_gap(model_r, tiny_checkpoints / "lensfit2", 2, starts)
    for cls in ("no_sub", "sphere", "vort"):
        np.testing.assert_array_equal(
            result["chi2"]["eps0.0:1"][cls], result["chi2"]["truth:1"][cls]
        )
        assert result["chi2"]["eps0.3:1"][cls].tolist() != result["chi2"]["truth:1"][cls].tolist()
        assert result["truth"][cls].shape == result["encoder"][cls].shape == (2, 13)
        assert np.all(result["chi2"]["truth:1"][cls] > 0)
    text = bench.table(result)
    assert text.count("| encoder:1 |") == 1 and text.count("| theta_e |") == 1
    assert bench.main([str(model_r), "--checkpoint", str(tiny_checkpoints / "lensfit2"),
                       "--n", "1", "--starts", "truth:1"]) == 0  # fmt: skip
    assert "| truth:1 |" in capsys.readouterr().out


def test_a_start_must_name_its_kind_and_steps() -> None:
    bench = load_bench("start_gap")
    assert bench.parse_start("eps0.05:6") == ("eps0.05", 6)
    for bad in ("random:4", "truth", "epsx:2", "encoder:-1"):
        with pytest.raises(argparse.ArgumentTypeError, match="START:STEPS"):
            bench.parse_start(bad)

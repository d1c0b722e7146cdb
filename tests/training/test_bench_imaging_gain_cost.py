"""bench/imaging_gain_cost.py: a LensFit 2 scored with and without imaging_gain, timed."""

from pathlib import Path

import numpy as np
import pytest

from tests.bench_scripts import load_bench, tiny_split
from tests.conftest import threads_kept


def test_bench_times_both_and_prints_the_tests_cost(
    tiny_checkpoints: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    split = tiny_split(tmp_path)
    bench = load_bench("imaging_gain_cost")
    with threads_kept():
        images = bench.split_images(split, 2)
        assert images.shape[:2] == (4, 1) and images.dtype == np.float32
        seconds = bench.seconds_per_image(
            tiny_checkpoints / "lensfit2", images, "chi2_psf_light", 1
        )
        assert set(seconds) == {"plain", "with imaging_gain"}
        assert all(s > 0 for s in seconds.values())
        assert bench.main([str(tiny_checkpoints / "lensfit2"), str(split), "--n", "2"]) == 0
    out = capsys.readouterr().out
    assert "4 images, one thread" in out and "| imaging_gain's tests |" in out


def test_bench_refuses_a_model_without_the_score_and_an_empty_split(
    tiny_checkpoints: Path, tmp_path: Path
) -> None:
    bench = load_bench("imaging_gain_cost")
    split = tmp_path / "empty"
    split.mkdir()
    with pytest.raises(SystemExit, match="no class file"):
        bench.split_images(split, 2)
    split = tiny_split(tmp_path, classes=("no_sub",), n=2)
    with threads_kept():
        with pytest.raises(SystemExit, match="imaging_gain"):
            bench.main([str(tiny_checkpoints / "vae"), str(split), "--n", "1"])
        with pytest.raises(SystemExit, match="--plain must be one of"):
            bench.main([str(tiny_checkpoints / "lensfit2"), str(split), "--plain", "nope"])

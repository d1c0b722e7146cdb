"""bench/imaging_gain_cost.py: a LensFit 2 scored with and without imaging_gain, timed."""

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.bench_scripts import load_bench
from tests.conftest import tiny_images


def test_bench_times_both_and_prints_the_tests_cost(
    tiny_checkpoints: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    split = tmp_path / "val"
    split.mkdir()
    for seed, cls in enumerate(("no_sub", "vort")):
        np.save(split / f"{cls}.npy", tiny_images(3, seed=seed)[:, 0])
    bench = load_bench("imaging_gain_cost")
    threads = torch.get_num_threads()
    try:
        images = bench.split_images(split, 2)
        assert images.shape[:2] == (4, 1) and images.dtype == np.float32
        seconds = bench.seconds_per_image(
            tiny_checkpoints / "lensfit2", images, "chi2_psf_light", 1
        )
        assert set(seconds) == {"plain", "with imaging_gain"}
        assert all(s > 0 for s in seconds.values())
        assert bench.main([str(tiny_checkpoints / "lensfit2"), str(split), "--n", "2"]) == 0
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "4 images, one thread" in out and "| imaging_gain's tests |" in out


def test_bench_refuses_a_model_without_the_score_and_an_empty_split(
    tiny_checkpoints: Path, tmp_path: Path
) -> None:
    bench = load_bench("imaging_gain_cost")
    split = tmp_path / "val"
    split.mkdir()
    with pytest.raises(SystemExit, match="no class file"):
        bench.split_images(split, 2)
    np.save(split / "no_sub.npy", tiny_images(2)[:, 0])
    threads = torch.get_num_threads()
    try:
        with pytest.raises(SystemExit, match="imaging_gain"):
            bench.main([str(tiny_checkpoints / "vae"), str(split), "--n", "1"])
        with pytest.raises(SystemExit, match="--plain must be one of"):
            bench.main([str(tiny_checkpoints / "lensfit2"), str(split), "--plain", "nope"])
    finally:
        torch.set_num_threads(threads)

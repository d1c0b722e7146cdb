"""bench/bases_dtype.py: LensFit 2 scored with float64 and float32 bases, side by side."""

from pathlib import Path

import numpy as np
import pytest

from tests.bench_scripts import load_bench, tiny_split
from tests.conftest import threads_kept


def test_bench_scores_every_image_both_ways(
    tiny_checkpoints: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    split = tiny_split(tmp_path)
    bench = load_bench("bases_dtype")
    with threads_kept():
        score, values, seconds = bench.scores_both_ways(tiny_checkpoints / "lensfit2", split, 2)
        assert set(values) == {"float64", "float32"}
        for per_class in values.values():
            assert {c: len(v) for c, v in per_class.items()} == {"no_sub": 2, "vort": 2}
            assert all(np.isfinite(v).all() for v in per_class.values())
        assert all(s > 0 for s in seconds.values())
        assert bench.main([str(tiny_checkpoints / "lensfit2"), str(split), "--n", "2"]) == 0
    out = capsys.readouterr().out
    assert f"4 images, score {score}" in out
    assert "| float64 |" in out and "| float32 |" in out

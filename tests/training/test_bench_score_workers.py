"""bench/bench_score_workers.py: one table row per way of scoring, every image scored."""

from pathlib import Path

import numpy as np
import pytest

from tests.bench_scripts import load_bench
from tests.conftest import tiny_images


def test_bench_prints_a_row_per_way(
    tiny_checkpoints: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stack = tmp_path / "stack.npy"
    np.save(stack, tiny_images(5, seed=4)[:, 0])
    argv = [str(tiny_checkpoints / "lensfit2"), str(stack), "--n", "3",
            "--threads", "2", "--workers", "2"]  # fmt: skip
    assert load_bench("bench_score_workers").main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "3 images" in lines[0]
    rows = [line.split("|")[1:-1] for line in lines if line.startswith("| ") and "wall" not in line]
    assert [r[0].strip() for r in rows] == [
        "1 process, 1 thread", "1 process, 2 threads", "2 workers, 1 thread each",
    ]  # fmt: skip
    for row in rows:
        wall, per_image, rate = (float(v) for v in row[1:])
        assert rate > 0  # wall printed to 0.01 s, per image to 0.001 s
        assert per_image == pytest.approx(wall / 3, abs=0.01)

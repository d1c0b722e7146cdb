"""bench/refine_schedule.py: LensFit 2's AUC, normal-lens tail and time per schedule C+F."""

import argparse
from pathlib import Path

import numpy as np
import pytest

from tests.bench_scripts import load_bench
from tests.conftest import tiny_images


def _split(root: Path) -> Path:
    root.mkdir(parents=True)
    for i, cls in enumerate(("no_sub", "sphere", "vort")):
        np.save(root / f"{cls}.npy", tiny_images(5, seed=20 + i)[:, 0])
    return root


def test_bench_prints_one_row_per_schedule_from_the_offset(
    tiny_checkpoints: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bench = load_bench("refine_schedule")
    split = _split(tmp_path / "val")
    argv = [str(tiny_checkpoints / "lensfit2"), str(split), "--n", "3", "--offset", "1",
            "--schedule", "0+1", "2+0"]  # fmt: skip
    assert bench.main(argv) == 0
    out = capsys.readouterr().out
    assert "3 per class from image 1" in out
    rows = [line for line in out.splitlines() if line.startswith(("| 0+1 |", "| 2+0 |"))]
    assert len(rows) == 2
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        aucs = [float(c) for c in cells[1:4]]  # sub, sphere, vort
        assert all(0.0 <= a <= 1.0 for a in aucs)
        assert float(cells[-1]) > 0  # seconds per image
    images = bench.stacks(split, 3, offset=1)
    assert {c: len(x) for c, x in images.items()} == {"no_sub": 3, "sphere": 3, "vort": 3}
    np.testing.assert_array_equal(images["vort"][0, 0], np.load(split / "vort.npy")[1])


def test_a_schedule_must_be_two_whole_numbers_of_steps() -> None:
    schedule = load_bench("refine_schedule").schedule
    assert schedule("4+0") == (4, 0)
    for bad in ("4", "4+x", "-1+2"):
        with pytest.raises(argparse.ArgumentTypeError):
            schedule(bad)


def test_a_checkpoint_without_coarse_steps_is_refused(
    tiny_checkpoints: Path, tmp_path: Path
) -> None:
    argv = [str(tiny_checkpoints / "lensfit"), str(_split(tmp_path / "val"))]
    with pytest.raises(SystemExit, match="lensfit has no coarse steps"):
        load_bench("refine_schedule").main(argv)

"""bench/bench_lensfit.py: the AUC and ms/image table against K, and a re-learned prior."""

import sys
from pathlib import Path

import numpy as np
import pytest

from tests.bench_scripts import load_bench
from tests.conftest import tiny_images


def _dataset(root: Path) -> Path:
    for split, seed in (("train", 1), ("val", 2), ("test", 3)):
        (root / split).mkdir(parents=True)
        for i, cls in enumerate(("no_sub", "sphere", "vort")):
            np.save(root / split / f"{cls}.npy", tiny_images(6, seed=10 * seed + i)[:, 0])
    return root


def test_bench_prints_auc_and_time_per_k_with_a_deconvolved_prior(
    tiny_checkpoints: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    data = _dataset(tmp_path / "data")
    argv = ["bench_lensfit.py", str(tiny_checkpoints / "lensfit"), str(data), "--n", "4",
            "--k", "0", "1", "--split", "val", "--prior", "deconvolved",
            "--threads", "1"]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    assert load_bench("bench_lensfit").main() == 0
    out = capsys.readouterr().out
    assert "prior re-learned (deconvolved) from 6 training images" in out
    assert "| theta_e |" in out
    assert "4 val images per class" in out
    rows = [line for line in out.splitlines() if line.startswith(("| 0 |", "| 1 |"))]
    assert len(rows) == 2
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        aucs, ms = [float(c) for c in cells[1:-1]], float(cells[-1])
        assert all(0.0 <= a <= 1.0 for a in aucs) and ms > 0

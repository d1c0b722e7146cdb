"""The sensitivity rules (training.sensitivity) and bench/sensitivity.py on a tiny set: the
detection rate at a threshold, equal-count S/N bins, and scores as `evaluate` makes them."""

import sys
from pathlib import Path

import numpy as np
import pytest

from models.checkpoint import load_checkpoint
from tests.bench_scripts import load_bench
from tests.lenses import tiny_model_r
from training.evaluate import evaluate_checkpoints
from training.sensitivity import (
    default_scores,
    detection_rate,
    empirical_threshold,
    rate_by_snr,
    snr_bins,
    split_snr,
)
from training.simulate import simulate_dataset


def test_the_empirical_threshold_flags_the_asked_share_of_normal_lenses() -> None:
    normal = np.random.default_rng(0).normal(size=2000)
    threshold = empirical_threshold(normal, 0.05)
    assert detection_rate(normal, threshold).rate == pytest.approx(0.05, abs=0.001)
    rate = detection_rate(np.array([threshold, threshold + 1e-9, 10.0]), threshold)
    assert rate.rate == pytest.approx(2 / 3) and rate.n == 3  # flagged above, not at


def test_snr_bins_hold_equal_counts_and_rates_follow_them() -> None:
    snr = np.arange(1.0, 13.0)  # 12 lenses, S/N 1..12
    edges = snr_bins(snr, 3)
    scores = np.where(snr > 8, 5.0, 0.0)  # only the brightest third is flagged
    rows = rate_by_snr(scores, snr, 1.0, edges)
    assert [r.n for _, _, r in rows] == [4, 4, 4]
    assert [r.rate for _, _, r in rows] == [0.0, 0.0, 1.0]
    assert rows[-1][1] == 12.0  # the last bin is closed: the brightest lens counts


@pytest.fixture(scope="module")
def model_a(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return simulate_dataset(
        "model_a", tmp_path_factory.mktemp("sens") / "a", n_train=0, n_val=0, n_test=3, seed=2,
        workers=1, progress=False,
    )  # fmt: skip


def test_default_scores_are_evaluates(
    tiny_checkpoints: Path, model_a: Path, tmp_path: Path
) -> None:
    model_r = tiny_model_r(tmp_path / "r", n_test=2)
    for data, model in ((model_a, "dcae"), (model_r, "lensfit")):
        loaded = load_checkpoint(tiny_checkpoints / model)
        assert loaded.config.default_score == "mse"
        scores = default_scores(loaded, data, 10)
        metrics = evaluate_checkpoints(tiny_checkpoints, data, "cpu", names=[model])
        for cls, values in scores.items():
            expected = metrics.models[model].metrics[f"mse_{cls}"]
            assert float(np.mean(values)) == pytest.approx(expected, rel=1e-5), (model, cls)
    assert len(split_snr(model_a, "vort", 2)) == 2 and (split_snr(model_a, "vort", 2) > 0).all()


def test_the_bench_prints_both_tables_and_draws(
    tiny_checkpoints: Path, model_a: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    bench = load_bench("sensitivity")
    plot = tmp_path / "s.png"
    argv = ["sensitivity.py", str(model_a), "--checkpoints", str(tiny_checkpoints), "--n", "3",
            "--fractions", "0.01", "0.04", "--snr-bins", "2", "--work", str(tmp_path / "w"),
            "--plot", str(plot)]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    assert bench.main() == 0
    out = capsys.readouterr().out
    assert "| exact bound | the normal lenses' 95th percentile |" in out
    assert f"| {tiny_checkpoints.name}/dcae | calibrated on validation |" in out
    assert "| 1% | 4% |" in out and "S/N" in out
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "w").is_dir()  # the 4% set, simulated once
    monkeypatch.setattr(sys, "argv", argv)
    assert bench.main() == 2  # the plot exists: refused without --overwrite

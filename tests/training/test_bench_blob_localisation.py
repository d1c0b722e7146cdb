"""bench/blob_localisation.py: the best blob's distance to the simulated subhalos."""

import csv
from pathlib import Path

import numpy as np
import pytest

from tests.bench_scripts import load_bench
from tests.conftest import threads_kept, tiny_images


def test_nearest_is_the_distance_to_the_closest_subhalo() -> None:
    bench = load_bench("blob_localisation")
    points = np.array([[0.0, 0.0], [1.0, 1.0]])
    subhalos = np.array([[3.0, 4.0], [1.0, 2.0]])
    np.testing.assert_allclose(bench.nearest(points, subhalos), [np.sqrt(5.0), 1.0])
    assert np.isinf(bench.nearest(points, np.zeros((0, 2)))).all()


def test_bench_reads_the_subhalos_and_prints_both_distances(
    tiny_checkpoints: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "set"
    (data / "val").mkdir(parents=True)
    np.save(data / "val" / "sphere.npy", tiny_images(3, seed=2)[:, 0])
    with (data / "subhalos.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["split", "class", "index", "k", "x", "y"])
        for index in range(3):
            writer.writerow(["val", "sphere", index, 0, 0.3, -0.2])
            writer.writerow(["val", "sphere", index, 1, -0.5, 0.4])
        writer.writerow(["test", "sphere", 0, 0, 9.0, 9.0])  # another split: ignored
    bench = load_bench("blob_localisation")
    positions = bench.subhalo_positions(data, "val", "sphere", 3)
    assert [p.shape for p in positions] == [(2, 2)] * 3
    with threads_kept():
        found = bench.localise(tiny_checkpoints / "lensfit2", data, "val", 2, 0.3)
        assert set(found) == {"sphere"}
        d = found["sphere"]
        assert d["best"].shape == d["chance"].shape == d["flagged"].shape == (2,)
        assert (d["chance"] > 0).all() and (d["best"] >= 0).all()
        assert ((d["chance_near"] >= 0) & (d["chance_near"] <= 1)).all()
        assert bench.main([str(tiny_checkpoints / "lensfit2"), str(data), "--n", "2"]) == 0
    out = capsys.readouterr().out
    assert "| sphere (all) | 2 |" in out and "| sphere (flagged) |" in out
    with pytest.raises(SystemExit, match="subhalos.csv"):
        bench.subhalo_positions(tmp_path, "val", "sphere", 1)

"""`simulate --parameter-grid K` (issue 18): the study's sampler, K values per parameter."""

import csv
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest

from training.__main__ import main
from training.lensing.parameter_grid import GRID_PARAMETERS, draw_grid
from training.simulate import CLASS_CODES, draw_params, get_spec, grid_ranges, image_rngs

COLUMNS = ("lens_q", "lens_phi", "source_q", "source_phi", "source_intensity")


def rows(folder: Path) -> list[dict[str, str]]:
    with (folder / "parameters.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def values(table: list[dict[str, str]], cls: str, column: str) -> set[float]:
    return {round(float(r[column]), 12) for r in table if r["class"] == cls}


def simulate(out: Path, *extra: str) -> int:
    return main(
        ["simulate", "--dataset", "model_a", "--out", str(out), "--n-train", "40",
         "--n-val", "2", "--n-val-sub", "2", "--n-test", "40", "--seed", "5",
         "--workers", "1", *extra]
    )  # fmt: skip


def test_each_class_has_k_values_of_its_own(tmp_path: Path) -> None:
    assert simulate(tmp_path / "grid", "--parameter-grid", "3") == 0
    table = rows(tmp_path / "grid")
    for column in COLUMNS:
        no_sub, sphere = values(table, "no_sub", column), values(table, "sphere", column)
        assert len(no_sub) == 3 and 1 <= len(sphere) <= 3  # 82 and 42 images on 3 values
        assert not no_sub & sphere  # drawn by separate calls: other values
    shear = {
        round(math.hypot(float(r["gamma1"]), float(r["gamma2"])), 9)
        for r in table
        if r["class"] == "no_sub"
    }
    assert len(shear) == 3
    record = json.loads((tmp_path / "grid" / "manifest.json").read_text())["parameter_grid"]
    assert record["size"] == 3 and not record["shared"]
    assert values(table, "no_sub", "lens_q") == {
        round(v, 12) for v in record["values"]["no_sub"]["lens_q"]
    }


def test_a_shared_grid_puts_every_class_on_no_subs_values(tmp_path: Path) -> None:
    assert simulate(tmp_path / "own", "--parameter-grid", "3") == 0
    assert simulate(tmp_path / "shared", "--parameter-grid", "3", "--shared-grid") == 0
    own, shared = rows(tmp_path / "own"), rows(tmp_path / "shared")
    for column in COLUMNS:
        assert values(shared, "vort", column) <= values(own, "no_sub", column)
    # the no_sub class is the same with and without sharing: the same images
    no_sub = np.load(tmp_path / "own" / "test" / "no_sub.npy")
    assert np.array_equal(no_sub, np.load(tmp_path / "shared" / "test" / "no_sub.npy"))


def test_without_a_grid_every_image_draws_its_own_values(tmp_path: Path) -> None:
    assert simulate(tmp_path / "free") == 0
    table = rows(tmp_path / "free")
    assert len(values(table, "no_sub", "lens_q")) == 82  # 40 train, 2 val, 40 test
    manifest = json.loads((tmp_path / "free" / "manifest.json").read_text())
    assert "parameter_grid" not in manifest and "grid" not in manifest["ranges"]


def test_without_a_grid_the_draws_are_the_plain_uniform_stream() -> None:
    """The grid's plumbing left the default draws as they were: the 7th uniform is lens_q."""
    spec = get_spec("model_a")
    params = draw_params(spec, "no_sub", image_rngs(3, "test", "no_sub", 9)[0])
    rng = image_rngs(3, "test", "no_sub", 9)[0]
    first_seven = [rng.uniform(lo, hi) for lo, hi in [(0.5, 0.5), (1.0, 1.0), (0, 1), (0, 1),
                                                      (0, 1), (0, 1), spec.lens_q]]  # fmt: skip
    assert params.lens_q == first_seven[-1]


def test_grid_values_are_chosen_uniformly() -> None:
    grid = draw_grid(11, 5, CLASS_CODES, shared=False)
    spec = dataclasses.replace(get_spec("model_b"), grid=grid)
    ranges = grid_ranges(spec)
    drawn = [
        draw_params(spec, "no_sub", image_rngs(0, "train", "no_sub", i)[0]).source_intensity
        for i in range(500)
    ]
    expected = grid.values("no_sub", "source_intensity", *ranges["source_intensity"])
    counts = [sum(math.isclose(d, v) for d in drawn) for v in expected]
    assert sum(counts) == 500
    assert min(counts) > 60  # 100 expected each; a binomial's 4.5 sigma below
    assert set(grid.table[0][1][i][0] for i in range(len(GRID_PARAMETERS))) == set(GRID_PARAMETERS)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--dataset", "model_r", "--parameter-grid", "5"], "model_a and model_b"),
        (["--dataset", "model_a", "--shared-grid"], "--shared-grid needs --parameter-grid"),
    ],
)
def test_refusals_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    out = tmp_path / "data"
    argv = ["simulate", "--out", str(out), "--n-train", "0", "--n-val", "0", "--n-test", "1",
            "--workers", "1", *extra]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert not out.exists()


def test_a_grid_of_one_value_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["simulate", "--dataset", "model_a", "--out", "unused", "--parameter-grid", "1"])
    assert exit_info.value.code == 2
    assert "at least 2 values" in capsys.readouterr().err

"""The simulate command: layout, determinism, atomic writing, regeneration."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import training.simulate as simulate
from deeplense.errors import DatasetError, OutputExistsError
from training.__main__ import main
from training.simulate import regenerate_image, simulate_dataset

FILES = ["train/no_sub.npy", "val/no_sub.npy", "test/no_sub.npy", "test/sphere.npy",
         "test/vort.npy", "manifest.json", "parameters.csv", "subhalos.csv"]  # fmt: skip


def tiny(out: Path, dataset: str = "model_a", seed: int = 1, workers: int = 1) -> Path:
    return simulate_dataset(
        dataset, out, n_train=3, n_val=2, n_test=2, seed=seed, workers=workers, progress=False
    )


def contents(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in FILES}


def test_cli_writes_the_dataset_layout(tmp_path: Path) -> None:
    out = tmp_path / "data"
    argv = ["simulate", "--dataset", "model_a", "--out", str(out), "--n-train", "4",
            "--n-val", "2", "--n-test", "3", "--seed", "1", "--workers", "1",
            "--n-val-sub", "0"]  # fmt: skip
    assert main(argv) == 0
    expected = {"train/no_sub.npy": 4, "val/no_sub.npy": 2, "test/no_sub.npy": 3,
                "test/sphere.npy": 3, "test/vort.npy": 3}  # fmt: skip
    manifest = json.loads((out / "manifest.json").read_text())
    for name, count in expected.items():
        images = np.load(out / name, allow_pickle=False)
        assert images.shape == (count, 1, 150, 150) and images.dtype == np.float32
        assert images.min(axis=(1, 2, 3)).tolist() == [0.0] * count  # each image min-max scaled
        assert images.max(axis=(1, 2, 3)).tolist() == [1.0] * count
        assert manifest["files"][name]["shape"] == [count, 1, 150, 150]
    assert manifest["dataset"] == "model_a" and manifest["seed"] == 1
    assert manifest["counts"]["test"] == {"no_sub": 3, "sphere": 3, "vort": 3}
    assert manifest["counts"]["val"] == {"no_sub": 2}  # --n-val-sub 0: no labelled val
    assert manifest["simulator"]["name"] == "deeplense-lensing"
    assert manifest["ranges"]["snr"] is None  # Model A: the study's photometry, unscaled
    assert manifest["subhalo_mass_fraction"] == 0.01 and manifest["substructure"] == "stated"
    assert "half-light region" in manifest["snr_definition"]
    assert manifest["simulator"]["version"] == simulate.SIMULATOR_VERSION == "2.3.0"
    per_image = manifest["snr"]["per_image"]
    assert len(per_image["test/vort"]["median"]) == 3
    assert len(per_image["train/no_sub"]["peak"]) == 4
    summary = manifest["snr"]["summary"]
    assert 10 < summary["median"]["median"] < 30 and summary["peak"]["median"] > 20
    rows = (out / "parameters.csv").read_text().splitlines()
    assert len(rows) == 1 + 4 + 2 + 3 * 3
    subhalos = (out / "subhalos.csv").read_text().splitlines()
    assert len(subhalos) == 1 + 2 * 3 * 25 and subhalos[0] == "split,class,index,k,x,y"
    assert [p.name for p in tmp_path.iterdir()] == ["data"]  # no temporary folder left


def test_same_seed_gives_identical_files_with_one_or_two_workers(tmp_path: Path) -> None:
    one = contents(tiny(tmp_path / "one", workers=1))
    simulate.CHUNK, chunk = 2, simulate.CHUNK  # several tasks, so both workers get some
    try:
        two = contents(tiny(tmp_path / "two", workers=2))
    finally:
        simulate.CHUNK = chunk
    assert one == two
    assert one != contents(tiny(tmp_path / "other", seed=2))


def test_same_seed_gives_identical_files_run_after_run(tmp_path: Path) -> None:
    # sphere and vort included: the subhalo classes go through the same renderer
    assert contents(tiny(tmp_path / "a", "model_b")) == contents(tiny(tmp_path / "b", "model_b"))


def _worker_settings(_: int) -> tuple[str | None, int]:
    return os.environ.get("OMP_WAIT_POLICY"), torch.get_num_threads()


def test_workers_use_one_torch_thread_and_passive_openmp(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    with simulate._pool(2) as pool:
        assert pool.map(_worker_settings, range(2)) == [("PASSIVE", 1)] * 2
    assert "OMP_WAIT_POLICY" not in os.environ  # this process's environment is restored


def test_an_existing_folder_is_refused_unless_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "data"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    argv = ["simulate", "--dataset", "model_a", "--out", str(out), "--n-train", "1",
            "--n-val", "1", "--n-test", "1", "--workers", "1"]  # fmt: skip
    assert main(argv) == 2
    assert "exists" in capsys.readouterr().err and (out / "keep.txt").exists()
    with pytest.raises(OutputExistsError):
        tiny(out)
    assert main([*argv, "--overwrite"]) == 0
    assert not (out / "keep.txt").exists() and (out / "manifest.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_a_failed_run_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(task: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(simulate, "_run_task", boom)
    with pytest.raises(RuntimeError):
        tiny(tmp_path / "data")
    assert list(tmp_path.iterdir()) == []


def test_model_b_runs_and_varies_redshifts(tmp_path: Path) -> None:
    out = tiny(tmp_path / "b", dataset="model_b")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["dataset"] == "model_b" and manifest["ranges"]["snr"] == [10.0, 30.0]
    medians = [v for part in manifest["snr"]["per_image"].values() for v in part["median"]]
    assert all(10.0 <= v <= 30.0 for v in medians)
    images = np.load(out / "test" / "vort.npy", allow_pickle=False)
    assert images.shape == (2, 1, 150, 150) and images.min() >= 0.0 and images.max() <= 1.0
    rows = (out / "parameters.csv").read_text().splitlines()[1:]
    assert len({row.split(",")[3] for row in rows}) == len(rows)  # theta_e differs per image


def test_any_image_is_regenerated_from_the_manifest(tmp_path: Path) -> None:
    out = tiny(tmp_path / "data")
    for split, cls, index in [("train", "no_sub", 2), ("test", "vort", 1), ("test", "sphere", 0)]:
        stored = np.load(out / split / f"{cls}.npy", allow_pickle=False)[index, 0]
        assert regenerate_image(out, split, cls, index).tobytes() == stored.tobytes()


def test_unknown_dataset_lists_the_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="model_a, model_b"):
        tiny(tmp_path / "x", dataset="model_c")


def test_zero_images_give_empty_arrays(tmp_path: Path) -> None:
    out = simulate_dataset("model_a", tmp_path / "d", 1, 0, 0, workers=1, progress=False)
    assert np.load(out / "test" / "sphere.npy", allow_pickle=False).shape == (0, 1, 150, 150)


def test_subhalo_mass_fraction_and_a_labelled_validation_split(tmp_path: Path) -> None:
    out = tmp_path / "data"
    argv = ["simulate", "--dataset", "model_a", "--out", str(out), "--n-train", "1",
            "--n-val", "2", "--n-val-sub", "2", "--n-test", "1", "--workers", "1",
            "--subhalo-mass-fraction", "0.04"]  # fmt: skip
    assert main(argv) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["subhalo_mass_fraction"] == 0.04
    assert manifest["counts"]["val"] == {"no_sub": 2, "sphere": 2, "vort": 2}
    assert np.load(out / "val" / "vort.npy", allow_pickle=False).shape == (2, 1, 150, 150)
    params = simulate.read_parameters(out, "val", "sphere", 1)
    # 25 subhalos holding 4% of the lens mass: 25 theta_sub^2 = 0.04 theta_E^2
    assert 25 * params.theta_sub**2 == pytest.approx(0.04 * params.theta_e**2)


@pytest.mark.parametrize("bad", ["0", "1", "-0.1", "x"])
def test_a_bad_mass_fraction_is_one_line(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["simulate", "--dataset", "model_a", "--out", "unused", "--subhalo-mass-fraction", bad]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert "--subhalo-mass-fraction" in capsys.readouterr().err


def test_the_labelled_validation_split_defaults_to_a_quarter_of_n_val(tmp_path: Path) -> None:
    out = tmp_path / "data"
    argv = ["simulate", "--dataset", "model_a", "--out", str(out), "--n-train", "0",
            "--n-val", "8", "--n-test", "0", "--workers", "1"]  # fmt: skip
    assert main(argv) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["val"] == {"no_sub": 8, "sphere": 2, "vort": 2}

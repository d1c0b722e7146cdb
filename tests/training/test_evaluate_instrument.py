"""`evaluate` reads real data (class folders of per-image files; astronomers' FITS files with
SCI, ERR, PSF, PIXSCALE) and the --psf / --pixel-scale flags as `deeplense score` and the
service do: the same preparation, the same scores, file by file."""

import csv
from pathlib import Path

import numpy as np
import pytest

from deeplense.instrument import gaussian_kernel
from deeplense.observation import RequestInstrument
from tests.app.conftest import image
from tests.app.test_instrument_uploads import cutout
from training.__main__ import main
from training.evaluate import evaluate_checkpoints

CLASSES = ("no_sub", "sphere")


def write_split(root: Path, side: int, fits: bool) -> dict[str, list[Path]]:
    """root/test/<class>/<k>.fits (SCI + ERR + PSF + PIXSCALE 0.1") or .npy: 3 per class."""
    files: dict[str, list[Path]] = {}
    for c, cls in enumerate(CLASSES):
        folder = root / "test" / cls
        folder.mkdir(parents=True)
        for k in range(3):
            sci = image(10 * c + k, size=side) * 40.0 + 3.0
            path = folder / f"{k}.{'fits' if fits else 'npy'}"
            if fits:
                path.write_bytes(cutout(
                    science=sci, noise_map=np.full((side, side), 0.4 + 0.1 * k),
                    psf=gaussian_kernel(1.2), header={"PIXSCALE": 0.1},
                ))  # fmt: skip
            else:
                np.save(path, sci.astype(np.float32))
            files.setdefault(cls, []).append(path)
    return files


def cli_mse(checkpoints: Path, model: str, files: list[Path], out: Path, *flags: str) -> float:
    """The mean per-image MSE `deeplense score` gives these files."""
    code = main(["score", "--checkpoints", str(checkpoints), "--model", model, "--device",
                 "cpu", "--score", "mse", "--out", str(out), *flags, *map(str, files)])  # fmt: skip
    assert code == 0
    with out.open() as fh:
        return float(np.mean([float(r["anomaly_score"]) for r in csv.DictReader(fh)]))


@pytest.mark.parametrize("model", ["lensfit", "dcae"])
def test_an_evaluated_fits_split_scores_as_the_score_command_does(
    tiny_checkpoints: Path, tmp_path: Path, model: str
) -> None:
    # 24 x 24 of 0.1", not the tiny card's 0.05": LensFit fits it on its own grid, the DCAE
    # gets it resampled; each file has its own noise map and PSF.
    files = write_split(tmp_path / "data", 24, fits=True)
    evaluation = evaluate_checkpoints(tiny_checkpoints, tmp_path / "data", "cpu", names=[model])
    metrics = evaluation.models[model].metrics
    for cls in CLASSES:
        expected = cli_mse(tiny_checkpoints, model, files[cls], tmp_path / f"{cls}.csv")
        assert metrics[f"mse_{cls}"] == pytest.approx(expected, rel=1e-4)
    assert 0.0 <= metrics["auc_chi2_psf_sub"] <= 1.0


def test_the_pixel_scale_flag_applies_to_a_split_without_its_own(
    tiny_checkpoints: Path, tmp_path: Path
) -> None:
    files = write_split(tmp_path / "data", 24, fits=False)
    data = tmp_path / "data"
    flagged = evaluate_checkpoints(
        tiny_checkpoints, data, "cpu", names=["lensfit"], request=RequestInstrument(pixel_scale=0.1)
    )
    plain = evaluate_checkpoints(tiny_checkpoints, data, "cpu", names=["lensfit"])
    with_flag = cli_mse(tiny_checkpoints, "lensfit", files["no_sub"], tmp_path / "a.csv",
                        "--pixel-scale", "0.1")  # fmt: skip
    without = cli_mse(tiny_checkpoints, "lensfit", files["no_sub"], tmp_path / "b.csv")
    assert flagged.models["lensfit"].metrics["mse_no_sub"] == pytest.approx(with_flag, rel=1e-4)
    assert plain.models["lensfit"].metrics["mse_no_sub"] == pytest.approx(without, rel=1e-4)
    assert with_flag != pytest.approx(without, rel=1e-3)  # the flag changes what is drawn
    out = tmp_path / "report"
    assert main(["evaluate", "--checkpoints", str(tiny_checkpoints), "--model", "lensfit",
                 "--data", str(data), "--out", str(out), "--device", "cpu",
                 "--pixel-scale", "0.1"]) == 0  # fmt: skip
    assert (out / "metrics.json").is_file()


def test_a_bad_psf_flag_is_one_line_and_exit_2(
    tiny_checkpoints: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_split(tmp_path / "data", 24, fits=False)
    bad = tmp_path / "psf.npy"
    np.save(bad, np.ones((4, 4)))  # even-sized
    code = main(["evaluate", "--checkpoints", str(tiny_checkpoints), "--model", "dcae",
                 "--data", str(tmp_path / "data"), "--out", str(tmp_path / "r"),
                 "--psf", str(bad)])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "odd" in err and "\n" not in err

"""Uploads bring their own instrument: FITS SCI with ERR / VAR / WHT and PSF extensions and
the header's pixel scale, or a request-level psf part and pixel_scale; every result says what
it used and where each part came from; bad instrument input gets a 4xx or a per-file error.
The service and the `score` CLI read the same files alike."""

import base64
import csv
import io
import struct
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from fastapi.testclient import TestClient

from deeplense.instrument import gaussian_kernel
from tests.app.conftest import image, upload
from tests.encode import npy_bytes
from training.__main__ import main

S = 32  # the tiny checkpoints' side; their card: 0.05"/pixel, PSF sigma 0.1" (2 pixels)


def cutout(
    noise: str | None = "ERR",
    psf: np.ndarray | None = None,
    header: dict | None = None,
    science: np.ndarray | None = None,
    noise_map: np.ndarray | None = None,
) -> bytes:
    """A FITS file as surveys store one: an empty primary, SCI, a noise extension, a PSF."""
    sci = image(7) * 40.0 + 3.0 if science is None else science  # counts
    sigma = np.full(sci.shape, 0.5) if noise_map is None else noise_map
    values = {"ERR": sigma, "VAR": sigma**2, "WHT": 1.0 / sigma**2}
    hdus = [fits.PrimaryHDU(), fits.ImageHDU(sci.astype(np.float32), name="SCI")]
    for key, value in (header or {}).items():
        hdus[1].header[key] = value
    if noise is not None:
        hdus.append(fits.ImageHDU(values[noise].astype(np.float32), name=noise))
    if psf is not None:
        hdus.append(fits.ImageHDU(psf, name="PSF"))
    buffer = io.BytesIO()
    fits.HDUList(hdus).writeto(buffer)
    return buffer.getvalue()


def score_one(client: TestClient, data: bytes, name: str = "cut.fits", **params: object) -> dict:
    response = client.post(
        "/score", params={"model": "dcae", "include_images": "false", **params},
        files=[upload(name, data)],
    )  # fmt: skip
    assert response.status_code == 200, response.text
    return response.json()["results"][0]


@pytest.mark.parametrize("noise", ["ERR", "VAR", "WHT"])
def test_each_noise_layout_is_read_as_the_same_noise_map(client: TestClient, noise: str) -> None:
    result = score_one(client, cutout(noise))
    assert result["error"] is None
    used = result["instrument"]["noise"]
    assert used["source"] == "upload" and used["extension"] == noise
    # sigma 0.5 counts over a 40-count range: 0.0125 in min-max scaled units, whatever the layout
    assert used["median"] == pytest.approx(0.5 / (image(7).max() - image(7).min()) / 40.0)


def test_a_supplied_noise_map_replaces_the_estimate(client: TestClient) -> None:
    estimated = score_one(client, cutout(noise=None), score="chi2")
    twice = score_one(client, cutout(noise_map=np.full((S, S), 1.0)), score="chi2")
    once = score_one(client, cutout(noise_map=np.full((S, S), 0.5)), score="chi2")
    assert estimated["instrument"]["noise"]["source"] == "estimated"
    assert twice["instrument"]["noise"]["source"] == "upload"
    # chi2 scales as 1 / sigma^2: a noise map twice as large gives a quarter of the score.
    assert once["anomaly_score"] == pytest.approx(4 * twice["anomaly_score"], rel=1e-4)


def test_the_files_psf_and_pixel_scale_are_used_and_reported(client: TestClient) -> None:
    kernel = gaussian_kernel(2.0)
    result = score_one(client, cutout(psf=kernel * 3.0, header={"PIXSCALE": 0.05}))
    used = result["instrument"]
    assert used["psf"]["source"] == "upload" and used["psf"]["kind"] == "kernel"
    assert used["psf"]["fwhm_arcsec"] == pytest.approx(2.3548 * 0.1, rel=5e-3)
    assert used["pixel_scale"] == {"value_arcsec": 0.05, "source": "upload"}
    assert result["warnings"] == []
    # The same PSF from the checkpoint gives the same score: the kernel is the card's Gaussian.
    plain = score_one(client, cutout())
    assert plain["instrument"]["psf"]["source"] == "checkpoint"
    assert result["anomaly_score"] == pytest.approx(plain["anomaly_score"], rel=2e-3)


def test_a_cd_matrix_gives_the_pixel_scale(client: TestClient) -> None:
    degrees = 0.1 / 3600
    header = {"CD1_1": -degrees, "CD1_2": 0.0, "CD2_1": 0.0, "CD2_2": degrees}
    result = score_one(client, cutout(header=header))
    assert result["instrument"]["pixel_scale"]["value_arcsec"] == pytest.approx(0.1)
    assert any("not calibrated" in w for w in result["warnings"])


def test_the_request_psf_and_pixel_scale_apply_to_files_without_their_own(
    client: TestClient,
) -> None:
    psf = io.BytesIO()
    np.save(psf, gaussian_kernel(2.4))
    files = [
        upload("plain.npy", npy_bytes(image(3))),
        upload("own.fits", cutout(psf=gaussian_kernel(2.0), header={"PIXSCALE": 0.05})),
        ("psf", ("psf.npy", psf.getvalue(), "application/octet-stream")),
    ]
    response = client.post(
        "/score", params={"model": "dcae", "pixel_scale": 0.05, "include_images": "false"},
        files=files,
    )  # fmt: skip
    assert response.status_code == 200, response.text
    plain, own = (r["instrument"] for r in response.json()["results"])
    assert plain["psf"]["source"] == "request" and plain["pixel_scale"]["source"] == "request"
    assert plain["psf"]["fwhm_arcsec"] == pytest.approx(2.3548 * 2.4 * 0.05, rel=5e-3)
    assert own["psf"]["source"] == "upload" and own["pixel_scale"]["source"] == "upload"


def test_masked_pixels_are_left_out_of_every_score(client: TestClient) -> None:
    sci = image(7) * 40.0 + 3.0
    masked = sci.copy()
    masked[:, 10] = np.nan  # a bad column
    spoiled = sci.copy()
    spoiled[:, 10] = 1e4  # the same column, wildly wrong, but with zero weight
    sigma = np.full((S, S), 0.5)
    sigma[:, 10] = np.inf  # zero weight in the WHT extension
    nan_result = score_one(client, cutout(science=masked))
    assert nan_result["error"] is None
    assert any("masked pixels" in w for w in nan_result["warnings"])
    zero_weight = score_one(client, cutout("WHT", science=spoiled, noise_map=sigma))
    assert zero_weight["error"] is None
    assert zero_weight["anomaly_score"] < 100  # the 1e4 column counts nowhere


def test_a_non_square_image_is_padded_never_stretched(client: TestClient) -> None:
    result = score_one(client, npy_bytes(image(2, size=40)[:, 8:32]), name="strip.npy")
    assert result["error"] is None and result["input_shape"] == [40, 24]
    assert any("not stretched" in w for w in result["warnings"])


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (cutout(noise_map=np.full((S, S - 2), 0.5)), "must match"),
        (cutout(noise_map=np.where(np.eye(S) > 0, -1.0, 0.5)), "zero, negative or NaN"),
        (cutout(noise_map=np.where(np.eye(S) > 0, np.nan, 0.5)), "zero, negative or NaN"),
        (cutout(psf=np.ones((4, 4))), "odd side"),
        (cutout(psf=-gaussian_kernel(1.0)), "negative"),
        (cutout(psf=np.full((3, 3), np.nan)), "NaN"),
        (cutout(psf=gaussian_kernel(10.0)), "larger than the"),
        (cutout(header={"PIXSCALE": 0.0}), "positive"),
        (cutout(header={"PIXSCALE": -0.05}), "positive"),
    ],
)
def test_bad_instrument_in_a_file_is_a_per_file_error(
    client: TestClient, data: bytes, words: str
) -> None:
    files = [upload("bad.fits", data), upload("good.npy", npy_bytes(image(1)))]
    response = client.post("/score", params={"model": "dcae"}, files=files)
    assert response.status_code == 200, response.text
    bad, good = response.json()["results"]
    assert bad["error"] is not None and bad["error"].startswith("bad.fits: ")
    assert words in bad["error"], bad["error"]
    assert good["error"] is None


@pytest.mark.parametrize(
    ("psf", "params", "words"),
    [
        (np.ones(5), {}, "2-D"),
        (np.ones((4, 4)), {}, "odd side"),
        (np.full((3, 3), np.nan), {}, "NaN"),
        (None, {"pixel_scale": 0}, "greater than 0"),
        (None, {"pixel_scale": -1}, "greater than 0"),
    ],
)
def test_bad_request_instrument_is_a_422_saying_what(
    client: TestClient, psf: np.ndarray | None, params: dict, words: str
) -> None:
    files = [upload("a.npy", npy_bytes(image(1)))]
    if psf is not None:
        buffer = io.BytesIO()
        np.save(buffer, psf)
        files.append(("psf", ("psf.npy", buffer.getvalue(), "application/octet-stream")))
    response = client.post("/score", params=params, files=files)
    assert response.status_code == 422
    assert words in str(response.json()["detail"])


def test_the_cli_reads_the_same_layouts_and_reports_the_same_sources(
    client: TestClient, tiny_checkpoints: Path, tmp_path: Path
) -> None:
    (tmp_path / "err.fits").write_bytes(cutout("ERR", psf=gaussian_kernel(2.0),
                                                header={"PIXSCALE": 0.05}))  # fmt: skip
    (tmp_path / "plain.npy").write_bytes(npy_bytes(image(3)))
    np.save(tmp_path / "psf.npy", gaussian_kernel(2.4))
    out = tmp_path / "scores.csv"
    code = main(["score", "--checkpoints", str(tiny_checkpoints), "--model", "dcae", "--device",
                 "cpu", "--out", str(out), "--psf", str(tmp_path / "psf.npy"), "--pixel-scale",
                 "0.05", str(tmp_path / "err.fits"), str(tmp_path / "plain.npy")])  # fmt: skip
    assert code == 0
    with out.open() as fh:
        rows = {Path(r["filename"]).name: r for r in csv.DictReader(fh)}
    assert rows["err.fits"]["noise_source"] == "upload"
    assert rows["err.fits"]["psf_source"] == rows["err.fits"]["pixel_scale_source"] == "upload"
    assert rows["plain.npy"]["psf_source"] == rows["plain.npy"]["pixel_scale_source"] == "request"
    assert rows["plain.npy"]["noise_source"] == "estimated"
    served = score_one(client, (tmp_path / "err.fits").read_bytes(), name="err.fits")
    assert float(rows["err.fits"]["anomaly_score"]) == pytest.approx(
        served["anomaly_score"], rel=1e-5
    )


def test_a_bad_cli_psf_is_one_line_and_exit_2(
    tiny_checkpoints: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    np.save(tmp_path / "psf.npy", np.ones((4, 4)))
    (tmp_path / "a.npy").write_bytes(npy_bytes(image(3)))
    code = main(["score", "--checkpoints", str(tiny_checkpoints), "--model", "dcae", "--out",
                 str(tmp_path / "s.csv"), "--psf", str(tmp_path / "psf.npy"),
                 str(tmp_path / "a.npy")])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and "odd side" in err and len(err.splitlines()) == 1


def _png_size(data: str) -> tuple[int, int]:
    raw = base64.b64decode(data)
    return struct.unpack(">II", raw[16:24])  # IHDR: width, height


def test_lensfit_fits_an_image_of_another_scale_on_its_own_grid_the_dcae_resamples_it(
    client: TestClient, tiny_checkpoints: Path, tmp_path: Path
) -> None:
    # 24 x 24 pixels of 0.1" (2.4"): the tiny card's field is 32 x 0.05" = 1.6", 16 own pixels.
    data = cutout(science=image(5, size=24) * 40.0 + 3.0, noise_map=np.full((24, 24), 0.5),
                  header={"PIXSCALE": 0.1})  # fmt: skip
    results = {}
    for model in ("lensfit", "dcae"):
        response = client.post(
            "/score", params={"model": model, "include_images": "true"},
            files=[upload("euclid.fits", data)],
        )  # fmt: skip
        assert response.status_code == 200, response.text
        results[model] = response.json()["results"][0]
    own, resampled = results["lensfit"], results["dcae"]
    assert _png_size(own["reconstruction"]) == _png_size(own["residual"]) == (16, 16)
    assert _png_size(resampled["reconstruction"]) == (S, S)
    assert any("own grid" in w and "not calibrated" in w for w in own["warnings"])
    assert any("resampled to its grid" in w for w in resampled["warnings"])
    # The CLI prepares and fits it alike.
    (tmp_path / "euclid.fits").write_bytes(data)
    out = tmp_path / "scores.csv"
    code = main(["score", "--checkpoints", str(tiny_checkpoints), "--model", "lensfit",
                 "--device", "cpu", "--out", str(out), str(tmp_path / "euclid.fits")])  # fmt: skip
    assert code == 0
    with out.open() as fh:
        (row,) = csv.DictReader(fh)
    # LensFit's float32 refinement follows the sums' order (threads differ between the two
    # processes): measured 4e-5 apart on the card's grid, 8e-4 here.
    assert float(row["anomaly_score"]) == pytest.approx(own["anomaly_score"], rel=3e-3)

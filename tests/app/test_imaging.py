"""Response images: the hand-written PNG encoder, the heat map, upload preparation."""

import base64
import io

import numpy as np
from PIL import Image

from app.imaging import INFERNO_LUT, encode_png, gray_png, heatmap_png, prepare
from deeplense.errors import InvalidImageError
from deeplense.imaging import DecodedImage, decode_image
from deeplense.instrument import STUDY_INSTRUMENT
from tests.app.conftest import image
from tests.encode import npy_bytes


def test_encode_png_round_trips_through_pillow() -> None:
    pixels = np.random.default_rng(0).integers(0, 256, size=(17, 23), dtype=np.uint8)
    decoded = Image.open(io.BytesIO(encode_png(pixels)))
    assert decoded.mode == "L" and decoded.size == (23, 17)
    np.testing.assert_array_equal(np.asarray(decoded), pixels)


def test_encode_png_with_palette_round_trips_through_pillow() -> None:
    pixels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    decoded = Image.open(io.BytesIO(encode_png(pixels, palette=INFERNO_LUT)))
    assert decoded.mode == "P"
    np.testing.assert_array_equal(np.asarray(decoded), pixels)
    rgb = np.asarray(decoded.convert("RGB")).reshape(-1, 3)
    np.testing.assert_array_equal(rgb, np.frombuffer(INFERNO_LUT, np.uint8).reshape(256, 3))


def test_gray_png_maps_zero_to_black_and_one_to_white() -> None:
    x = np.array([[[0.0, 0.5, 1.0]]], dtype=np.float32)  # (1, 1, 3)
    decoded = Image.open(io.BytesIO(base64.b64decode(gray_png(x))))
    assert np.asarray(decoded).tolist() == [[0, 128, 255]]


def test_heatmap_spans_black_to_pale_yellow() -> None:
    residual = np.array([[0.0, 0.1, 0.2]], dtype=np.float32)
    decoded = Image.open(io.BytesIO(base64.b64decode(heatmap_png(residual, vmax=0.2))))
    rgb = np.asarray(decoded.convert("RGB"))[0]
    assert rgb[0].tolist() == [0, 0, 4]  # inferno's black
    assert rgb[2].tolist() == [252, 255, 164]  # inferno's pale yellow
    assert 0 < rgb[1].sum() < rgb[2].sum()


def test_prepare_reports_the_problem_instead_of_raising() -> None:
    def decoded(data: bytes, name: str) -> DecodedImage | InvalidImageError:
        try:
            return decode_image(data, filename=name)
        except InvalidImageError as exc:
            return exc

    good = prepare("ok.npy", decoded(npy_bytes(image(size=40)), "ok.npy"), 32, STUDY_INSTRUMENT)
    assert good.error is None and good.resized and good.input_shape == (40, 40)
    assert good.image is not None and good.image.shape == (1, 32, 32)
    bad = prepare("bad.npy", decoded(b"\x93NUMPY garbage", "bad.npy"), 32, STUDY_INSTRUMENT)
    assert bad.image is None and bad.error is not None and bad.error.startswith("bad.npy")

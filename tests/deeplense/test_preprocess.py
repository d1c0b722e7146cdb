"""Preprocessing to model input: min-max scaling, resizing, and the identity on dataset images."""

from pathlib import Path

import numpy as np
import pytest

from deeplense.errors import InvalidImageError
from deeplense.imaging import read_image
from deeplense.preprocess import minmax_scale, prepare_batch, resize_image, to_model_input
from tests.conftest import tiny_images
from tests.encode import fits_bytes, tiff_bytes


def test_minmax_scale_maps_to_unit_interval() -> None:
    image = np.array([[2.0, 4.0], [6.0, 10.0]])
    scaled = minmax_scale(image)
    assert scaled.dtype == np.float32
    np.testing.assert_allclose(scaled, [[0.0, 0.25], [0.5, 1.0]])


def test_minmax_scale_is_the_identity_on_scaled_images() -> None:
    image = tiny_images(1, seed=5)[0, 0]  # (32, 32) float32, min 0 and max 1
    assert image.min() == 0.0 and image.max() == 1.0
    scaled = minmax_scale(image)
    assert scaled.tobytes() == image.tobytes() and scaled is not image


@pytest.mark.parametrize(
    ("image", "problem"),
    [
        (np.full((4, 4), 3.0), "constant"),
        (np.array([[0.0, np.nan], [1.0, 2.0]]), "NaN or infinite"),
        (np.array([[0.0, np.inf], [1.0, 2.0]]), "NaN or infinite"),
        (np.zeros((0, 4)), "empty"),
    ],
)
def test_minmax_scale_refuses_bad_images(image: np.ndarray, problem: str) -> None:
    with pytest.raises(InvalidImageError, match=f"flat.fits: .*{problem}"):
        minmax_scale(image, "flat.fits")


@pytest.mark.parametrize("size", [32, 16])
def test_to_model_input_on_a_dataset_image_is_byte_identical(tmp_path: Path, size: int) -> None:
    """The service reads a dataset image's file and must score exactly what evaluation scores."""
    image = tiny_images(1, seed=7, size=size)[0]  # (1, S, S) as the simulator writes
    path = tmp_path / "one.npy"
    np.save(path, image)
    sources: list[Path | bytes] = [path, fits_bytes(image), tiff_bytes(image[0])]
    for source in sources:
        x, resized = to_model_input(read_image(source, filename="one"), size)
        assert not resized
        assert x.shape == (1, size, size) and x.dtype == np.float32
        assert x.tobytes() == image.tobytes()


def test_to_model_input_scales_without_resizing_at_the_right_size() -> None:
    image = np.arange(16.0).reshape(4, 4) * 3 + 100
    x, resized = to_model_input(image, 4)
    assert not resized
    np.testing.assert_allclose(x[0], np.arange(16.0).reshape(4, 4) / 15, rtol=1e-6)


def test_shrinking_averages_whole_areas() -> None:
    rng = np.random.default_rng(0)
    image = rng.random((8, 8))
    x, resized = to_model_input(image, 4)
    assert resized and x.shape == (1, 4, 4)
    blocks = image.reshape(4, 2, 4, 2).mean(axis=(1, 3))  # 2x2 block means
    expected = (blocks - blocks.min()) / (blocks.max() - blocks.min())
    np.testing.assert_allclose(x[0], expected, atol=1e-6)


def test_enlarging_interpolates_bilinearly() -> None:
    image = np.tile(np.arange(4.0), (4, 1))  # each row 0, 1, 2, 3
    x, resized = to_model_input(image, 8)
    assert resized and x.shape == (1, 8, 8)
    np.testing.assert_array_equal(x[0], np.tile(x[0, :1], (8, 1)))  # rows stay equal
    assert (np.diff(x[0, 0]) >= 0).all() and x.min() == 0.0 and x.max() == 1.0
    # half-pixel centres: output column 2 (centre 2.5 of 8) samples input at 0.75
    np.testing.assert_allclose(resize_image(image, 8)[0, 2], 0.75)


def test_non_square_images_are_resized_to_a_square() -> None:
    image = np.random.default_rng(1).random((12, 40))  # one axis grows, the other shrinks
    x, resized = to_model_input(image, 16)
    assert resized and x.shape == (1, 16, 16)
    assert x.min() == 0.0 and x.max() == 1.0


def test_to_model_input_refuses_bad_images() -> None:
    with pytest.raises(InvalidImageError, match="a.npy: not a 2-D image"):
        to_model_input(np.zeros((1, 4, 4)), 4, "a.npy")
    with pytest.raises(InvalidImageError, match="b.npy: has NaN"):
        to_model_input(np.array([[0.0, np.nan], [1.0, 2.0]]), 4, "b.npy")  # before resizing
    with pytest.raises(InvalidImageError, match="c.npy: constant"):
        to_model_input(np.ones((8, 8)), 4, "c.npy")


def test_prepare_batch_stacks_and_flags() -> None:
    images = [tiny_images(1, size=16)[0, 0], np.random.default_rng(2).random((20, 10))]
    batch, flags = prepare_batch(images, 16)
    assert batch.shape == (2, 1, 16, 16) and batch.dtype == np.float32
    assert flags == [False, True]
    assert batch[0, 0].tobytes() == images[0].tobytes()
    empty, none = prepare_batch([], 16)
    assert empty.shape == (0, 1, 16, 16) and none == []


def test_prepare_batch_names_the_bad_file() -> None:
    images = [np.random.default_rng(3).random((4, 4)), np.zeros((4, 4))]
    with pytest.raises(InvalidImageError, match="second.png: constant"):
        prepare_batch(images, 4, filenames=["first.png", "second.png"])

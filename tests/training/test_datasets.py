"""Dataset loaders: our stack layout, folders of per-image files, and their errors."""

import hashlib
import logging
import pickle
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from astropy.io import fits
from PIL import Image
from torch.utils.data import DataLoader

from deeplense.errors import DatasetError, InvalidImageError
from deeplense.imaging import read_image
from deeplense.preprocess import to_model_input
from deeplense.vocabulary import CLASSES, LABELS, manifest_sha256
from tests.conftest import tiny_images
from tests.encode import npy_bytes
from training.datasets import ImageArrayDataset, find_image_files, labelled_test_set, load_split

S = 16  # image side of the tiny datasets


def write_simulated(root: Path, n: int = 5) -> dict[str, np.ndarray]:
    """Our layout: root/train/no_sub.npy, root/val/no_sub.npy, root/test/<class>.npy."""
    written = {}
    for seed, (split, cls) in enumerate(
        [("train", "no_sub"), ("val", "no_sub")] + [("test", c) for c in CLASSES]
    ):
        (root / split).mkdir(parents=True, exist_ok=True)
        images = tiny_images(n, seed=seed, size=S)  # (n, 1, S, S) min 0, max 1 each
        np.save(root / split / f"{cls}.npy", images)
        written[f"{split}/{cls}"] = images
    return written


def test_simulated_layout_is_memory_mapped_and_exact(tmp_path: Path) -> None:
    written = write_simulated(tmp_path)
    train = load_split(tmp_path, "train")
    assert list(train) == ["no_sub"]
    assert isinstance(train["no_sub"], np.memmap)
    assert train["no_sub"].shape == (5, 1, S, S) and train["no_sub"].dtype == np.float32
    assert train["no_sub"].tobytes() == written["train/no_sub"].tobytes()
    test = load_split(tmp_path, "test", image_size=S)
    assert list(test) == list(CLASSES)
    assert all(isinstance(v, np.memmap) for v in test.values())


def test_stack_without_channel_axis_is_accepted(tmp_path: Path) -> None:
    (tmp_path / "val").mkdir()
    images = tiny_images(3, size=S)
    np.save(tmp_path / "val" / "no_sub.npy", images[:, 0])  # (N, S, S)
    val = load_split(tmp_path, "val")
    assert val["no_sub"].shape == (3, 1, S, S) and isinstance(val["no_sub"], np.memmap)
    np.testing.assert_array_equal(val["no_sub"], images)


def test_unscaled_stack_is_prepared_like_the_service(tmp_path: Path) -> None:
    (tmp_path / "test").mkdir()
    raw = tiny_images(3, size=S).astype(np.float64) * 50 + 7  # not min-max scaled
    np.save(tmp_path / "test" / "no_sub.npy", raw)
    out = load_split(tmp_path, "test")["no_sub"]
    assert not isinstance(out, np.memmap)
    for i in range(3):  # the service reads the same image as float32, then prepares it
        one = read_image(npy_bytes(raw[i]), filename="one.npy")
        assert out[i].tobytes() == to_model_input(one, S)[0].tobytes()


def test_stack_is_resized_to_image_size(tmp_path: Path) -> None:
    write_simulated(tmp_path)
    val = load_split(tmp_path, "val", image_size=8)["no_sub"]
    assert val.shape == (5, 1, 8, 8)
    assert val.min() == 0.0 and val.max() == 1.0


def test_fits_cube_is_a_class_stack(tmp_path: Path) -> None:
    (tmp_path / "test").mkdir()
    images = tiny_images(4, size=S)
    fits.PrimaryHDU(images[:, 0]).writeto(tmp_path / "test" / "no_sub.fits")
    np.testing.assert_array_equal(load_split(tmp_path, "test")["no_sub"], images)


def write_folder_of_files(base: Path) -> dict[str, list[Path]]:
    """base/<class>/ holding one file per image, in several formats."""
    files: dict[str, list[Path]] = {}
    for c, cls in enumerate(CLASSES):
        folder = base / cls
        (folder / "deeper").mkdir(parents=True)
        images = tiny_images(4, seed=10 + c, size=S)[:, 0]
        paths = [
            folder / "b.npy",
            folder / "a.fits",
            folder / "deeper" / "c.png",
            folder / "d.tif",
        ]
        np.save(paths[0], images[0][None])  # (1, S, S) as DeepLense ships
        fits.PrimaryHDU(images[1]).writeto(paths[1])
        Image.fromarray((images[2] * 255).astype(np.uint8)).save(paths[2])
        tifffile.imwrite(paths[3], images[3])
        (folder / "notes.txt").write_text("not an image")
        files[cls] = sorted(paths)
    return files


def test_folder_per_class_layout(tmp_path: Path) -> None:
    files = write_folder_of_files(tmp_path / "test")
    test = load_split(tmp_path, "test")
    for cls in CLASSES:
        assert test[cls].shape == (4, 1, S, S) and test[cls].dtype == np.float32
        for i, path in enumerate(files[cls]):  # sorted path order: a.fits, b.npy, d.tif, ...
            expected, _ = to_model_input(read_image(path), S, str(path))
            assert test[cls][i].tobytes() == expected.tobytes()


def test_folder_images_of_other_sizes_need_image_size(tmp_path: Path) -> None:
    folder = tmp_path / "test" / "no_sub"
    folder.mkdir(parents=True)
    np.save(folder / "a.npy", tiny_images(1, size=S)[0, 0])
    np.save(folder / "b.npy", tiny_images(1, size=24)[0, 0])
    with pytest.raises(DatasetError, match=r"b\.npy: shape mismatch.*pass image_size"):
        load_split(tmp_path, "test")
    out = load_split(tmp_path, "test", image_size=S)["no_sub"]
    assert out.shape == (2, 1, S, S)


def test_real_data_without_splits_reads_class_folders(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_folder_of_files(tmp_path)  # tmp_path/<class>/..., no split folders
    test = load_split(tmp_path, "test")
    assert set(test) == set(CLASSES)
    with caplog.at_level(logging.WARNING, logger="training.datasets"):
        train = load_split(tmp_path, "train", classes=["no_sub"])
    assert "every split reads the same images" in caplog.text
    np.testing.assert_array_equal(train["no_sub"], test["no_sub"])


def test_deeplense_folder_names_are_aliases(tmp_path: Path) -> None:
    for name in ["no", "vortex"]:
        (tmp_path / name).mkdir()
        np.save(tmp_path / name / "0.npy", tiny_images(1, size=S)[0])
    assert set(load_split(tmp_path, "test")) == {"no_sub", "vort"}


def test_labelled_test_set(tmp_path: Path) -> None:
    written = write_simulated(tmp_path, n=3)
    images, labels, names = labelled_test_set(tmp_path)
    assert images.shape == (9, 1, S, S)
    assert labels.tolist() == [0, 0, 0, 1, 1, 1, 1, 1, 1]
    assert names.tolist() == ["no_sub"] * 3 + ["sphere"] * 3 + ["vort"] * 3
    assert images[3:6].tobytes() == written["test/sphere"].tobytes()
    assert [LABELS[n] for n in names] == labels.tolist()


def test_labelled_test_set_needs_both_kinds(tmp_path: Path) -> None:
    (tmp_path / "test").mkdir()
    np.save(tmp_path / "test" / "no_sub.npy", tiny_images(2, size=S))
    with pytest.raises(DatasetError, match="needs no_sub and at least one of sphere, vort"):
        labelled_test_set(tmp_path)


def test_missing_folder_split_or_class_is_a_dataset_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="dataset folder not found"):
        load_split(tmp_path / "nope", "train")
    with pytest.raises(DatasetError, match=r"no 'train' folder .*no_sub"):
        load_split(tmp_path, "train")
    (tmp_path / "test").mkdir()
    np.save(tmp_path / "test" / "no_sub.npy", tiny_images(2, size=S))
    with pytest.raises(DatasetError, match=r"test: missing class 'sphere': expected .*sphere\.npy"):
        load_split(tmp_path, "test", classes=["no_sub", "sphere"])
    (tmp_path / "val").mkdir()
    with pytest.raises(DatasetError, match="val: no class found"):
        load_split(tmp_path, "val")


def test_shape_mismatch_between_classes(tmp_path: Path) -> None:
    (tmp_path / "test").mkdir()
    np.save(tmp_path / "test" / "no_sub.npy", tiny_images(2, size=S))
    np.save(tmp_path / "test" / "sphere.npy", tiny_images(2, size=8))
    with pytest.raises(DatasetError, match=r"shape mismatch between classes \(no_sub 16x16"):
        load_split(tmp_path, "test")
    assert load_split(tmp_path, "test", image_size=8)["no_sub"].shape == (2, 1, 8, 8)


def test_non_square_stack_needs_image_size(tmp_path: Path) -> None:
    (tmp_path / "test").mkdir()
    np.save(tmp_path / "test" / "no_sub.npy", np.random.default_rng(0).random((2, 1, 8, 12)))
    with pytest.raises(DatasetError, match="8x12, not square; pass image_size"):
        load_split(tmp_path, "test")
    assert load_split(tmp_path, "test", image_size=10)["no_sub"].shape == (2, 1, 10, 10)


def test_ambiguous_and_empty_classes(tmp_path: Path) -> None:
    (tmp_path / "test" / "no_sub").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no_sub: no image files"):
        load_split(tmp_path, "test")
    np.save(tmp_path / "test" / "no_sub.npy", tiny_images(2, size=S))
    with pytest.raises(DatasetError, match="ambiguous"):
        load_split(tmp_path, "test")


def test_bad_image_in_a_stack_names_file_and_index(tmp_path: Path) -> None:
    (tmp_path / "test").mkdir()
    images = tiny_images(3, size=S)
    images[1] = 0.5
    np.save(tmp_path / "test" / "no_sub.npy", images)
    with pytest.raises(InvalidImageError, match=r"no_sub\.npy \[image 1\]: constant"):
        load_split(tmp_path, "test")


def test_manifest_sha256(tmp_path: Path) -> None:
    assert manifest_sha256(tmp_path) is None
    (tmp_path / "manifest.json").write_text('{"dataset": "model_a"}')
    expected = hashlib.sha256(b'{"dataset": "model_a"}').hexdigest()
    assert manifest_sha256(tmp_path) == expected


def test_image_array_dataset_items_and_subset(tmp_path: Path) -> None:
    write_simulated(tmp_path)
    images = load_split(tmp_path, "train")["no_sub"]
    data = ImageArrayDataset(images)
    assert len(data) == 5
    item = data[2]
    assert isinstance(item, torch.Tensor) and item.dtype == torch.float32
    assert item.shape == (1, S, S) and np.array_equal(item.numpy(), images[2])
    item += 1  # a copy: the read-only memmap is untouched
    subset = ImageArrayDataset(images, indices=[4, 0])
    assert len(subset) == 2 and torch.equal(subset[0], torch.from_numpy(np.array(images[4])))
    batch = next(iter(DataLoader(data, batch_size=4)))
    assert batch.shape == (4, 1, S, S)
    with pytest.raises(DatasetError, match=r"\(N, 1, H, W\)"):
        ImageArrayDataset(images[:, 0])
    with pytest.raises(IndexError):
        ImageArrayDataset(images, indices=[5])


def test_image_array_dataset_pickles_a_memmap_by_path(tmp_path: Path) -> None:
    images = tiny_images(64, size=S)
    np.save(tmp_path / "big.npy", images)
    mapped = np.load(tmp_path / "big.npy", mmap_mode="r", allow_pickle=False)
    blob = pickle.dumps(ImageArrayDataset(mapped, indices=[3, 5]))
    assert len(blob) < images.nbytes / 10  # the pixels did not travel
    restored = pickle.loads(blob)
    assert isinstance(restored.images, np.memmap)
    assert torch.equal(restored[1], torch.from_numpy(images[5]))
    in_memory = pickle.loads(pickle.dumps(ImageArrayDataset(images)))
    assert torch.equal(in_memory[7], torch.from_numpy(images[7]))


def test_find_image_files(tmp_path: Path) -> None:
    (tmp_path / "b" / ".hidden").mkdir(parents=True)
    for name in ["b/z.FITS.GZ", "b/a.png", "b/.hidden/x.npy", "b/._y.png", "b/c.txt", "top.npy"]:
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "odd.dat").write_bytes(b"")
    found = find_image_files([tmp_path / "b", tmp_path / "odd.dat", tmp_path / "b" / "a.png"])
    assert found == [tmp_path / "b" / "a.png", tmp_path / "b" / "z.FITS.GZ", tmp_path / "odd.dat"]
    assert find_image_files([tmp_path]) == [
        tmp_path / "b" / "a.png",
        tmp_path / "b" / "z.FITS.GZ",
        tmp_path / "top.npy",
    ]
    with pytest.raises(DatasetError, match="missing.png: no such file or folder"):
        find_image_files([tmp_path / "missing.png"])

"""Dataset loaders: our simulated layout, folders of per-image files, and stacks.

Where a split's images are found (`load_split(DIR, split)`):

- the split folder is `DIR/<split>/` when it exists; otherwise (real data without splits)
  `DIR/` itself, and every split then reads the same images (a warning says so for splits
  other than "test": do not train and calibrate on one set);
- in it, each class (`no_sub`, `sphere`, `vort`; DeepLense's folder names `no` and `vortex`
  are accepted too) is either ONE stack file `<class>.npy` (also `.fits`, `.fit`, `.fits.gz`,
  `.tif`, `.tiff`: (N, H, W) or (N, 1, H, W), as the simulator writes and DeepLense ships)
  or a folder `<class>/` of per-image files of any supported format (searched recursively,
  sorted by path);
- every image comes out exactly as the service would prepare it: `to_model_input(
  read_image(file), size)`. A float32 .npy stack whose images all have min 0 and max 1 at
  the requested size already is that, and is returned memory-mapped (25,000 images need not
  fit in RAM); any other stack or folder is read into memory and prepared image by image.
"""

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from deeplense.errors import DatasetError
from deeplense.imaging import SUPPORTED_EXTENSIONS, is_supported_filename, read_image, read_stack
from deeplense.preprocess import to_model_input
from deeplense.vocabulary import CLASSES, LABELS, NORMAL

logger = logging.getLogger(__name__)

CLASS_ALIASES = {"no_sub": ("no_sub", "no"), "sphere": ("sphere",), "vort": ("vort", "vortex")}
"""Folder or stack names accepted for each class, in order of preference."""
STACK_EXTENSIONS = (".npy", ".fits", ".fit", ".fits.gz", ".fit.gz", ".tif", ".tiff")
"""Extensions of a one-file-per-class stack (`DIR/<split>/<class><ext>`)."""

_SCAN_CHUNK = 512  # images per chunk when checking a memory-mapped stack


def load_split(
    data_dir: Path,
    split: str,
    image_size: int | None = None,
    classes: Sequence[str] | None = None,
) -> dict[str, np.ndarray]:
    """Class name -> (N, 1, S, S) float32 images in [0, 1] of one split (see module doc).

    `image_size` resizes every image to S x S; None keeps the data's own size, which must be
    square and the same for every class. `classes` lists the classes that must be present
    (DatasetError otherwise); None returns whichever classes exist (at least one).
    """
    data_dir = Path(data_dir)
    base = _split_dir(data_dir, split)
    wanted = tuple(classes) if classes is not None else CLASSES
    unknown = [c for c in wanted if c not in CLASSES]
    if unknown:
        raise ValueError(f"unknown classes {unknown}; valid classes: {', '.join(CLASSES)}")
    out: dict[str, np.ndarray] = {}
    for cls in wanted:
        source = _class_source(base, cls)
        if source is None:
            if classes is not None:
                raise DatasetError(f"{base}: missing class {cls!r}: {_expected(base, cls)}")
            continue
        if source.is_dir():
            out[cls] = _load_folder(source, image_size)
        else:
            out[cls] = _load_stack(source, image_size)
    if not out:
        expected = "; ".join(_expected(base, c) for c in wanted)
        raise DatasetError(f"{base}: no class found; expected {expected}")
    sizes = {cls: images.shape[-2:] for cls, images in out.items()}
    if len(set(sizes.values())) > 1:
        found = ", ".join(f"{cls} {h}x{w}" for cls, (h, w) in sizes.items())
        raise DatasetError(
            f"{base}: shape mismatch between classes ({found}); pass image_size to resize"
        )
    return out


def class_files(data_dir: Path, split: str) -> dict[str, list[Path]]:
    """Class name -> the files holding its images in one split (module doc): the one stack
    file, or the folder's per-image files, sorted; only the classes present."""
    base = _split_dir(Path(data_dir), split)
    out: dict[str, list[Path]] = {}
    for cls in CLASSES:
        source = _class_source(base, cls)
        if source is not None:
            out[cls] = find_image_files([source]) if source.is_dir() else [source]
    return out


def labelled_test_set(
    data_dir: Path, image_size: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The test split as (images (N, 1, S, S) float32, labels (N,) int64, class names (N,) str).

    Labels follow LABELS (no_sub 0, sphere and vort 1). Needs no_sub and at least one
    substructure class; classes are concatenated in CLASSES order (copied into memory).
    """
    split = load_split(data_dir, "test", image_size)
    if NORMAL not in split or not any(c in split for c in CLASSES if LABELS[c] == 1):
        found = ", ".join(split) or "none"
        raise DatasetError(
            f"{_split_dir(Path(data_dir), 'test')}: a labelled test set needs no_sub and at "
            f"least one of sphere, vort; found {found}"
        )
    present = [c for c in CLASSES if c in split]
    images = np.concatenate([split[c] for c in present])  # (N, 1, S, S)
    labels = np.concatenate([np.full(len(split[c]), LABELS[c], dtype=np.int64) for c in present])
    names = np.concatenate([np.full(len(split[c]), c) for c in present])
    return images, labels, names


def find_image_files(paths: Sequence[Path]) -> list[Path]:
    """Expand folders (recursively) to their supported image files, sorted; keep named files.

    Files named directly are kept whatever their extension (reading them reports a bad
    format); hidden files and folders inside a folder are skipped. Duplicates are dropped.
    """
    found: list[Path] = []
    seen: set[Path] = set()
    for path in map(Path, paths):
        if path.is_dir():
            files = sorted(
                p
                for p in path.rglob("*")
                if p.is_file()
                and is_supported_filename(p.name)
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
        elif path.is_file():
            files = [path]
        else:
            raise DatasetError(f"{path}: no such file or folder")
        for file in files:
            key = file.resolve()
            if key not in seen:
                seen.add(key)
                found.append(file)
    return found


class ImageArrayDataset(Dataset[torch.Tensor]):
    """(N, 1, H, W) float32 images as a torch Dataset of (1, H, W) tensors.

    Each item is copied out of the array, so a memory-mapped array stays on disk. Pickling
    (DataLoader workers started by spawn) re-opens a whole-file .npy memmap by path instead
    of copying its data. `indices` selects a subset (e.g. a train/val cut).
    """

    def __init__(
        self, images: np.ndarray, indices: Sequence[int] | np.ndarray | None = None
    ) -> None:
        if images.ndim != 4 or images.shape[1] != 1:
            raise DatasetError(f"expected images of shape (N, 1, H, W), got {images.shape}")
        self.images = images
        self.indices = None if indices is None else np.asarray(indices, dtype=np.int64)
        n = len(images)
        if (
            self.indices is not None
            and len(self.indices)
            and (self.indices.min() < -n or self.indices.max() >= n)
        ):
            raise IndexError(f"indices out of range for {len(images)} images")

    def __len__(self) -> int:
        return len(self.images) if self.indices is None else len(self.indices)

    def __getitem__(self, i: int) -> torch.Tensor:
        index = i if self.indices is None else int(self.indices[i])
        return torch.from_numpy(np.array(self.images[index], dtype=np.float32))  # (1, H, W)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        reopen = _memmap_source(self.images)
        if reopen is not None:
            state["images"] = None
            state["_reopen"] = reopen
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        reopen = state.pop("_reopen", None)
        self.__dict__.update(state)
        if reopen is not None:
            path, shape = reopen
            self.images = np.load(path, mmap_mode="r", allow_pickle=False).reshape(shape)


# --- internals -------------------------------------------------------------------------------


def _split_dir(data_dir: Path, split: str) -> Path:
    """DIR/<split> if it exists, else DIR when it holds classes directly (see module doc)."""
    if not data_dir.is_dir():
        raise DatasetError(f"{data_dir}: dataset folder not found")
    if (data_dir / split).is_dir():
        return data_dir / split
    if any(_class_source(data_dir, c) is not None for c in CLASSES):
        if split != "test":
            logger.warning(
                "%s: no %r folder; reading the class folders in %s itself (every split reads "
                "the same images)",
                data_dir,
                split,
                data_dir,
            )
        return data_dir
    raise DatasetError(
        f"{data_dir}: no {split!r} folder and no class stacks or folders "
        f"({', '.join(CLASSES)}) in it; expected {data_dir / split}/<class>.npy or "
        f"{data_dir / split}/<class>/*.npy|fits|png..."
    )


def _class_source(base: Path, cls: str) -> Path | None:
    """The one stack file or folder holding class `cls` in `base`, or None."""
    candidates = [base / name for name in CLASS_ALIASES[cls] if (base / name).is_dir()]
    candidates += [
        base / f"{name}{ext}"
        for name in CLASS_ALIASES[cls]
        for ext in STACK_EXTENSIONS
        if (base / f"{name}{ext}").is_file()
    ]
    if len(candidates) > 1:
        names = ", ".join(p.name for p in candidates)
        raise DatasetError(f"{base}: class {cls!r} is ambiguous: found {names}; keep one")
    return candidates[0] if candidates else None


def _expected(base: Path, cls: str) -> str:
    return f"expected a stack {base / cls}.npy or a folder {base / cls}/ of images"


def _load_stack(path: Path, image_size: int | None) -> np.ndarray:
    """A stack file -> (N, 1, S, S); memory-mapped when it is model input already."""
    stack = read_stack(path, check_values=False)  # (N, H, W), a memmap for float32 .npy
    n, height, width = stack.shape
    size = _target_size(path, height, width, image_size)
    if (height, width) == (size, size) and _is_model_input(stack, path):
        return stack.reshape(n, 1, size, size)  # a view: stays memory-mapped
    logger.info("%s: preparing %d images in memory (resize and/or min-max scale)", path, n)
    out = np.empty((n, 1, size, size), dtype=np.float32)  # (N, 1, S, S)
    for i in tqdm(range(n), desc=f"prepare {path.name}", unit="img", disable=None):
        out[i], _ = to_model_input(np.asarray(stack[i]), size, f"{path} [image {i}]")
    return out


def _load_folder(folder: Path, image_size: int | None) -> np.ndarray:
    """A folder of per-image files -> (N, 1, S, S), read and prepared file by file."""
    files = find_image_files([folder])
    if not files:
        raise DatasetError(f"{folder}: no image files (expected {', '.join(SUPPORTED_EXTENSIONS)})")
    first = read_image(files[0])
    size = _target_size(files[0], first.shape[0], first.shape[1], image_size)
    out = np.empty((len(files), 1, size, size), dtype=np.float32)  # (N, 1, S, S)
    for i, file in enumerate(tqdm(files, desc=f"read {folder.name}", unit="img", disable=None)):
        image = first if i == 0 else read_image(file)
        if image_size is None and image.shape != first.shape:
            raise DatasetError(
                f"{file}: shape mismatch: {image.shape[0]}x{image.shape[1]} but {files[0].name} "
                f"is {size}x{size}; pass image_size to resize"
            )
        out[i], _ = to_model_input(image, size, str(file))
    return out


def _target_size(path: Path, height: int, width: int, image_size: int | None) -> int:
    if image_size is not None:
        return image_size
    if height != width:
        raise DatasetError(f"{path}: images are {height}x{width}, not square; pass image_size")
    return height


def _is_model_input(stack: np.ndarray, path: Path) -> bool:
    """Whether every image of (N, H, W) float32 is finite with min exactly 0 and max exactly 1
    (so `to_model_input` would return it unchanged); read in chunks, never all at once."""
    if stack.dtype != np.float32:
        return False
    n = len(stack)
    chunks = range(0, n, _SCAN_CHUNK)
    for start in tqdm(chunks, desc=f"check {path.name}", unit="chunk", disable=None):
        chunk = np.asarray(stack[start : start + _SCAN_CHUNK])  # (B, H, W)
        low, high = chunk.min(axis=(1, 2)), chunk.max(axis=(1, 2))  # NaN propagates: not 0/1
        if not ((low == 0.0).all() and (high == 1.0).all()):
            return False
    return True


def _memmap_source(images: np.ndarray) -> tuple[str, tuple[int, ...]] | None:
    """(path, shape) when `images` is a whole .npy file memory-mapped (safe to re-open)."""
    if not isinstance(images, np.memmap) or images.filename is None:
        return None
    try:
        whole = images.offset + images.nbytes == os.path.getsize(images.filename)
    except OSError:
        return None
    if not (whole and images.flags.c_contiguous and str(images.filename).endswith(".npy")):
        return None
    return str(images.filename), tuple(images.shape)

"""Turn a decoded image into model input: (1, size, size) float32, min-max scaled to [0, 1].

The study scales every image to [0, 1] by its own minimum and maximum. An image that is
already size x size with minimum 0 and maximum 1 (every simulated dataset image) passes
through bit for bit, so the service, the `score` CLI and evaluation give one score for it.
Other sizes are resized first (aspect ratio not kept): area averaging along an axis that
shrinks, then bilinear interpolation along an axis that grows; then the result is scaled.
"""

import numpy as np
import torch
import torch.nn.functional as F

from deeplense.errors import InvalidImageError


def minmax_scale(image: np.ndarray, filename: str = "image") -> np.ndarray:
    """Scale an image to [0, 1] by its own min and max; float32, same shape.

    Raises InvalidImageError (naming `filename`) for empty, non-finite or constant images.
    An image whose min is 0 and max is 1 comes back unchanged (as float32).
    """
    pixels = np.asarray(image)
    if pixels.size == 0:
        raise InvalidImageError(filename, f"empty image: shape {tuple(pixels.shape)}")
    if not np.isfinite(pixels).all():
        raise InvalidImageError(filename, "has NaN or infinite pixels")
    low, high = float(pixels.min()), float(pixels.max())
    if low == high:
        raise InvalidImageError(
            filename, f"constant image (every pixel is {low:g}): it cannot be min-max scaled"
        )
    if low == 0.0 and high == 1.0:
        return np.array(pixels, dtype=np.float32)  # already scaled: exact copy
    scaled = (pixels.astype(np.float64) - low) / (high - low)
    return np.clip(scaled, 0.0, 1.0).astype(np.float32)


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """Resize (H, W) to (size, size) float64: area averaging to shrink, bilinear to enlarge."""
    if size < 1:
        raise ValueError(f"size must be a positive number of pixels, got {size}")
    height, width = image.shape
    x = torch.from_numpy(np.asarray(image, dtype=np.float64).copy())[None, None]  # (1, 1, H, W)
    if height > size or width > size:  # shrink the large axes by averaging whole areas
        x = F.interpolate(x, size=(min(height, size), min(width, size)), mode="area")
    if tuple(x.shape[-2:]) != (size, size):  # enlarge what is left to size
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x[0, 0].numpy()


def to_model_input(
    image: np.ndarray, size: int, filename: str = "image"
) -> tuple[np.ndarray, bool]:
    """(H, W) image -> ((1, size, size) float32 in [0, 1], whether it had to be resized)."""
    pixels = np.asarray(image)
    if pixels.ndim != 2:
        raise InvalidImageError(filename, f"not a 2-D image: shape {tuple(pixels.shape)}")
    if pixels.size == 0:
        raise InvalidImageError(filename, f"empty image: shape {tuple(pixels.shape)}")
    resized = pixels.shape != (size, size)
    if resized:
        if not np.isfinite(pixels).all():  # checked before resizing spreads the NaNs
            raise InvalidImageError(filename, "has NaN or infinite pixels")
        pixels = resize_image(pixels, size)
    return minmax_scale(pixels, filename)[None], resized  # (1, size, size)


def prepare_batch(
    images: list[np.ndarray], size: int, filenames: list[str] | None = None
) -> tuple[np.ndarray, list[bool]]:
    """Several (H, W) images -> ((N, 1, size, size) float32 in [0, 1], resized flags)."""
    if filenames is not None and len(filenames) != len(images):
        raise ValueError(f"{len(filenames)} filenames for {len(images)} images")
    names = filenames or [f"image {i}" for i in range(len(images))]
    batch = np.empty((len(images), 1, size, size), dtype=np.float32)  # (N, 1, size, size)
    flags = []
    for i, (image, name) in enumerate(zip(images, names, strict=True)):
        batch[i], resized = to_model_input(image, size, name)
        flags.append(resized)
    return batch, flags

"""A labelled split prepared image by image as the service prepares uploads, for `evaluate`.

A split of real data (per-image files in class folders, or FITS files), or an evaluation
given `--psf` or `--pixel-scale`, is read as uploads are: each FITS file's own noise map,
PSF and pixel scale (`deeplense.fits_layout`), and the flags for files stating none. Its
images are read and prepared by the `score` command's reader
(`training.batch_score.prepare_file`, the one preparation, `deeplense.observation`) and
scored by `score_observations`, so an evaluated score equals the served score for the same
file. A model that draws on any grid (LensFit) gets each image on its own pixels, as the
service gives it; every model also gets the same images on its own grid, for the report's
examples and the reconstruction health check.

A simulated split whose images each have their own PSF (Model R, `training.image_psfs`), or
whose one PSF is not the checkpoint's (the mismatch suite's wide_psf), is prepared the same
way from its stacks (`observe_stacks`): each image as a FITS upload of the dataset's pixel
scale with its PSF kernel would be.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deeplense.decode_client import TimedDecoder
from deeplense.errors import DatasetError, InvalidImageError
from deeplense.fits_layout import ImageExtras
from deeplense.imaging import DEFAULT_MAX_PIXELS
from deeplense.instrument import Instrument
from deeplense.observation import Observation, RequestInstrument, prepare_observation
from deeplense.vocabulary import dataset_instrument
from models.base import AnomalyModel
from models.checkpoint import LoadedCheckpoint
from training.batch_score import prepare_file
from training.commands.score import DECODE_MEMORY_BYTES, DECODE_TIMEOUT_S
from training.datasets import CLASS_ALIASES, load_split
from training.image_psfs import split_psfs, tells_own_psf

FITS_NAMES = (".fits", ".fit", ".fits.gz", ".fit.gz", ".fits.fz", ".fz")


@dataclass
class ObservedSplit:
    """Class -> observations as the model scores them, and the same images on its grid."""

    scored: dict[str, list[Observation]]
    model_grid: dict[str, np.ndarray]  # class -> (N, 1, S, S) float32


def read_as_uploads(files: dict[str, list[Path]]) -> bool:
    """Whether a split is read file by file as uploads are: it holds FITS files (which may
    carry ERR, PSF and PIXSCALE) or per-image files in class folders (real data, of any
    size); a simulated split of one stack per class is not."""
    aliases = {name for names in CLASS_ALIASES.values() for name in names}
    return any(
        p.name.lower().endswith(FITS_NAMES) or p.parent.name in aliases
        for paths in files.values()
        for p in paths
    )


def observe_split(
    files: dict[str, list[Path]], loaded: LoadedCheckpoint, request: RequestInstrument
) -> ObservedSplit:
    """Every image of `files` prepared for `loaded`'s model; DatasetError naming the first
    file that cannot be read or prepared (an evaluation needs every image)."""
    model = loaded.model
    card = loaded.config.input.instrument()
    own_grid = model.renders_any_grid
    reader = TimedDecoder(DECODE_TIMEOUT_S, DECODE_MEMORY_BYTES)
    try:

        def prepared(cls: str, own: bool) -> list[Observation]:
            out = []
            for path in files[cls]:
                for item in prepare_file(path, model.image_size, DEFAULT_MAX_PIXELS, card,
                                         request, reader, own):  # fmt: skip
                    if item.observation is None:
                        raise DatasetError(f"{item.filename}: {item.error}")
                    out.append(item.observation)
            return out

        scored = {cls: prepared(cls, own_grid) for cls in files}
        on_grid = {cls: prepared(cls, False) for cls in files} if own_grid else scored
    finally:
        reader.close()
    model_grid = {cls: np.stack([o.x for o in obs]) for cls, obs in on_grid.items()}
    return ObservedSplit(scored=scored, model_grid=model_grid)


def observe_stacks(
    images: dict[str, np.ndarray],
    psfs: dict[str, list[np.ndarray]],
    pixel_scale: float,
    model: AnomalyModel,
    card: Instrument,
) -> ObservedSplit:
    """Class -> (N, 1, n, n) simulated images in [0, 1], each with its own PSF kernel (k, k)
    on its n x n pixels of `pixel_scale` arcsec, prepared for `model` (trained through
    `card`) as uploads carrying that PSF and pixel scale are; DatasetError naming an image
    that cannot be."""

    def prepared(own: bool) -> dict[str, list[Observation]]:
        out: dict[str, list[Observation]] = {}
        for cls, x in images.items():
            out[cls] = []
            for i in range(len(x)):
                extras = ImageExtras(psf=psfs[cls][i], pixel_scale=pixel_scale)
                try:
                    out[cls].append(prepare_observation(
                        x[i, 0], model.image_size, card, f"{cls}[{i}]", extras, None, own
                    ))  # fmt: skip
                except InvalidImageError as exc:
                    raise DatasetError(str(exc)) from None
        return out

    own_grid = model.renders_any_grid
    scored = prepared(own_grid)
    on_grid = prepared(False) if own_grid else scored
    model_grid = {cls: np.stack([o.x for o in obs]) for cls, obs in on_grid.items()}
    return ObservedSplit(scored=scored, model_grid=model_grid)


def own_psf_split(
    data_dir: Path,
    split: str,
    model: AnomalyModel,
    card: Instrument,
    counts: dict[str, int] | None = None,
) -> ObservedSplit | None:
    """DIR/split's images (each class's first counts[class], or all of every class present)
    prepared with the PSF the dataset records for them (`observe_stacks`): each image's own,
    or the dataset's one PSF where it is not `card`'s; None when the card's PSF is the
    dataset's (`training.image_psfs.tells_own_psf`)."""
    if not tells_own_psf(data_dir, card):
        return None
    native = load_split(data_dir, split, classes=None if counts is None else list(counts))
    images = {cls: x[: (counts or {}).get(cls, len(x))] for cls, x in native.items()}
    psfs = split_psfs(data_dir, split, {cls: len(x) for cls, x in images.items()}, card)
    recorded = dataset_instrument(data_dir)  # the pixel scale, arcsec
    assert psfs is not None and recorded is not None
    return observe_stacks(images, psfs, recorded.pixel_scale, model, card)

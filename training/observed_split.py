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
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deeplense.decode_client import TimedDecoder
from deeplense.errors import DatasetError
from deeplense.imaging import DEFAULT_MAX_PIXELS
from deeplense.observation import Observation, RequestInstrument
from models.checkpoint import LoadedCheckpoint
from training.batch_score import prepare_file
from training.commands.score import DECODE_MEMORY_BYTES, DECODE_TIMEOUT_S
from training.datasets import CLASS_ALIASES

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

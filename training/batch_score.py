"""Offline batch scoring of files and folders into a CSV (the `score` command's logic).

Each file is read with the shared reader (`deeplense.imaging.decode_stack`: a single image
is a stack of one, and a single-image FITS file brings its noise map, PSF and pixel scale),
in a worker process with a time limit and a memory cap as the service reads uploads
(`deeplense.decode_client.TimedDecoder`; .npy files in this process, memory-mapped),
every image checked and prepared exactly as the service prepares an upload
(`deeplense.observation.prepare_observation`), and scored in batches by
`deeplense.inference.score_observations`. So a file's row holds the numbers the service
returns for it, with the instrument it used. A file holding N > 1 images (an .npy stack, a
FITS cube) gives one row per image, named `file[k]` (k from 0). A file or image that cannot
be read gets a row with its error and scoring goes on.
"""

import csv
import glob
import logging
import os
import tempfile
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from deeplense.calibration import judge
from deeplense.decode_client import TimedDecoder
from deeplense.errors import DeviceError, InvalidImageError, OutputExistsError
from deeplense.image_score import CSV_COLUMNS, ImageScore, image_scores
from deeplense.imaging import DEFAULT_MAX_PIXELS, check_pixels
from deeplense.inference import ScoredBatch, score_observations
from deeplense.instrument import Instrument
from deeplense.observation import Prepared, RequestInstrument, prepare_observation
from models.checkpoint import LoadedCheckpoint
from training.commands.score import DECODE_MEMORY_BYTES, DECODE_TIMEOUT_S
from training.parallel_score import PendingScores, ScoringPool

log = logging.getLogger(__name__)


def parse_shard(text: str) -> tuple[int, int]:
    """'i/n' -> (i, n) with 0 <= i < n; ValueError with a one-line message otherwise."""
    parts = text.split("/")
    try:
        index, count = (int(p) for p in parts) if len(parts) == 2 else (None, None)
    except ValueError:
        index = count = None
    if index is None or count is None:
        raise ValueError(f"--shard must be i/n with integers, e.g. 0/4; got {text!r}")
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"--shard i/n needs n >= 1 and 0 <= i < n; got {text!r}")
    return index, count


def shard_files(files: Sequence[Path], index: int, count: int) -> list[Path]:
    """The files whose position in `files` is index modulo count (a deterministic slice)."""
    return [f for i, f in enumerate(files) if i % count == index]


def prepare_file(
    path: Path,
    size: int,
    max_pixels: int,
    card: Instrument,
    request: RequestInstrument,
    decoder: TimedDecoder,
    own_grid: bool = False,
) -> Iterator[Prepared]:
    """Every image of one file prepared at side `size` by the service's preparation
    (`deeplense.observation`; `own_grid`: for a model that draws on any grid), or one error
    item for the file. A single-image FITS file brings its noise map, PSF and pixel scale;
    a stack's images do not."""
    name = str(path)
    try:
        stack = decoder.decode(path, name, max_pixels)
    except InvalidImageError as exc:
        yield Prepared(filename=name, error=str(exc))
        return
    many = len(stack.pixels) > 1
    for k in range(len(stack.pixels)):
        label = f"{name}[{k}]" if many else name
        try:
            image = np.array(stack.pixels[k], dtype=np.float32)  # (H, W), out of a memmap
            check_pixels(image, label)
            observation = prepare_observation(
                image, size, card, label, None if many else stack.extras, request, own_grid
            )
        except InvalidImageError as exc:
            yield Prepared(filename=label, error=str(exc))
            continue
        observation.warnings = stack.warnings + observation.warnings
        yield Prepared(filename=label, observation=observation)


def score_files(
    loaded: LoadedCheckpoint,
    files: Sequence[Path],
    threshold: float | None = None,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: bool = True,
    score: str | None = None,
    request: RequestInstrument | None = None,
    decoder: TimedDecoder | None = None,
    workers: int = 1,
) -> Iterator[ImageScore]:
    """Rows for every image of `files`, in order, scored in batches of `batch_size`.

    `score` names the anomaly score (default: the checkpoint's). The threshold is `threshold`
    when given, else the checkpoint's calibrated one for that score (None when it has none:
    is_anomaly is then None); percentile needs a calibration (`deeplense.calibration.judge`).
    `request` (the --psf and --pixel-scale flags) applies to every image without its own.
    `decoder` reads the files (default: DECODE_TIMEOUT_S per file, DECODE_MEMORY_BYTES).
    `workers` > 1 scores each batch in that many one-thread processes
    (`training.parallel_score`; the CPU only: DeviceError on another device), the next batch
    queued before this one's rows are yielded.
    """
    if workers > 1 and torch.device(device).type != "cpu":
        raise DeviceError(
            f"--workers {workers} runs one-thread CPU processes; on {device} use --workers 1"
        )
    score = score or loaded.config.default_score
    calibration = loaded.config.calibration_for(score)
    card = loaded.config.input.instrument()
    request = request or RequestInstrument()
    size = loaded.model.image_size
    own_grid = loaded.model.renders_any_grid
    pending: list[Prepared] = []
    n_ready = 0  # prepared images waiting in `pending`
    n_images = 0

    def rows(batch: list[Prepared], scored: ScoredBatch | None) -> Iterator[ImageScore]:
        """The batch's rows in order: its scored images (`scored`) and its errors."""
        good = [p for p in batch if p.observation is not None]
        records: Iterator[ImageScore] = iter(())
        if good and scored is not None:
            verdict = judge(
                scored.scores[score], calibration, threshold,
                scored.not_applicable.get(score, ()),
            )  # fmt: skip
            records = iter(image_scores(good, scored, score, verdict))
        for p in batch:
            done = p.observation is not None
            yield next(records) if done else ImageScore(p.filename, error=p.error)

    # Batches queued in the worker processes, oldest first, with the prepared images they hold.
    in_flight: deque[tuple[list[Prepared], PendingScores | None]] = deque()

    def flush() -> Iterator[ImageScore]:
        """Score the pending images. Without workers at once; with them, queue the batch and
        yield the one before: two batches in flight, so the processes score one while this
        process reads and prepares the next, and never wait at a batch's end."""
        batch = list(pending)
        pending.clear()
        observations = [p.observation for p in batch if p.observation is not None]
        if pool is None:
            scored = (
                score_observations(
                    loaded.model, observations, device=device, batch_size=batch_size,
                    scores=[score],
                ) if observations else None
            )  # fmt: skip
            yield from rows(batch, scored)
            return
        job = pool.submit(observations, batch_size, [score]) if observations else None
        in_flight.append((batch, job))
        while len(in_flight) > 1:
            yield from collect()

    def collect() -> Iterator[ImageScore]:
        batch, job = in_flight.popleft()
        yield from rows(batch, None if job is None else job.result())

    own = decoder is None
    reader = TimedDecoder(DECODE_TIMEOUT_S, DECODE_MEMORY_BYTES) if decoder is None else decoder
    bar = tqdm(files, desc=f"score {loaded.name}", unit="file", disable=not progress or None)
    pool: ScoringPool | None = None
    try:
        pool = ScoringPool(loaded.path, workers) if workers > 1 else None
        for path in bar:
            for item in prepare_file(Path(path), size, max_pixels, card, request, reader, own_grid):
                pending.append(item)
                if item.observation is not None:
                    n_ready += 1
                    n_images += 1
                if n_ready >= batch_size:
                    yield from flush()
                    n_ready = 0
            bar.set_postfix(images=n_images, refresh=False)
        yield from flush()
        while in_flight:
            yield from collect()
    finally:
        if pool is not None:
            pool.close()
        if own:
            reader.close()


def sweep_stale_temp_files(out: Path) -> list[Path]:
    """Remove the temp files of earlier writes of `out` whose process is gone (a SIGKILL
    skips every clean-up); the removed paths."""
    removed = []
    for stale in out.parent.glob(f".{glob.escape(out.name)}.*.tmp"):
        pid = stale.name[len(out.name) + 2 :].split(".", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            stale.unlink(missing_ok=True)
            removed.append(stale)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def write_csv(rows: Iterable[ImageScore], out: Path, overwrite: bool = False) -> dict[str, int]:
    """Stream rows into `out` atomically (temp file, then rename); counts of rows by outcome."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out} exists; pass --overwrite to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_temp_files(out)
    prefix = f".{out.name}.{os.getpid()}."  # the writer's pid: a later run can tell it died
    fd, tmp_name = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=out.parent)
    tmp = Path(tmp_name)
    counts = {"rows": 0, "errors": 0, "anomalies": 0}
    try:
        with os.fdopen(fd, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(CSV_COLUMNS)
            for row in rows:
                writer.writerow(row.csv_values())
                counts["rows"] += 1
                counts["errors"] += row.error is not None
                counts["anomalies"] += bool(row.is_anomaly)
        tmp.chmod(0o644)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return counts

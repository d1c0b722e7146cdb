"""`python -m training score`: score image files and folders with one checkpoint into a CSV."""

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from deeplense.imaging import DEFAULT_MAX_PIXELS
from training.commands import RegistryChoice, registered_scores

if TYPE_CHECKING:
    from deeplense.observation import RequestInstrument
from training.commands.evaluate import finite_float, positive_int

log = logging.getLogger(__name__)

DECODE_TIMEOUT_S = 60.0
"""Seconds one file may take to decode (a FITS cube is bigger than an upload)."""
DECODE_MEMORY_BYTES = 4 << 30
"""Address-space cap of the decoding process, as the service's (decode_memory_bytes)."""


def shard(text: str) -> tuple[int, int]:
    """argparse type for --shard i/n."""
    from training.batch_score import parse_shard

    try:
        return parse_shard(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "score",
        help="score image files and folders into a CSV (the service's numbers, offline)",
        description=(
            "Score every image in the given files and folders (searched recursively; .npy "
            "stacks and FITS cubes give one row per image, named file[k]) with one checkpoint "
            "and write a CSV with columns filename, score, anomaly_score, reconstruction_loss, "
            "threshold, is_anomaly, percentile, w1, input_shape, resized, warnings, error and "
            "the instrument used (pixel_scale_arcsec, pixel_scale_source, psf_fwhm_arcsec, "
            "psf_source, noise_median, noise_source), then, filled for LensFit 2 scored by "
            "imaging_gain, what its tests found (tension, blob_gain, blob_x_arcsec, "
            "blob_y_arcsec, blob_column, blob_row, blob_theta_sub_arcsec): the numbers POST "
            "/score returns for the same file. A FITS file's SCI, ERR/VAR/WHT and PSF "
            "extensions and its header's pixel scale are used as the service uses them."
        ),
    )
    p.add_argument("paths", type=Path, nargs="+", metavar="PATH", help="image files or folders")
    p.add_argument("--checkpoints", type=Path, required=True, help="folder of checkpoint folders")
    p.add_argument("--model", required=True, help="checkpoint name under --checkpoints, e.g. aae")
    p.add_argument(
        "--out", type=Path, required=True, help="CSV file to write, e.g. reports/scores.csv"
    )
    p.add_argument(
        "--shard",
        type=shard,
        default=(0, 1),
        metavar="I/N",
        help="score only files whose index %% N == I (0-based; default 0/1: all)",
    )
    p.add_argument("--batch-size", type=positive_int, default=64, help="images per forward pass")
    p.add_argument(
        "--workers",
        type=positive_int,
        default=1,
        help="processes scoring each batch in parallel, one torch thread each (CPU only; "
        "default 1: this process, torch's threads). For LensFit 2, one per core (2 cores: "
        "2.6 images/s against 2.0 for one process of two threads)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default auto)")
    p.add_argument(
        "--score",
        type=RegistryChoice(registered_scores),
        metavar="SCORE",
        default=None,
        help="anomaly score to judge by (default: the checkpoint's default score)",
    )
    p.add_argument(
        "--threshold",
        type=finite_float,
        default=None,
        help="flag threshold on the score (default: the checkpoint's calibrated one)",
    )
    p.add_argument(
        "--max-pixels",
        type=positive_int,
        default=DEFAULT_MAX_PIXELS,
        help=f"largest image accepted, in pixels (default {DEFAULT_MAX_PIXELS})",
    )
    p.add_argument(
        "--psf",
        type=Path,
        default=None,
        help="PSF kernel (FITS or .npy) for every image whose file holds none",
    )
    p.add_argument(
        "--pixel-scale",
        type=finite_float,
        default=None,
        help="arcsec per pixel of every image whose file states none (default: the model's)",
    )
    p.add_argument(
        "--decode-timeout-s",
        type=finite_float,
        default=DECODE_TIMEOUT_S,
        help=f"seconds one file may take to decode, else it gets an error (default "
        f"{DECODE_TIMEOUT_S:g})",
    )
    p.add_argument(
        "--decode-memory-bytes",
        type=positive_int,
        default=DECODE_MEMORY_BYTES,
        help=f"address-space cap of the decoding process (default {DECODE_MEMORY_BYTES})",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.set_defaults(func=run)


def request_instrument(args: argparse.Namespace) -> "RequestInstrument":
    """The --psf and --pixel-scale flags, checked (InvalidInstrumentError: one line, exit 2)."""
    from deeplense.errors import InvalidImageError, InvalidInstrumentError
    from deeplense.imaging import decode_stack
    from deeplense.instrument import check_pixel_scale, check_psf_kernel
    from deeplense.observation import RequestInstrument

    kernel = None
    if args.psf is not None:
        try:  # no value checks: a top-hat kernel is constant
            decoded = decode_stack(args.psf, check_values=False)
        except InvalidImageError as exc:
            raise InvalidInstrumentError(f"--psf: {exc}") from None
        extras = decoded.extras
        stored = extras.psf if extras is not None and extras.psf is not None else decoded.pixels
        if extras is None or extras.psf is None:
            if len(stored) != 1:
                raise InvalidInstrumentError(
                    f"--psf {args.psf}: {len(stored)} arrays; expected one"
                )
            stored = stored[0]
        kernel = check_psf_kernel(stored, f"--psf {args.psf}")
    scale = (
        None if args.pixel_scale is None else check_pixel_scale(args.pixel_scale, "--pixel-scale")
    )
    return RequestInstrument(psf=kernel, pixel_scale=scale)


def run(args: argparse.Namespace) -> int:
    from deeplense.decode_client import TimedDecoder
    from deeplense.device import resolve_device
    from deeplense.errors import CheckpointError, OutputExistsError, UnknownModelError
    from deeplense.scores import check_offered
    from models.checkpoint import find_checkpoints, load_checkpoint
    from training.batch_score import score_files, shard_files, write_csv
    from training.datasets import find_image_files

    if args.out.exists() and not args.overwrite:  # checked again when writing
        raise OutputExistsError(f"{args.out} exists; pass --overwrite to replace it")
    request = request_instrument(args)
    found = find_checkpoints(args.checkpoints)
    if args.model not in found:
        if not found:
            raise CheckpointError(f"{args.checkpoints}: no checkpoint folders (with config.json)")
        raise UnknownModelError(args.model, list(found))
    device = resolve_device(args.device)
    loaded = load_checkpoint(found[args.model], device=device)
    score = args.score or loaded.config.default_score
    check_offered(loaded.model, [score], args.model)  # a score another model's fit draws
    if args.threshold is None and loaded.config.calibration_for(score) is None:
        log.warning(
            "%s has no calibration of score %s: threshold, is_anomaly and percentile stay "
            "empty (run `python -m training calibrate` or pass --threshold)",
            loaded.path,
            score,
        )
    files = find_image_files(args.paths)
    index, count = args.shard
    selected = shard_files(files, index, count)
    log.info("shard %d/%d: %d of %d files", index, count, len(selected), len(files))
    decoder = TimedDecoder(args.decode_timeout_s, args.decode_memory_bytes)
    rows = score_files(
        loaded,
        selected,
        threshold=args.threshold,
        score=score,
        device=device,
        batch_size=args.batch_size,
        max_pixels=args.max_pixels,
        request=request,
        decoder=decoder,
        workers=args.workers,
    )
    try:
        counts = write_csv(rows, args.out, overwrite=args.overwrite)
    finally:
        decoder.close()
    print(
        f"wrote {args.out}: {counts['rows']} images from {len(selected)} files, "
        f"{counts['anomalies']} flagged, {counts['errors']} errors"
    )
    return 0

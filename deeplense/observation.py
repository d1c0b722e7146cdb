"""One image prepared for scoring, with the instrument it was seen through.

`prepare_observation` is the one preparation of an image for a model, used by the service
and the `score` CLI: it takes the decoded image (NaN pixels masked), what its file holds
beside it (a noise map, a PSF, a pixel scale: `deeplense.fits_layout`), what the request
says for every image (`RequestInstrument`) and the checkpoint's instrument, and returns the
model input with its mask, its noise map and its PSF on the model's grid, plus a record of
what was used and where each part came from. Precedence for each part: the upload's own,
then the request's, then the checkpoint's (the noise: estimated from the image when the
file has none).

Geometry. A non-square image is padded to a square with masked pixels, never stretched. An
image whose pixel scale is known (upload or request) and differs from the checkpoint's is
resampled to the checkpoint's scale, then cropped or padded (masked) to the model's side;
the study's models were calibrated at their own scale, so the result says its score is not
calibrated there. So does a PSF whose FWHM differs from the checkpoint's by more than 5%.
For a model that draws on any grid (`own_grid`: LensFit's renderer), an image of another
known scale is not resampled: it keeps its own pixels, cropped to the model's field of view
where it is larger, and the model fits it there (its encoder reads `model_grid_view`); its
threshold was still calibrated at the checkpoint's scale, and the result says so. An image
of unknown scale is area-resized to the model's side, as before.
Resampling moves the noise map with the image: variances are resampled and divided by the
number of input pixels each output pixel averages (at least 1, so interpolation never shrinks
the noise); the noise is estimated on the image's own grid before any resampling, so upsampled
(correlated) noise cannot pass for a clean image.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from deeplense.errors import InvalidImageError, InvalidInstrumentError
from deeplense.fits_layout import ImageExtras
from deeplense.instrument import Instrument, check_pixel_scale, check_psf_kernel
from deeplense.noise import estimate_noise
from deeplense.scores import psf_filter

Source = Literal["upload", "request", "checkpoint", "estimated"]
Planes = tuple[np.ndarray, np.ndarray, np.ndarray]  # image, noise sigma, valid: (N, N) each
NOISE_DRAWS = 8  # noise realisations that measure the matched filter's gain on resampled noise
SCALE_TOLERANCE = 0.01  # relative: pixel scales closer than this are the same grid
PSF_TOLERANCE = 0.05  # relative: PSF FWHMs closer than this are the checkpoint's PSF


@dataclass(frozen=True)
class RequestInstrument:
    """What a request (or the CLI's flags) says of every image that carries none."""

    psf: np.ndarray | None = None  # (k, k) checked, normalised kernel
    pixel_scale: float | None = None  # arcsec per pixel


@dataclass
class Observation:
    """One image ready for a model of side S, and what its scores need."""

    filename: str
    input_shape: tuple[int, int]  # (height, width) as read
    x: np.ndarray  # (1, S, S) float32 in [0, 1]; masked pixels hold the unmasked median
    valid: np.ndarray | None  # (1, S, S) bool, False where masked; None: every pixel
    sigma: np.ndarray | None  # (1, S, S) float32 noise sigma in x's units (inf where masked)
    psf_sigma_pixels: float  # the PSF's width on x's grid (matched filter, estimate)
    instrument: dict[str, Any]  # what was used and where it came from (the result's record)
    resized: bool = False
    warnings: tuple[str, ...] = field(default_factory=tuple)
    # arcsec per pixel of x: the checkpoint's, or the image's own when the model draws on its
    # grid (then x is n x n, not S x S); None: the checkpoint's
    pixel_scale: float | None = None


@dataclass
class Prepared:
    """One image (an upload, or one image of a file) after decoding and preparation: its
    observation, or the problem. The service and the `score` CLI both hold these."""

    filename: str
    observation: Observation | None = None
    error: str | None = None

    @property
    def input_shape(self) -> tuple[int, ...] | None:
        return None if self.observation is None else self.observation.input_shape

    @property
    def image(self) -> np.ndarray | None:
        """The model input (1, S, S) float32 in [0, 1], or None."""
        return None if self.observation is None else self.observation.x

    @property
    def resized(self) -> bool:
        return self.observation is not None and self.observation.resized

    @property
    def warnings(self) -> tuple[str, ...]:
        return () if self.observation is None else self.observation.warnings

    @property
    def instrument(self) -> dict[str, Any] | None:
        return None if self.observation is None else self.observation.instrument


def prepare_observation(
    pixels: np.ndarray,
    size: int,
    card: Instrument,
    filename: str,
    extras: ImageExtras | None = None,
    request: RequestInstrument | None = None,
    own_grid: bool = False,
) -> Observation:
    """(H, W) pixels in stored units (NaN: masked) -> an Observation for a model of side
    `size` trained through `card`; `own_grid`: the model draws on any grid, so an image of
    another known pixel scale keeps its own (module doc). InvalidImageError (naming the
    file) for an unusable noise map, PSF or pixel scale."""
    try:
        return _prepare(np.asarray(pixels, dtype=np.float64), size, card, filename, extras,
                        request or RequestInstrument(), own_grid)  # fmt: skip
    except InvalidInstrumentError as exc:
        raise InvalidImageError(filename, str(exc)) from None


def _prepare(
    image: np.ndarray,
    size: int,
    card: Instrument,
    filename: str,
    extras: ImageExtras | None,
    request: RequestInstrument,
    own_grid: bool = False,
) -> Observation:
    extras = extras or ImageExtras()
    height, width = image.shape
    notes: list[str] = []
    valid = ~np.isnan(image)
    # The noise map, in the image's units: checked against the mask.
    sigma = None
    if extras.noise is not None:
        sigma = np.asarray(extras.noise, dtype=np.float64)
        if sigma.shape != image.shape:
            raise InvalidInstrumentError(
                f"the {extras.noise_extension} noise map is {sigma.shape[0]}x{sigma.shape[1]}, "
                f"the image {height}x{width}: they must match"
            )
        valid &= ~np.isposinf(sigma)  # zero weight: left out
        bad = valid & ~(np.isfinite(sigma) & (sigma > 0))
        if bad.any():
            raise InvalidInstrumentError(
                f"the {extras.noise_extension} noise map has zero, negative or NaN values at "
                f"{int(bad.sum())} unmasked pixels; mask them (NaN in the image, or zero "
                "weight) or fix the map"
            )
    if not valid.any():
        raise InvalidInstrumentError("every pixel is masked: nothing to score")
    # Pixel scale and PSF: the upload's, else the request's, else the checkpoint's.
    scale, scale_source = card.pixel_scale, "checkpoint"
    for value, source in ((extras.pixel_scale, "upload"), (request.pixel_scale, "request")):
        if value is not None:
            scale, scale_source = check_pixel_scale(value, f"pixel scale ({source})"), source
            break
    kernel, psf_source = None, "checkpoint"
    for given, source in ((extras.psf, "upload"), (request.psf, "request")):
        if given is not None:
            kernel, psf_source = check_psf_kernel(given, f"PSF ({source})"), source
            break
    if kernel is not None and (kernel.shape[0] > height or kernel.shape[0] > width):
        raise InvalidInstrumentError(
            f"the PSF ({psf_source}) is {kernel.shape[0]}x{kernel.shape[0]} pixels, larger "
            f"than the {height}x{width} image"
        )
    native = (
        Instrument(pixel_scale=scale, psf_sigma=None, psf_kernel=kernel)
        if kernel is not None
        else Instrument(pixel_scale=scale, psf_sigma=card.psf_sigma_arcsec)
    )
    card_fwhm = card.psf_fwhm_arcsec
    psf_change = native.psf_fwhm_arcsec / card_fwhm - 1.0 if card_fwhm > 0 else 0.0
    if abs(psf_change) > PSF_TOLERANCE:
        notes.append(
            f'PSF FWHM {native.psf_fwhm_arcsec:.3g}" ({psf_source}) differs from the '
            f"checkpoint's {card_fwhm:.3g}\" by {100 * psf_change:+.0f}%: "
            "the model was trained and calibrated at its PSF, so this score is not calibrated"
        )
    # Min-max scaling over the unmasked pixels; the noise map scales alike.
    low, high = float(image[valid].min()), float(image[valid].max())
    if low == high:
        raise InvalidImageError(filename, f"constant image (every unmasked pixel is {low:g})")
    scaled = (image - low) / (high - low)
    # Where the noise is estimated: on the model's grid (as evaluation does), unless the image
    # is enlarged to reach it, whose interpolated noise is correlated and would pass for a
    # clean image: then on the image's own grid, before resampling.
    n = max(height, width)
    same_scale = abs(scale / card.pixel_scale - 1.0) <= SCALE_TOLERANCE
    on_own_grid = own_grid and scale_source != "checkpoint" and not same_scale
    if on_own_grid:
        enlarged = False  # never resampled: the noise is estimated on its own pixels below
    elif scale_source != "checkpoint" and not same_scale:
        enlarged = round(n * scale / card.pixel_scale) > n
    else:
        enlarged = scale_source == "checkpoint" and size > n
    noise_source: Source = "upload"
    estimate_here = False
    if sigma is not None:
        sigma = sigma / (high - low)
    elif enlarged:
        noise_source = "estimated"
        filled = np.where(valid, scaled, np.median(scaled[valid]))
        sigma = _estimate(filled, native.psf_sigma_pixels)
    else:
        noise_source, estimate_here = "estimated", True
        sigma = np.ones_like(scaled)  # a placeholder: estimated on the model's grid below
    sigma = np.where(valid, sigma, np.inf)
    # Geometry: square, then the model's grid.
    scaled, sigma, valid, side_note = _square(scaled, sigma, valid)
    notes += side_note
    steps: list[Callable[[Planes], Planes]] = []  # the same geometry for noise draws below
    if on_own_grid:
        side = scaled.shape[0]
        field_pixels = round(size * card.pixel_scale / scale)  # the model's field, own pixels
        field_pixels += (side - field_pixels) % 2  # a centred crop: the lens stays centred
        notes.append(
            f"pixel scale {scale:g}\" ({scale_source}) differs from the checkpoint's "
            f"{card.pixel_scale:g}\": the lens was fitted on the image's own grid"
            + (
                f" (cropped to the model's {size * card.pixel_scale:g}\" field, "
                f"{field_pixels} x {field_pixels} pixels)"
                if side > field_pixels
                else ""
            )
            + "; the threshold was calibrated at the checkpoint's scale, so this score is "
            "not calibrated"
        )
        if side > field_pixels:
            steps = [partial(_crop_or_pad, size=field_pixels)]
    elif scale_source != "checkpoint" and not same_scale:
        target = max(1, round(scaled.shape[0] * scale / card.pixel_scale))
        notes.append(
            f"pixel scale {scale:g}\" ({scale_source}) differs from the checkpoint's "
            f'{card.pixel_scale:g}": resampled to its grid; the model and its calibration were '
            "made at its scale, so this score is not calibrated"
        )
        steps = [partial(_resample, side=target), partial(_crop_or_pad, size=size)]
    elif scaled.shape[0] != size:
        notes.append(
            f"resized from {height} x {width} to {size} x {size} pixels"
            + ("" if scale_source == "checkpoint" else " (same pixel scale: cropped or padded)")
        )
        steps = [
            partial(_resample, side=size)
            if scale_source == "checkpoint"
            else partial(_crop_or_pad, size=size)
        ]
    square = (scaled, sigma, valid)
    for step in steps:
        scaled, sigma, valid = step((scaled, sigma, valid))
    resized = bool(steps)
    # The PSF's width on the model grid. Resampled to it, the image is blurred by the
    # resampling as well: an enlarged image by bilinear interpolation (a triangle of half-width
    # one image pixel, variance s^2 / 6) and by its own larger pixels (a box of side s against
    # the model's c: variance (s^2 - c^2) / 12), both added to the PSF's variance.
    psf_pixels = native.psf_sigma_pixels
    if resized and not same_scale and not on_own_grid:
        s, c = scale, card.pixel_scale
        variance = (native.psf_sigma_pixels * s) ** 2  # arcsec^2
        if s > c:
            variance += s**2 / 6 + (s**2 - c**2) / 12
        psf_pixels = math.sqrt(variance) / c
    if not valid.any():
        raise InvalidInstrumentError("no unmasked pixel is left on the model's grid")
    # Min-max scaling again on the model's grid (the study scales the image it feeds the
    # model; a no-op for an image that was not resampled).
    low2, high2 = float(scaled[valid].min()), float(scaled[valid].max())
    if low2 == high2:
        raise InvalidImageError(filename, "constant after resampling to the model's grid")
    if (low2, high2) != (0.0, 1.0):
        scaled, sigma = (scaled - low2) / (high2 - low2), sigma / (high2 - low2)
    if not valid.all():
        masked = int((~valid).sum())
        notes.append(f"{masked} masked pixels of {valid.size} left out of every score")
    median = float(np.median(scaled[valid])) if valid.any() else 0.0
    x = np.where(valid, scaled, median)
    if estimate_here:
        sigma = np.where(valid, _estimate(x, psf_pixels), np.inf)
    elif enlarged:  # interpolated noise is correlated: measure what the matched filter sees
        gain = _filtered_noise_gain(square, steps, sigma, valid, psf_pixels, high2 - low2)
        if gain > 1.0:
            sigma = sigma * gain
            notes.append(
                f"enlarged to the model's grid: its noise is correlated, the noise map is "
                f"widened {gain:.2f}x so that pure noise scores as noise"
            )
    record = {
        "pixel_scale": {"value_arcsec": scale, "source": scale_source},
        "psf": {
            "fwhm_arcsec": native.psf_fwhm_arcsec,
            "kind": "kernel" if kernel is not None else "gaussian",
            "source": psf_source,
        },
        "noise": {
            "median": float(np.median(sigma[valid])) if valid.any() else None,
            "source": noise_source,
            "extension": extras.noise_extension,
        },
    }
    return Observation(
        filename=filename,
        input_shape=(height, width),
        x=x.astype(np.float32)[None],
        valid=None if valid.all() else valid[None],
        sigma=sigma.astype(np.float32)[None],
        psf_sigma_pixels=float(psf_pixels),
        instrument=record,
        resized=resized,
        warnings=tuple(notes),
        pixel_scale=scale if on_own_grid else None,
    )


def _filtered_noise_gain(
    square: "Planes",
    steps: list[Callable[["Planes"], "Planes"]],
    sigma: np.ndarray,
    valid: np.ndarray,
    psf_sigma_pixels: float,
    rescale: float,
) -> float:
    """The std of the matched-filtered whitened noise that the image's own noise becomes on
    the model's grid (1 for white noise): NOISE_DRAWS draws of it on the image's grid, moved
    by the same geometry steps, rescaled, whitened by `sigma` and filtered by the PSF."""
    _, native_sigma, native_valid = square
    rng = np.random.default_rng(0)  # deterministic: a score does not depend on the call
    level = np.where(native_valid, native_sigma, 0.0)
    variances = []
    for _ in range(NOISE_DRAWS):
        noise: Planes = (rng.standard_normal(level.shape) * level, native_sigma, native_valid)
        for step in steps:
            noise = step(noise)
        whitened = np.where(valid, noise[0] / rescale / sigma, 0.0)
        filtered = psf_filter(torch.from_numpy(whitened)[None, None], psf_sigma_pixels)[0, 0]
        variances.append(float((filtered.numpy()[valid] ** 2).mean()))
    return math.sqrt(float(np.mean(variances)))


def _estimate(x: np.ndarray, psf_sigma_pixels: float) -> np.ndarray:
    """The noise sigma (H, W) of a scaled image (H, W), estimated from it (deeplense.noise)."""
    t = torch.from_numpy(np.asarray(x, dtype=np.float32))[None, None]  # (1, 1, H, W)
    return estimate_noise(t, psf_sigma_pixels)[0, 0].double().numpy()


def _square(
    x: np.ndarray, sigma: np.ndarray, valid: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Pad a non-square image to a square with masked pixels (centred), never stretching."""
    h, w = x.shape
    if h == w:
        return x, sigma, valid, []
    n = max(h, w)
    top, left = (n - h) // 2, (n - w) // 2

    def pad(a: np.ndarray, fill: Any) -> np.ndarray:
        out = np.full((n, n), fill, dtype=a.dtype)
        out[top : top + h, left : left + w] = a
        return out

    note = f"non-square {h} x {w}: padded to {n} x {n} with masked pixels (not stretched)"
    return pad(x, 0.0), pad(sigma, np.inf), pad(valid, False), [note]


def _crop_or_pad(planes: "Planes", size: int) -> "Planes":
    """The centre `size` x `size` of a square image: cropped, or padded with masked pixels."""
    x, sigma, valid = planes
    n = x.shape[0]
    if n >= size:
        window = slice((n - size) // 2, (n - size) // 2 + size)
        return x[window, window], sigma[window, window], valid[window, window]
    o = (size - n) // 2
    inner = slice(o, o + n)
    out_x, out_sigma = np.zeros((size, size)), np.full((size, size), np.inf)
    out_valid = np.zeros((size, size), dtype=bool)
    out_x[inner, inner], out_sigma[inner, inner], out_valid[inner, inner] = x, sigma, valid
    return out_x, out_sigma, out_valid


def _resample(planes: "Planes", side: int) -> "Planes":
    """Resample a square image to `side`: area averaging to shrink, bilinear to enlarge (as
    `deeplense.preprocess.resize_image`); variances alike, divided by the input pixels each
    output pixel averages (at least 1); a pixel stays valid where most of its area was."""
    x, sigma, valid = planes
    n = x.shape[0]
    if side == n:
        return x, sigma, valid
    weight = valid.astype(np.float64)
    var = np.where(valid, sigma, 0.0) ** 2

    def resample(a: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64))[None, None]
        return _interpolated(t, side)[0, 0].numpy()

    w = resample(weight)
    keep = w >= 0.5
    safe = np.maximum(w, 1e-12)
    x_out = resample(np.where(valid, x, 0.0)) / safe  # the mean of the unmasked pixels
    averaged = max((n / side) ** 2, 1.0)  # input pixels per output pixel
    var_out = resample(var) / safe / averaged
    sigma_out = np.where(keep, np.sqrt(np.maximum(var_out, 0.0)), np.inf)
    bad = keep & ~(sigma_out > 0)
    sigma_out[bad] = np.inf
    return np.where(keep, x_out, 0.0), sigma_out, keep & ~bad


def _interpolated(x: torch.Tensor, side: int) -> torch.Tensor:
    """Images (N, 1, n, n) resampled to side x side: area averaging to shrink, bilinear to
    enlarge (as `deeplense.preprocess.resize_image`); unchanged at their own side."""
    n = x.shape[-1]
    if side == n:
        return x
    if side < n:
        return F.interpolate(x, size=(side, side), mode="area")
    return F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False)


def model_grid_view(
    x: torch.Tensor, pixel_scale: float, model_scale: float, side: int
) -> torch.Tensor:
    """Images (N, 1, n, n) of `pixel_scale` arcsec per pixel, centred on the lens, as a model
    of `side` pixels of `model_scale` sees them: resampled to its scale (`_interpolated`, as
    `_resample`), then the centre cropped or padded (with each
    image's median) to its field, and min-max scaled again. An encoder reads this view of an
    image that a model fits on its own grid."""
    n = x.shape[-1]
    if n == side and abs(pixel_scale / model_scale - 1.0) <= SCALE_TOLERANCE:
        return x
    m = max(1, round(n * pixel_scale / model_scale))
    x = _interpolated(x, m)
    if m >= side:
        start = (m - side) // 2
        x = x[..., start : start + side, start : start + side]
    else:
        fill = x.flatten(1).median(dim=1).values.view(-1, 1, 1, 1)
        out = fill.expand(x.shape[0], 1, side, side).clone()
        o = (side - m) // 2
        out[..., o : o + m, o : o + m] = x
        x = out
    low = x.amin(dim=(1, 2, 3), keepdim=True)
    high = x.amax(dim=(1, 2, 3), keepdim=True)
    return (x - low) / (high - low).clamp_min(1e-12)


def own_grid_supersampling(supersampling: int, pixel_scale: float, model_scale: float) -> int:
    """Sub-pixels per axis for a model that draws with `supersampling` at `model_scale` arcsec
    per pixel, drawing on pixels of `pixel_scale`: sub-pixels no larger than its own."""
    return max(1, math.ceil(supersampling * pixel_scale / model_scale - 1e-9))

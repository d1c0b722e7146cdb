"""The images a score response carries: input, reconstruction and the score's residual map.

mse: |x - x_hat| as an inferno heat map in pixel units, on one fixed scale per model: from 0
to 5 times the model's RMS pixel residual at its calibrated MSE threshold (the square root of
the threshold), so two uploads to one model can be compared by eye. A model without an MSE
calibration scales each map to its own maximum.
Noise-aware scores (chi2, chi2_psf): the score's own signed map in units of the noise sigma
(`deeplense.scores`), on one fixed diverging scale, so two uploads can be compared by eye and
a user sees where in the arcs an excess (red) or a deficit (blue) sits and how significant
it is.
"""

import base64
from collections.abc import Sequence

import numpy as np
import torch

from app.imaging import encode_png, gray_png, heatmap_png, to_uint8
from app.schemas import ScoreResult
from deeplense.observation import Observation
from deeplense.scores import compute_scores, get_score

SIGMA_SCALE = 5.0  # noise sigmas at the ends of the diverging colour scale
PIXEL_RMS_MULTIPLE = 5.0  # the mse heat map's top, in RMS residuals at the MSE threshold


def pixel_residual_scale(mse_threshold: float | None) -> float | None:
    """Top of a model's mse heat map (pixel units) from its calibrated MSE threshold."""
    if mse_threshold is None or not mse_threshold > 0:
        return None
    return PIXEL_RMS_MULTIPLE * float(np.sqrt(mse_threshold))


def _diverging_lut() -> bytes:
    # Blue (deficit) -> white (0) -> red (excess): ColorBrewer RdBu end and middle points,
    # linearly interpolated to 256 entries: entry i at i / 256, so the value 0 (entry 128,
    # where to_uint8 puts 0.5) is exactly white; 0 is the deepest blue, 255 nearly the red.
    anchors = np.array(
        [[5, 48, 97], [67, 147, 195], [247, 247, 247], [214, 96, 77], [103, 0, 31]],
        dtype=np.float64,
    )
    t = np.arange(256) / 256.0
    at = np.linspace(0.0, 1.0, len(anchors))
    lut = np.stack([np.interp(t, at, anchors[:, c]) for c in range(3)], axis=1)  # (256, 3)
    return np.round(lut).astype(np.uint8).tobytes()


DIVERGING_LUT = _diverging_lut()


def diverging_png(signed: np.ndarray, vmax: float) -> str:
    """(H, W) or (1, H, W) signed map -> base64 PNG: -vmax blue, 0 white, +vmax red."""
    m = np.asarray(signed, dtype=np.float64).reshape(signed.shape[-2:])
    scaled = np.clip(0.5 + 0.5 * m / vmax, 0.0, 1.0)
    png = encode_png(to_uint8(scaled), palette=DIVERGING_LUT)  # indexed colour
    return base64.b64encode(png).decode("ascii")


def attach_images(
    results: list[ScoreResult],
    observations: Sequence[Observation],
    x_hat: np.ndarray | Sequence[np.ndarray],
    score: str,
    maps: np.ndarray | Sequence[np.ndarray] | None = None,
    pixel_scale: float | None = None,
) -> None:
    """Set input, reconstruction and residual PNGs on each result: the observations' model
    inputs x and their reconstructions x_hat, (1, h, w) each (the model's grid, or an
    image's own for a model that draws on it).

    `maps` is the score's residual map, one (1, h, w) per image, when the scoring already
    made it for this x_hat; otherwise a noise-aware score's map is computed here, with each
    observation's noise map, mask and PSF. `pixel_scale` is the model's fixed top of the
    mse heat map (`pixel_residual_scale`); None: each map's max."""
    drawn = get_score(score).drawn_by_fit  # its map only from the fit (`maps`), never here
    if not get_score(score).noise_aware or (drawn and maps is None):
        maps = None
    elif maps is None:
        maps = [_map_of(o, x_hat[i], score) for i, o in enumerate(observations)]
    for i, result in enumerate(results):
        x = observations[i].x  # (1, h, w)
        result.input = gray_png(x)
        result.reconstruction = gray_png(x_hat[i])
        if maps is not None:
            result.residual = diverging_png(maps[i], SIGMA_SCALE)
            result.residual_max = SIGMA_SCALE
            result.residual_units = "sigma"
        else:
            valid = 1.0 if observations[i].valid is None else observations[i].valid
            residual = np.abs(x - x_hat[i]) * valid  # (1, h, w), zero where masked
            vmax = pixel_scale if pixel_scale is not None else float(residual.max())
            result.residual = heatmap_png(residual, vmax)
            result.residual_max = vmax
            result.residual_units = "pixel"


def _map_of(observation: Observation, x_hat: np.ndarray, score: str) -> np.ndarray:
    """One observation's map of a noise-aware score (1, h, w), in noise sigmas."""
    valid = None if observation.valid is None else torch.from_numpy(observation.valid)[None]
    computed = compute_scores(
        torch.from_numpy(observation.x)[None], torch.from_numpy(x_hat)[None], [score],
        observation.psf_sigma_pixels, map_of=score,
        sigma=None if observation.sigma is None else torch.from_numpy(observation.sigma)[None],
        valid=valid,
    )  # fmt: skip
    assert computed.residual_map is not None
    return computed.residual_map[0].numpy()

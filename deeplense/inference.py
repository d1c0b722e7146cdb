"""Batched inference used by the service, the `score` CLI and evaluation alike.

One function turns prepared images into the named scores of `deeplense.scores` (the study's
MSE always among them, as `loss`), W1 distances, and optionally reconstructions and one
score's residual map, so a served score equals the evaluated score for the same input.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from deeplense.fit_drawn import FitDrawn
from deeplense.instrument import DEFAULT_PSF_SIGMA_PIXELS
from deeplense.metrics import column_w1
from deeplense.noise import estimate_noise
from deeplense.observation import Observation
from deeplense.scores import ScoreValues, check_offered, compute_scores, get_score
from deeplense.significance import GoodnessOfFit, goodness_of_fit

MSE = "mse"
CHI2 = "chi2"  # the white chi-square behind each image's goodness of fit


class Reconstructor(Protocol):
    """What scoring needs of a model: (N, 1, H, W) in [0, 1] -> reconstruction, same shape.

    Every `models.base.AnomalyModel` is one; the ground floor needs no more of it.
    """

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class NoiseAwareReconstructor(Protocol):
    """A model that weighs pixels by their noise (LensFit): it takes the noise map the scores
    use, sigma (N, 1, H, W), infinite where a pixel has no weight."""

    uses_noise_map: bool

    def reconstruct_with_noise(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor,
        psf_sigma_pixels: float | None = None,
        pixel_scale: float | None = None,
    ) -> torch.Tensor: ...


@runtime_checkable
class FitDrawingReconstructor(Protocol):
    """A model whose fit draws scores of its own (`fit_scores`; LensFit 2's imaging_gain):
    the reconstruction and, from the same fit, each named score's map (N, 1, H, W) and the
    findings of its tests (`deeplense.fit_drawn`)."""

    fit_scores: tuple[str, ...]

    def reconstruct_with_fit_maps(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor,
        names: tuple[str, ...],
        psf_sigma_pixels: float | None = None,
        pixel_scale: float | None = None,
    ) -> FitDrawn: ...


@dataclass
class ScoredBatch:
    """Scores of N images: loss (the MSE) and w1 are (N,) float64, `scores` maps each
    requested score name to (N,) float64; reconstruction and residual_map are (N, 1, H, W)
    float32 (from `score_observations`: a list of (1, h, w) when the images' grids differ),
    or None when not requested."""

    loss: np.ndarray
    w1: np.ndarray
    reconstruction: np.ndarray | list[np.ndarray] | None = None
    scores: dict[str, np.ndarray] = field(default_factory=dict)
    residual_map: np.ndarray | list[np.ndarray] | None = None
    # score name -> (N,) reasons it cannot judge each image, "" where it applies
    not_applicable: dict[str, list[str]] = field(default_factory=dict)
    # chi2 against the degrees of freedom a per-image fit left, p-value, sigma; None for a
    # model that does not fit each image (`fitted_parameters`) or on the evaluation path
    goodness: GoodnessOfFit | None = None
    # what the fit's own tests found (`deeplense.fit_drawn.FINDINGS` name -> (N,) float64,
    # NaN where an image has none); empty unless a score drawn by the fit was asked for
    findings: dict[str, np.ndarray] = field(default_factory=dict)


@torch.inference_mode()
def score_array(
    model: Reconstructor,
    images: np.ndarray,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    keep_reconstructions: bool = False,
    scores: Sequence[str] = (MSE,),
    psf_sigma_pixels: float = DEFAULT_PSF_SIGMA_PIXELS,
    map_of: str | None = None,
) -> ScoredBatch:
    """Score (N, 1, H, W) float32 images in [0, 1] with `model` (a module is put in eval mode).

    `scores` names the scores to compute (the MSE is always computed, as `loss`);
    `psf_sigma_pixels` sets the noise-aware scores' matched filter (the checkpoint's
    `input.psf_sigma_pixels`); `map_of` keeps that score's residual map.
    """
    if isinstance(model, torch.nn.Module):
        model.eval()  # BatchNorm's running statistics, no sampling: deterministic scores
    names = list(dict.fromkeys([MSE, *scores]))
    values: dict[str, list[np.ndarray]] = {n: [] for n in names}
    reasons: dict[str, list[str]] = {n: [] for n in names}
    w1s, recons, maps = [], [], []
    found: list[dict[str, np.ndarray]] = []
    lengths: list[int] = []
    for start in range(0, len(images), batch_size):
        # A copy: `images` may be a read-only memmap, which torch will not wrap.
        batch = np.array(images[start : start + batch_size], dtype=np.float32)  # (B, 1, H, W)
        x = torch.from_numpy(batch).to(device=device, non_blocking=True)
        fit, scored = _reconstruct_and_score(model, x, psf_sigma_pixels, names, map_of)
        x_hat = fit.reconstruction
        found.append({k: v.double().cpu().numpy() for k, v in fit.findings.items()})
        lengths.append(len(x))
        for n in names:
            values[n].append(scored.values[n].cpu().numpy())
            reasons[n] += scored.not_applicable[n]
        w1s.append(column_w1(x, x_hat).double().cpu().numpy())
        if keep_reconstructions:
            recons.append(x_hat.float().cpu().numpy())
        if scored.residual_map is not None:
            maps.append(scored.residual_map.float().cpu().numpy())
    empty = np.zeros(0, dtype=np.float64)
    joined = {n: np.concatenate(v) if v else empty for n, v in values.items()}
    return ScoredBatch(
        loss=joined[MSE],
        w1=np.concatenate(w1s) if w1s else empty,
        reconstruction=np.concatenate(recons) if keep_reconstructions and recons else None,
        scores=joined,
        residual_map=np.concatenate(maps) if maps else None,
        not_applicable=reasons,
        findings=_joined_findings(found, lengths),
    )


def _joined_findings(
    parts: Sequence[dict[str, np.ndarray]], lengths: Sequence[int]
) -> dict[str, np.ndarray]:
    """Consecutive parts' findings (name -> (n_i,)) joined, NaN for a part without one."""
    names = list(dict.fromkeys(name for part in parts for name in part))
    return {
        name: np.concatenate(
            [p.get(name, np.full(n, np.nan)) for p, n in zip(parts, lengths, strict=True)]
        )
        for name in names
    }


def _wants_noise(model: Reconstructor) -> bool:
    return isinstance(model, NoiseAwareReconstructor) and bool(model.uses_noise_map)


def drawn_by_fit(model: Reconstructor, names: Sequence[str]) -> tuple[str, ...]:
    """The scores among `names` that `model`'s fit draws; ScoreNotOfferedError for one it
    cannot draw."""
    check_offered(model, names, str(getattr(model, "architecture", type(model).__name__)))
    return tuple(n for n in dict.fromkeys(names) if get_score(n).drawn_by_fit)


def _reconstruct(
    model: Reconstructor,
    x: torch.Tensor,
    sigma: torch.Tensor | None,
    psf_sigma_pixels: float | None = None,
    pixel_scale: float | None = None,
    drawn: tuple[str, ...] = (),
) -> FitDrawn:
    """x (N, 1, H, W) -> reconstruction, and the maps of the scores `drawn` by the model's
    fit (`drawn_by_fit`; these need sigma) with its findings; a noise-aware model gets the
    noise map and the images' PSF width (None: its own), and a model that renders on any
    grid the images' own pixel scale (None: its own). Images on their own grid for any other
    model are a bug of the caller (the preparation resamples them for it)."""
    if pixel_scale is not None and not getattr(model, "renders_any_grid", False):
        raise ValueError("images on their own pixel grid, for a model that cannot draw on it")
    if drawn:
        if sigma is None:
            raise ValueError("scores drawn by the fit need the noise map sigma")
        if not isinstance(model, FitDrawingReconstructor):
            raise ValueError(f"scores {drawn} are drawn by a fit this model has not")
        return model.reconstruct_with_fit_maps(x, sigma, drawn, psf_sigma_pixels, pixel_scale)
    if isinstance(model, NoiseAwareReconstructor) and model.uses_noise_map and sigma is not None:
        if pixel_scale is None:
            return FitDrawn(model.reconstruct_with_noise(x, sigma, psf_sigma_pixels))
        return FitDrawn(model.reconstruct_with_noise(x, sigma, psf_sigma_pixels, pixel_scale))
    return FitDrawn(model.reconstruct(x))


def _reconstruct_and_score(
    model: Reconstructor,
    x: torch.Tensor,
    psf_sigma_pixels: float,
    names: list[str],
    map_of: str | None,
) -> tuple[FitDrawn, ScoreValues]:
    """Reconstruct a batch (N, 1, H, W) and score it; the noise map is estimated once (when
    something needs it) and handed to both the model and the scores."""
    wanted = [*names, *([map_of] if map_of else [])]
    drawn = drawn_by_fit(model, wanted)
    needs_noise = _wants_noise(model) or any(get_score(n).noise_aware for n in wanted)
    sigma = estimate_noise(x.float(), psf_sigma_pixels) if needs_noise else None
    fit = _reconstruct(model, x, sigma, drawn=drawn)
    return fit, compute_scores(
        x, fit.reconstruction, names, psf_sigma_pixels, map_of, sigma, fit_maps=fit.maps or None
    )


@torch.inference_mode()
def score_observations(
    model: Reconstructor,
    observations: Sequence[Observation],
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    keep_reconstructions: bool = False,
    scores: Sequence[str] = (MSE,),
    map_of: str | None = None,
    check: Callable[[], None] | None = None,
) -> ScoredBatch:
    """Score prepared observations (`deeplense.observation`): each brings its model input,
    its mask, its noise map and its PSF width, so a supplied noise map replaces the
    estimate, masked pixels count nowhere and a supplied PSF sets its matched filter. The
    same numbers as `score_array` for images that bring nothing of their own. An image on
    its own grid (`Observation.pixel_scale`, for a model that `renders_any_grid`) is fitted
    and scored there; reconstructions and maps are then one (1, h, w) array per image when
    the grids differ, else stacked (N, 1, H, W).

    `check` runs before each batch of `batch_size` images; whatever it raises ends the work
    there (the service stops a request nobody waits for any more)."""
    if isinstance(model, torch.nn.Module):
        model.eval()
    fitted = _fitted_parameters(model)
    names = list(dict.fromkeys([MSE, *scores, *([CHI2] if fitted is not None else [])]))
    drawn = drawn_by_fit(model, [*names, *([map_of] if map_of else [])])
    n = len(observations)
    used = np.zeros(n, dtype=np.float64)  # pixels each image's fit used
    values = {name: np.zeros(n, dtype=np.float64) for name in names}
    reasons = {name: [""] * n for name in names}
    w1 = np.zeros(n, dtype=np.float64)
    recons: dict[int, np.ndarray] = {}
    maps: dict[int, np.ndarray] = {}
    findings: dict[str, np.ndarray] = {}
    for start in range(0, n, batch_size):
        if check is not None:
            check()
        chunk = range(start, min(start + batch_size, n))
        groups: dict[tuple[tuple[int, ...], float, float | None], list[int]] = {}
        for i in chunk:  # one grid and one PSF per forward pass
            o = observations[i]
            groups.setdefault((o.x.shape, o.psf_sigma_pixels, o.pixel_scale), []).append(i)
        for (_, psf, pixel_scale), rows in groups.items():
            group = [observations[i] for i in rows]
            x = torch.from_numpy(np.stack([o.x for o in group])).to(device)  # (B, 1, h, w)
            sigma = torch.from_numpy(np.stack([o.sigma for o in group])).to(device)  # type: ignore[misc]
            valid = torch.from_numpy(
                np.stack(
                    [np.ones_like(o.x, dtype=bool) if o.valid is None else o.valid for o in group]
                )
            ).to(device)  # (B, 1, h, w)
            weighted = valid & torch.isfinite(sigma) & (sigma > 0)
            used[rows] = weighted.flatten(1).sum(dim=1).double().cpu().numpy()
            fit = _reconstruct(model, x, sigma, psf, pixel_scale, drawn)
            x_hat = fit.reconstruction.to(x.dtype)
            scored = compute_scores(
                x, x_hat, names, psf, map_of, sigma, None if bool(valid.all()) else valid,
                fit_maps=fit.maps or None,
            )  # fmt: skip
            for name, found in fit.findings.items():
                findings.setdefault(name, np.full(n, np.nan))[rows] = found.double().cpu().numpy()
            for name in names:
                values[name][rows] = scored.values[name].cpu().numpy()
                for k, r in enumerate(rows):
                    reasons[name][r] = scored.not_applicable[name][k]
            w1[rows] = column_w1(x, x_hat).double().cpu().numpy()
            for k, r in enumerate(rows):
                if keep_reconstructions:
                    recons[r] = x_hat[k].float().cpu().numpy()
                if scored.residual_map is not None:
                    maps[r] = scored.residual_map[k].float().cpu().numpy()
    return ScoredBatch(
        loss=values[MSE],
        w1=w1,
        reconstruction=_per_image(recons, n) if keep_reconstructions and recons else None,
        scores=values,
        residual_map=_per_image(maps, n) if maps else None,
        not_applicable=reasons,
        goodness=None if fitted is None else goodness_of_fit(values[CHI2] * used, used, fitted),
        findings=findings,
    )


def concatenate_scored(parts: Sequence[ScoredBatch]) -> ScoredBatch:
    """One ScoredBatch of consecutive parts' images, in order (parts scored apart, e.g. by
    `training.parallel_score`'s processes); at least one part. Reconstructions, maps or
    goodness missing from any part: none in the whole."""
    if not parts:
        raise ValueError("no parts to concatenate")
    goodness = [p.goodness for p in parts]
    return ScoredBatch(
        loss=np.concatenate([p.loss for p in parts]),
        w1=np.concatenate([p.w1 for p in parts]),
        reconstruction=_joined([p.reconstruction for p in parts]),
        scores={n: np.concatenate([p.scores[n] for p in parts]) for n in parts[0].scores},
        residual_map=_joined([p.residual_map for p in parts]),
        not_applicable={
            n: [r for p in parts for r in p.not_applicable[n]] for n in parts[0].not_applicable
        },
        goodness=None
        if any(g is None for g in goodness)
        else GoodnessOfFit(
            *(np.concatenate([getattr(g, f.name) for g in goodness]) for f in fields(GoodnessOfFit))
        ),
        findings=_joined_findings([p.findings for p in parts], [len(p.loss) for p in parts]),
    )


def _joined(
    parts: Sequence[np.ndarray | list[np.ndarray] | None],
) -> np.ndarray | list[np.ndarray] | None:
    """Per-image arrays of consecutive parts as `_per_image` holds them; None if any is."""
    if any(p is None for p in parts):
        return None
    images = [image for p in parts if p is not None for image in p]  # each (1, h, w)
    return _per_image(dict(enumerate(images)), len(images))


def _per_image(arrays: dict[int, np.ndarray], n: int) -> np.ndarray | list[np.ndarray]:
    """Images 0..n-1's arrays (1, h, w): stacked (n, 1, h, w) when their grids agree."""
    listed = [arrays[i] for i in range(n)]
    return np.stack(listed) if len({a.shape for a in listed}) == 1 else listed


def _fitted_parameters(model: Reconstructor) -> int | None:
    """The parameters `model` fits to each image, or None (`AnomalyModel.fitted_parameters`)."""
    count = getattr(model, "fitted_parameters", None)
    return None if count is None else count()

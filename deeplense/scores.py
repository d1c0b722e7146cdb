"""Anomaly scores: named and registered; most are pure functions of (image, reconstruction,
noise map), and some are drawn by a model's own fit.

Every score is the mean square of its own residual *map* (N, 1, H, W) (a score drawn by the
fit: the sum of squares, a chi-square improvement), so a score, its map and the picture a user
sees of it can never disagree:

- `mse`: the study's per-image mean squared error; map = x - x_hat ([0, 1] units).
- `chi2`: map = (x - x_hat) / sigma, the residual in units of the per-pixel noise sigma
  that `deeplense.noise.estimate_noise` measured from the image itself. 1 for pure noise.
- `chi2_psf`: the whitened residual smoothed by the Gaussian PSF (a matched filter: pixel
  noise is white, a subhalo's imprint is at least PSF-wide), divided by the filter's noise
  gain sqrt(sum k^2) so that pure noise still has unit variance per pixel. The map is in
  units of the noise, and 1 is the expected score of a perfect reconstruction.
- `chi2_psf_light`: chi2_psf over the region where the reconstruction's light stands more
  than one noise sigma above its own background (its median): the arcs and the lens light.
  Sky pixels carry no signal, only noise; leaving them out sharpens the score. The map is
  zero outside the region and scaled by sqrt(pixels / region pixels), so its mean square is
  the mean over the region.
- `imaging_gain` (drawn by the fit of a model that offers it, `scores_for`: LensFit 2): the
  chi-square gravitational imaging's tests gain at the fitted smooth lens, from freeing the
  lens and adding the best single blob of mass (`deeplense.lensing.perturbation`); the map
  is the whitened residual's part those two moves explain, in noise sigmas, and the score
  its sum of squares over the valid pixels.

Higher is more anomalous for every score. `compute_scores` evaluates any set of them in one
pass and is the only place the service, the `score` CLI and evaluation get scores from
(through `deeplense.inference.score_array`).
"""

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from deeplense.errors import ScoreNotOfferedError, UnknownScoreError
from deeplense.noise import estimate_noise, smooth, smoothing_taps

# (x, x_hat, sigma, psf sigma px, valid) -> the score's map (N, 1, H, W); valid (N, 1, H, W)
# bool marks the pixels that count (None: all).
MapFn = Callable[[Tensor, Tensor, Tensor | None, float, Tensor | None], Tensor]


@dataclass(frozen=True)
class Score:
    """A registered score: its map function (x, x_hat, sigma, psf sigma px) -> (N, 1, H, W),
    or, `drawn_by_fit`, a map the model's own fit draws (`compute_scores`' fit_maps), whose
    sum of squares over the valid pixels is the score (a chi-square improvement)."""

    name: str
    description: str
    residual_map: MapFn
    noise_aware: bool  # needs the noise map sigma
    drawn_by_fit: bool = False

    def __call__(
        self,
        x: Tensor,
        x_hat: Tensor,
        sigma: Tensor | None,
        psf_sigma_pixels: float,
        valid: Tensor | None = None,
    ) -> Tensor:
        """(N,) float64 score: the mean square of the map over the valid pixels."""
        return mean_square(self.map(x, x_hat, sigma, psf_sigma_pixels, valid), valid)

    def from_fit(self, fit_map: Tensor, valid: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """A score drawn by the fit: its (N,) float64 values, the sum of squares of the fit's
        map (N, 1, H, W) over the valid pixels, and that map, zero at masked pixels."""
        m = fit_map.float() if valid is None else fit_map.float() * valid
        return m.flatten(1).double().pow(2).sum(dim=1), m

    def map(
        self,
        x: Tensor,
        x_hat: Tensor,
        sigma: Tensor | None,
        psf_sigma_pixels: float,
        valid: Tensor | None = None,
    ) -> Tensor:
        """The score's map (N, 1, H, W), zero at masked pixels."""
        m = self.residual_map(x, x_hat, sigma, psf_sigma_pixels, valid)
        return m if valid is None else m * valid


SCORES: dict[str, Score] = {}
# The order ties are broken in when choosing a default score (the physics' best first).
PREFERENCE = ("imaging_gain", "chi2_psf_light", "chi2_psf", "chi2", "mse")
LIGHT_REGION_SIGMA = 1.0  # chi2_psf_light: light above this many sigma over the background


def register_score(score: Score) -> Score:
    """Add a score to the registry (names are unique)."""
    if score.name in SCORES:
        raise ValueError(f"score {score.name!r} is already registered")
    SCORES[score.name] = score
    return score


def get_score(name: str) -> Score:
    """The registered score `name`; UnknownScoreError listing the valid names otherwise."""
    if name not in SCORES:
        raise UnknownScoreError(name, list_scores())
    return SCORES[name]


def list_scores() -> list[str]:
    """Registered score names, sorted (those drawn by a fit among them: `scores_for`)."""
    return sorted(SCORES)


def scores_for(model: object | None) -> list[str]:
    """The scores `model` can be scored by, sorted: every score of (image, reconstruction,
    noise map), and those drawn by a fit that the model's `fit_scores` names (None: the
    former alone, for a reconstruction with no model behind it)."""
    drawn = set(getattr(model, "fit_scores", ()))
    return [n for n in list_scores() if not SCORES[n].drawn_by_fit or n in drawn]


def drawn_from_image(name: str, fallback: str = "chi2_psf_light") -> str:
    """`name` when the image, its reconstruction and noise map draw it; `fallback` when a
    model's fit draws it (imaging_gain): the score a tool holding only a reconstruction
    reads instead (chi2_psf_light, LensFit 2's image score)."""
    return fallback if get_score(name).drawn_by_fit else name


def check_offered(model: object, names: Iterable[str], model_name: str) -> None:
    """ScoreNotOfferedError if a score in `names` (registered) is one `model` cannot draw."""
    offered = scores_for(model)
    for name in names:
        if name not in offered:
            raise ScoreNotOfferedError(get_score(name).name, model_name, offered)


def mean_square(m: Tensor, valid: Tensor | None = None) -> Tensor:
    """Per-image mean of squares over the valid pixels (all when None), (N, ...) -> (N,)
    float64 (differences in the map's dtype, sums in float64, so a score does not depend on
    batching)."""
    if valid is None:
        return m.flatten(1).double().pow(2).mean(dim=1)
    count = valid.flatten(1).sum(dim=1).clamp_min(1).double()
    return (m * valid).flatten(1).double().pow(2).sum(dim=1) / count


def residual(x: Tensor, x_hat: Tensor) -> Tensor:
    """x - x_hat in float32: (N, 1, H, W)."""
    return x.float() - x_hat.float()


def _need(sigma: Tensor | None) -> Tensor:
    if sigma is None:
        raise ValueError("this score needs the noise map sigma (deeplense.noise)")
    return sigma.float()


def psf_filter(m: Tensor, psf_sigma_pixels: float) -> Tensor:
    """Matched filter: smooth (N, 1, H, W) by the Gaussian PSF (reflected edges) and divide by
    the filter's noise gain, so unit white noise keeps unit variance."""
    kx, ky = smoothing_taps(psf_sigma_pixels, m.shape[-2], m.shape[-1], m.dtype, m.device)
    gain = torch.sqrt((kx**2).sum() * (ky**2).sum())  # std of smoothed unit white noise
    return smooth(m, psf_sigma_pixels) / gain


def _mse_map(
    x: Tensor, x_hat: Tensor, sigma: Tensor | None, psf: float, valid: Tensor | None
) -> Tensor:
    return residual(x, x_hat)


def _chi2_map(
    x: Tensor, x_hat: Tensor, sigma: Tensor | None, psf: float, valid: Tensor | None
) -> Tensor:
    whitened = residual(x, x_hat) / _need(sigma)  # 0 where sigma is infinite (no weight)
    return whitened if valid is None else whitened * valid


def _chi2_psf_map(
    x: Tensor, x_hat: Tensor, sigma: Tensor | None, psf: float, valid: Tensor | None
) -> Tensor:
    return psf_filter(_chi2_map(x, x_hat, sigma, psf, valid), psf)


def light_region(x_hat: Tensor, sigma: Tensor) -> Tensor:
    """Mask (N, 1, H, W) where x_hat exceeds its per-image median by LIGHT_REGION_SIGMA sigma."""
    background = x_hat.float().flatten(1).median(dim=1).values.view(-1, 1, 1, 1)
    return (x_hat.float() - background) > LIGHT_REGION_SIGMA * sigma


def _chi2_psf_light_map(
    x: Tensor, x_hat: Tensor, sigma: Tensor | None, psf: float, valid: Tensor | None
) -> Tensor:
    m = _chi2_psf_map(x, x_hat, sigma, psf, valid)
    mask = light_region(x_hat, _need(sigma))
    if valid is not None:
        mask = mask & valid
    pixels = mask[0].numel() if valid is None else valid.flatten(1).sum(dim=1).view(-1, 1, 1, 1)
    count = mask.flatten(1).sum(dim=1).clamp_min(1).view(-1, 1, 1, 1)
    return m * mask * torch.sqrt(pixels / count)


register_score(
    Score("mse", "the study's per-image mean squared error, [0, 1] units", _mse_map, False)
)
register_score(
    Score("chi2", "mean square of the residual in units of the per-pixel noise", _chi2_map, True)
)
register_score(
    Score(
        "chi2_psf",
        "mean square of the noise-whitened residual matched-filtered by the PSF",
        _chi2_psf_map,
        True,
    )
)
register_score(
    Score(
        "chi2_psf_light",
        "chi2_psf over the region where the reconstruction has light above 1 sigma",
        _chi2_psf_light_map,
        True,
    )
)


def _drawn_by_fit_map(
    x: Tensor, x_hat: Tensor, sigma: Tensor | None, psf: float, valid: Tensor | None
) -> Tensor:
    raise ValueError(
        "this score is drawn by a model's own fit, not by (image, reconstruction): "
        "compute_scores takes its map from the model (fit_maps)"
    )


register_score(
    Score(
        "imaging_gain",
        "the chi-square gained at the fitted smooth lens by freeing the lens and adding the "
        "best blob of mass (gravitational imaging's tests; drawn by LensFit 2's fit)",
        _drawn_by_fit_map,
        True,
        drawn_by_fit=True,
    )
)


@dataclass
class ScoreValues:
    """Scores of a batch: name -> (N,) float64, and the requested map (N, 1, H, W) or None.

    `not_applicable` maps each score to (N,) reasons: "" where the score applies to the image,
    else why it cannot judge it (`applicability`)."""

    values: dict[str, Tensor]
    residual_map: Tensor | None
    not_applicable: dict[str, list[str]] = field(default_factory=dict)


# What a score needs of an image before its value means anything (issue: a pure-noise image or
# one without a light region scored 0, "confidently normal").
DETECTION_SIGMA = 8.0  # a lens must reach this matched-filter S/N somewhere (noise: max ~4.5)


def signal_detected(
    x: Tensor, sigma: Tensor, psf_sigma_pixels: float, valid: Tensor | None = None
) -> Tensor:
    """(N,) bool: somewhere the image, less its median, matched-filtered by the PSF, stands
    DETECTION_SIGMA noise sigmas high. Pure noise peaks near 4.5 sigma over 150 x 150 pixels;
    the study's lenses at 50 or more."""
    keep = torch.ones_like(x, dtype=torch.bool) if valid is None else valid
    medians = [
        xi[ki].median() if ki.any() else xi.new_zeros(())
        for xi, ki in zip(x.float(), keep, strict=True)
    ]
    background = torch.stack(medians).view(-1, 1, 1, 1)
    snr = psf_filter(
        torch.where(keep, (x.float() - background) / sigma.float(), 0.0), psf_sigma_pixels
    )
    return snr.flatten(1).amax(dim=1) >= DETECTION_SIGMA


def applicability(
    names: Iterable[str],
    x_hat: Tensor,
    sigma: Tensor,
    psf_sigma_pixels: float,
    detected: Tensor,
    valid: Tensor | None = None,
) -> dict[str, list[str]]:
    """Per score, per image: "" where it applies, else why not. No score applies to an image
    in which no lens is detected; chi2_psf_light also needs a light region of at least one
    PSF area (2 pi sigma^2 pixels)."""
    no_lens = (
        f"no lens light or arcs detected (nothing reaches {DETECTION_SIGMA:g} noise sigmas "
        "after the PSF's matched filter): the model cannot judge this image"
    )
    reasons = {}
    light_pixels = None
    for name in names:
        per_image = ["" if bool(d) else no_lens for d in detected]
        if name == "chi2_psf_light":
            if light_pixels is None:
                region = light_region(x_hat, sigma)
                if valid is not None:
                    region = region & valid
                light_pixels = region.flatten(1).sum(dim=1)
            needed = max(1, math.ceil(2 * math.pi * psf_sigma_pixels**2))
            per_image = [
                r
                or (
                    f"the reconstruction has {int(n)} pixels of light above "
                    f"{LIGHT_REGION_SIGMA:g} sigma, fewer than one PSF area ({needed}): "
                    "chi2_psf_light does not apply"
                    if int(n) < needed
                    else ""
                )
                for r, n in zip(per_image, light_pixels, strict=True)
            ]
        reasons[name] = per_image
    return reasons


def compute_scores(
    x: Tensor,
    x_hat: Tensor,
    names: Iterable[str],
    psf_sigma_pixels: float,
    map_of: str | None = None,
    sigma: Tensor | None = None,
    valid: Tensor | None = None,
    fit_maps: dict[str, Tensor] | None = None,
) -> ScoreValues:
    """Every score in `names` (and the map of `map_of`) for images x and reconstructions x_hat,
    both (N, 1, H, W). `sigma` (N, 1, H, W) is the noise map (infinite where a pixel has no
    weight); None: estimated once, from x, when a score needs it. `valid` (N, 1, H, W) bool
    marks the pixels that count; None: all. `fit_maps`: the maps (N, 1, H, W) the model's fit
    drew for the scores `drawn_by_fit` among them (`LensFit2.reconstruct_with_fit_maps`)."""
    wanted = [get_score(n) for n in dict.fromkeys(names)]
    shown = get_score(map_of) if map_of is not None else None
    if sigma is None:  # needed by the noise-aware scores and by every score's applicability
        sigma = estimate_noise(x.float(), psf_sigma_pixels)
    drawn = {
        s.name: s.from_fit(_fit_map(s, fit_maps), valid)
        for s in [*wanted, *([shown] if shown else [])]
        if s.drawn_by_fit
    }
    values = {
        s.name: drawn[s.name][0] if s.drawn_by_fit else s(x, x_hat, sigma, psf_sigma_pixels, valid)
        for s in wanted
    }
    m = None
    if shown is not None:
        m = (
            drawn[shown.name][1]
            if shown.drawn_by_fit
            else shown.map(x, x_hat, sigma, psf_sigma_pixels, valid)
        )
    detected = signal_detected(x, sigma, psf_sigma_pixels, valid)
    reasons = applicability(
        [s.name for s in wanted], x_hat, sigma, psf_sigma_pixels, detected, valid
    )
    return ScoreValues(values=values, residual_map=m, not_applicable=reasons)


def _fit_map(score: Score, fit_maps: dict[str, Tensor] | None) -> Tensor:
    """The map the model's fit drew for `score`; ValueError when the caller brought none."""
    if fit_maps is None or score.name not in fit_maps:
        raise ValueError(f"score {score.name!r} is drawn by the model's fit: pass its fit_maps")
    return fit_maps[score.name]

"""The one interface every anomaly model implements.

Images are `(N, 1, H, W)` float tensors with pixels min-max scaled to [0, 1]. A model
reconstructs them (`reconstruct`, same shape, values in [0, 1]); the anomaly scores are
computed from the image and its reconstruction by `deeplense.inference.score_array`, never by
the model. `loss` returns the training objective as a dict with a `"loss"` key plus named
parts for logging. In eval mode `reconstruct` is deterministic (no sampling, BatchNorm
running statistics).
"""

from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Self

from torch import Tensor, nn

from deeplense.fit_drawn import FitDrawn
from deeplense.instrument import STUDY_IMAGE_SIZE

TINY_IMAGE_SIZE = 32  # pixels per side of the tests' and `fit --tiny`'s images


@dataclass
class ModelConfig:
    """What every model's config holds; a model's own config subclasses it."""

    image_size: int = STUDY_IMAGE_SIZE  # side of the square input, pixels

    @classmethod
    def tiny(cls) -> Self:
        """The config at test size (TINY_IMAGE_SIZE images, small layers), built in well
        under a second: the contract tests and `fit --tiny` use it. Override it to shrink
        a model's own layers."""
        return cls(image_size=TINY_IMAGE_SIZE)


class AnomalyModel(nn.Module):
    """Base class: subclasses set `Config` (a dataclass) and implement reconstruct and loss."""

    architecture: ClassVar[str] = ""
    training_step: ClassVar[str | None] = None  # "module:Class", set by register_model
    # State-dict key prefixes that scoring never reads (an adversary, a variance head): not
    # stored in checkpoints, so a loaded model scores exactly but cannot continue training.
    training_only: ClassVar[tuple[str, ...]] = ()
    Config: ClassVar[type[ModelConfig]]
    # True for a model that weighs pixels by their noise (LensFit): scoring then hands it the
    # noise map it scores with (`reconstruct_with_noise`), supplied or estimated once.
    uses_noise_map: ClassVar[bool] = False
    # True for a model that draws its reconstruction on any pixel grid (a renderer of the
    # physics: LensFit): an image of another pixel scale is then fitted on its own pixels
    # (`reconstruct_with_noise(pixel_scale=...)`), not resampled to the model's.
    renders_any_grid: ClassVar[bool] = False
    # The scores drawn by the model's own fit that it offers (`deeplense.scores.scores_for`;
    # LensFit 2: "imaging_gain"), drawn by `reconstruct_with_fit_maps`.
    fit_scores: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.config = config

    @property
    def image_size(self) -> int:
        """Side of the square input image, in pixels."""
        return int(self.config.image_size)

    def arguments(self) -> dict[str, Any]:
        """The config as JSON-serialisable constructor arguments (stored in config.json)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self.config).items()}

    def reconstruct(self, x: Tensor) -> Tensor:
        """(N, 1, H, W) in [0, 1] -> reconstruction (N, 1, H, W) in [0, 1]."""
        raise NotImplementedError

    def reconstruct_with_noise(
        self,
        x: Tensor,
        sigma: Tensor,
        psf_sigma_pixels: float | None = None,
        pixel_scale: float | None = None,
    ) -> Tensor:
        """Reconstruct x (N, 1, H, W) given its noise map sigma (N, 1, H, W; infinite where a
        pixel has no weight), its PSF's width in pixels (None: the model's own) and, for a
        model that `renders_any_grid`, its pixel scale in arcsec (None: the model's; x is then
        n x n pixels of that scale). The default ignores all three; a model of the physics
        (LensFit) overrides it."""
        return self.reconstruct(x)

    def reconstruct_with_fit_maps(
        self,
        x: Tensor,
        sigma: Tensor,
        names: tuple[str, ...],
        psf_sigma_pixels: float | None = None,
        pixel_scale: float | None = None,
    ) -> FitDrawn:
        """`reconstruct_with_noise` and, from the same fit, the map (N, 1, H, W) of each score
        in `names` (a subset of `fit_scores`) that the fit draws, in noise sigmas, its sum of
        squares the score (`deeplense.scores.Score.from_fit`), with the findings those
        scores' tests report (`deeplense.fit_drawn.FINDINGS`). The default draws none; a
        model with `fit_scores` overrides it."""
        if names:
            raise ValueError(f"{self.architecture} draws no score of its own fit: {names}")
        return FitDrawn(self.reconstruct_with_noise(x, sigma, psf_sigma_pixels, pixel_scale))

    def loss(self, x: Tensor) -> dict[str, Tensor]:
        """Training objective on a batch (N, 1, H, W): {"loss": scalar, other parts...}."""
        raise NotImplementedError

    def fitted_parameters(self) -> int | None:
        """Parameters fitted to each image (linear and nonlinear), which its goodness of fit's
        degrees of freedom leave out (`deeplense.significance`); None for a model that does
        not fit each image (an autoencoder), which then reports no p-value."""
        return None

    def after_training(self, images: Tensor) -> None:
        """An optional last step on (a subset of) the training images (N, 1, H, W), run once
        before export; nothing by default (LensFit learns its prior here)."""

    def card(self) -> dict[str, Any]:
        """Facts about the trained model for its model card (e.g. a learned prior); {}."""
        return {}


def is_training_only(model: nn.Module, key: str) -> bool:
    """Whether state-dict `key` is one of `model`'s training-only tensors (not stored)."""
    prefixes = tuple(getattr(model, "training_only", ()))
    return bool(prefixes) and key.startswith(prefixes)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)

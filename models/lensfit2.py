"""LensFit 2: the flexible smooth lens of gravitational imaging, amortised by an encoder and
refined per image.

LensFit (models/lensfit.py) draws only the study's own family (a singular isothermal sphere,
fixed Sersic indices) and falls to chance on lenses outside it. LensFit 2 draws
`deeplense.lensing.flexible`'s smooth lens instead: an elliptical power-law mass with
external shear and a free centre, a multi-Gaussian lens light, and a shapelet source (several
sets at multiples of the scale beta). Given the 13 nonlinear parameters, the light, the
source and the [0, 1] offset are solved linearly per image (weighted least squares), so any
source shape and any smooth lens light cost nothing to learn.

- Encoder: the study's convolutional encoder, then an MLP to the 13 nonlinear parameters,
  each mapped into `RANGES` by a sigmoid (arcsec, radians; `flexible.NAMES`). Trained on
  the loss below alone it settles in a degenerate basin (an Einstein radius near 0.3" for
  Model R's 1.2", the source drawing the ring itself); `training.supervise` then fits it to
  a simulated set's true parameters (`parameter_loss`), which refinement needs as a start.
- Loss: the noise-whitened residual of the best smooth lens at the encoder's guess,
  mean(((x - x_hat) / sigma)^2), sigma estimated from each image; 1 for a perfect fit.
- Refinement (`refine_steps`): Levenberg-Marquardt on the physical parameters with the
  linear parts solved inside every step (variable projection), from the encoder's guess,
  minimising 0.5 chi2 plus the prior's penalty (a MAP fit). It uses each image's noise map
  and PSF width. `coarse_steps` of them can go first on the image binned 2 x 2
  (`deeplense.lensing.coarse`), each about a third of a full step's time; the best lens is
  always solved on the image's own pixels at the end.
- Prior: a Gaussian on the physical parameters. During training: running mean and variance
  of the encodings. After training (`after_training`): the mean and variance of converged
  refits of training images (fitted under no prior), each standard deviation times
  `prior_width`, the knob that trades detection on lenses like the training set's against
  robustness to others (docs/results.md, "The flexible-model bound"); `mass_prior_width`
  sets the mass's factor alone (flexible.MASS), and `prior_widths` any parameter's by
  name, for what a set never varies (Model B's shipped one holds the slope, ellipticity
  and centre, and leaves free the Einstein radius and external shear, which vary there).
"""

from dataclasses import dataclass, replace
from typing import Any, Self

import torch
from torch import Tensor

from deeplense.fit_drawn import FINDINGS, FitDrawn
from deeplense.instrument import STUDY_PIXEL_SCALE_ARCSEC, STUDY_PSF_SIGMA_ARCSEC, gaussian_kernel
from deeplense.lensing.coarse import BLOCK, coarse_image, coarse_psf_sigma
from deeplense.lensing.flexible import (
    INDEX,
    MASS,
    NAMES,
    FlexibleConfig,
    FlexibleLens,
)
from deeplense.lensing.flexible_fit import FlexibleFit, GaussianPrior, fit_flexible
from deeplense.lensing.perturbation import PerturbationConfig, perturbation_test
from deeplense.noise import estimate_noise
from deeplense.observation import model_grid_view, own_grid_supersampling
from models.base import AnomalyModel
from models.layers import ConvEncoder, ConvNetConfig, parameter_head, range_bounds
from models.registry import register_model

# The encoder's range of each nonlinear parameter (lo, hi), in flexible.NAMES' order.
RANGES: dict[str, tuple[float, float]] = {
    "theta_e": (0.3, 2.5),  # arcsec
    "slope": (1.6, 2.4),
    "mass_e1": (-0.45, 0.45),
    "mass_e2": (-0.45, 0.45),
    "center_x": (-0.15, 0.15),  # arcsec
    "center_y": (-0.15, 0.15),
    "gamma1": (-0.3, 0.3),
    "gamma2": (-0.3, 0.3),
    "source_x": (-1.6, 1.6),  # arcsec
    "source_y": (-1.6, 1.6),
    "log_beta": (-3.5, 0.5),  # natural log of arcsec: beta 0.03-1.6"
    "light_e1": (-0.5, 0.5),
    "light_e2": (-0.5, 0.5),
}
assert tuple(RANGES) == NAMES
PSF_TRUNCATE = 4.0  # the Gaussian PSF kernel's half side, in its sigmas
# imaging_gain's tests (`deeplense.lensing.perturbation`): the default blobs, without the
# joint test over all of them (imaging_gain does not use it; a third of the tests' time).
SERVED_TESTS = PerturbationConfig(joint=False)
# Learning the prior: refits in chunks of this many images (memory: the Jacobian is
# chunk x pixels x 13 floats, the design chunk x pixels x K).
PRIOR_FIT_CHUNK = 8
# Scoring: images refined this many at a time. One at a time is the fastest on a CPU (150 px,
# one thread: 2.7 s an image alone, 3.7 s in batches of 8, 12 s in evaluate's 64; the batch's
# float64 Jacobians leave the cache) and makes an image's fit independent of its batch mates,
# bit for bit on one thread count (another count sums a one-image product in another order,
# which the refinement carries to about 1e-5 of the loss: docs/results.md).
REFINE_CHUNK = 1
# On a GPU, images refined this many at a time (one at a time would leave it idle); the
# Levenberg-Marquardt damping is per image, so a chunk fits each image as it would alone, to
# rounding. Memory: the float64 design (chunk x pixels x K) and its PSF transforms, about 2 GB
# at 32 images of 150 px. Written and tested batched on the CPU; never run on a GPU here.
GPU_REFINE_CHUNK = 32


# The dtype the flexible lens's bases are drawn in during refinement; the Gram matrix, the
# solve, the residual and the cost are float64 (`FlexibleLens.bases_dtype`).
BASES_DTYPE = torch.float32


def refine_chunk(device: torch.device) -> int:
    """Images refined together on `device`: REFINE_CHUNK on a CPU, GPU_REFINE_CHUNK else."""
    return REFINE_CHUNK if device.type == "cpu" else GPU_REFINE_CHUNK


def fit_in_chunks(
    lens: FlexibleLens,
    x: Tensor,
    sigma: Tensor,
    psf: Tensor,
    start: Tensor,
    steps: int,
    prior: GaussianPrior,
) -> FlexibleFit:
    """`fit_flexible` of images x (N, 1, n, n) from start (N, 13), `refine_chunk` images at a
    time on x's device, the chunks' fits joined in order."""
    chunk = refine_chunk(x.device)
    fits = [
        fit_flexible(
            lens, x[i : i + chunk], sigma[i : i + chunk], psf, start[i : i + chunk], steps, prior
        )
        for i in range(0, len(x), chunk)
    ]
    return FlexibleFit(
        theta=torch.cat([f.theta for f in fits]),
        model=torch.cat([f.model for f in fits]),
        cost=torch.cat([f.cost for f in fits]),
    )


@dataclass
class LensFit2Config(ConvNetConfig):
    """Encoder geometry, the instrument, the flexible model's bases and the refinement."""

    pixel_scale: float = STUDY_PIXEL_SCALE_ARCSEC  # arcsec per pixel
    psf_sigma: float = STUDY_PSF_SIGMA_ARCSEC  # Gaussian PSF sigma, arcsec
    hidden: int = 128  # MLP width between the conv features and the parameters
    shapelet_order: int = 8  # per shapelet set
    source_scales: tuple[float, ...] = (0.5, 1.0, 3.0)  # sets at beta times each
    supersampling: int = 1  # sub-pixels per pixel per axis
    source_ridge: float = 1e-5
    refine_steps: int = 4  # Levenberg-Marquardt steps per image at inference
    # Steps on the image binned 2 x 2 before those, from the encoder's guess: each about a
    # third of a full one's time (deeplense.lensing.coarse). 0: every step on the image's
    # own pixels.
    coarse_steps: int = 0
    prior_fit_images: int = 64  # training images refitted to learn the prior
    prior_fit_steps: int = 10  # LM steps per image for it
    prior_width: float = 1.0  # the learned prior's standard deviations times this
    # The lens mass's (flexible.MASS: Einstein radius, slope, ellipticity, centre, shear)
    # standard deviations times this instead, when set; the source's and light's keep
    # prior_width. (It holds the external shear too, which Model A and B do vary.)
    mass_prior_width: float | None = None
    # Factors by parameter name (flexible.NAMES), over prior_width and mass_prior_width for
    # the parameters named: {"theta_e": 0.1, "slope": 0.1} narrows those two alone.
    prior_widths: dict[str, float] | None = None
    prior_floor: float = 1e-8  # smallest prior variance of a parameter
    prior_momentum: float = 0.01  # running prior update per training batch

    def __post_init__(self) -> None:
        super().__post_init__()
        widths = {"prior_width": self.prior_width}
        if self.mass_prior_width is not None:
            widths["mass_prior_width"] = self.mass_prior_width
        if self.prior_widths is not None:
            if not isinstance(self.prior_widths, dict):
                raise ValueError(
                    f"prior_widths must map parameter names to widths, got {self.prior_widths!r}"
                )
            unknown = sorted(set(self.prior_widths) - set(NAMES))
            if unknown:
                raise ValueError(
                    f"prior_widths: no parameter {', '.join(map(str, unknown))}; "
                    f"valid: {', '.join(NAMES)}"
                )
            widths.update({f"prior_widths[{k}]": v for k, v in self.prior_widths.items()})
        for name, width in widths.items():
            if isinstance(width, bool) or not isinstance(width, int | float) or not width > 0:
                raise ValueError(f"{name} must be a positive number, got {width!r}")
        for name in ("refine_steps", "coarse_steps"):
            steps = getattr(self, name)
            if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
                raise ValueError(f"{name} must be a whole number of steps >= 0, got {steps!r}")

    @classmethod
    def tiny(cls) -> Self:
        return replace(
            super().tiny(), hidden=16, shapelet_order=3, source_scales=(1.0, 3.0),
            coarse_steps=1, refine_steps=1, prior_fit_images=8, prior_fit_steps=2,
        )  # fmt: skip

    def flexible(self, side: int | None = None, pixel_scale: float | None = None) -> FlexibleConfig:
        """The flexible model on this config's grid, or on `side` pixels of `pixel_scale`
        arcsec (an image's own grid: sub-pixels no larger than this config's)."""
        scale = self.pixel_scale if pixel_scale is None else float(pixel_scale)
        return FlexibleConfig(
            image_size=self.image_size if side is None else side,
            pixel_scale=scale,
            shapelet_order=self.shapelet_order,
            source_scales=tuple(self.source_scales),
            supersampling=own_grid_supersampling(self.supersampling, scale, self.pixel_scale),
            source_ridge=self.source_ridge,
        )


@register_model("lensfit2")
class LensFit2(AnomalyModel):
    """Encoder -> 13 smooth-lens parameters -> MAP refinement -> best smooth lens (module doc)."""

    Config = LensFit2Config
    uses_noise_map = True
    renders_any_grid = True
    fit_scores = ("imaging_gain",)
    lo: Tensor  # (13,) buffers: range starts and widths; the prior on physical parameters
    span: Tensor
    prior_mean: Tensor
    prior_var: Tensor

    def __init__(self, config: LensFit2Config) -> None:
        super().__init__(config)
        self.encoder = ConvEncoder(config)
        self.head = parameter_head(config.flat_dim, config.hidden, len(NAMES))
        lo, span = range_bounds(RANGES, NAMES)
        self.register_buffer("lo", lo)
        self.register_buffer("span", span)
        self.register_buffer("prior_mean", lo + 0.5 * span)
        self.register_buffer("prior_var", span**2)
        self.lens = FlexibleLens(config.flexible(), bases_dtype=BASES_DTYPE)

    @property
    def psf_sigma_pixels(self) -> float:
        return float(self.config.psf_sigma / self.config.pixel_scale)

    def psf_kernel(self, psf_sigma_pixels: float | None = None) -> Tensor:
        """The Gaussian PSF (k, k) float32 on the pixel grid: the config's or `psf_sigma_pixels`."""
        sigma = self.psf_sigma_pixels if psf_sigma_pixels is None else psf_sigma_pixels
        return torch.from_numpy(gaussian_kernel(sigma, truncate=PSF_TRUNCATE)).float()

    def guess(self, x: Tensor) -> Tensor:
        """The encoder's physical parameters (N, 13) for images (N, 1, H, W)."""
        raw = self.head(self.encoder(x))
        return self.lo + self.span * torch.sigmoid(raw.float())

    def prior_widths(self) -> Tensor:
        """Each parameter's factor (13,) on its learned standard deviation: `prior_width`,
        or `mass_prior_width` for the mass's (flexible.MASS) when set, or its own in the
        config's `prior_widths`."""
        widths = torch.full_like(self.prior_var, float(self.config.prior_width))
        if self.config.mass_prior_width is not None:
            widths[[INDEX[name] for name in MASS]] = float(self.config.mass_prior_width)
        for name, width in (self.config.prior_widths or {}).items():
            widths[INDEX[name]] = float(width)
        return widths

    def prior(self) -> GaussianPrior:
        """The Gaussian prior on the physical parameters, widened by `prior_widths`."""
        var = self.prior_var.clamp_min(float(self.config.prior_floor))
        return GaussianPrior(self.prior_mean, 1.0 / (var * self.prior_widths() ** 2))

    def best_lens(
        self, theta: Tensor, x: Tensor, sigma: Tensor, psf: Tensor, lens: FlexibleLens | None = None
    ) -> Tensor:
        """The best smooth lens at parameters theta (N, 13), differentiable: (N, 1, H, W), on
        `lens`'s grid (None: the config's), its bases drawn in x's dtype."""
        lens = self.lens if lens is None else lens
        return replace(lens, bases_dtype=None).model_image(theta, x, sigma, psf)

    # ---- the AnomalyModel interface -----------------------------------------------------

    def fitted_parameters(self) -> int:
        """The 13 nonlinear parameters and the linear ones (light, shapelets, offset)."""
        return len(NAMES) + self.lens.config.n_linear

    def reconstruct(self, x: Tensor) -> Tensor:
        return self.reconstruct_with_noise(x, estimate_noise(x.float(), self.psf_sigma_pixels))

    def reconstruct_with_noise(
        self,
        x: Tensor,
        sigma: Tensor,
        psf_sigma_pixels: float | None = None,
        pixel_scale: float | None = None,
    ) -> Tensor:
        """The MAP smooth lens of each image, weighing pixels by 1 / sigma (infinite sigma:
        a masked pixel, left out), drawn through a Gaussian PSF of `psf_sigma_pixels` (the
        image's own; None: the config's) on x's own grid of `pixel_scale` arcsec (None: the
        config's), refined from the encoder's guess (`encoder_start`)."""
        return self.refine(
            x, sigma, self.encoder_start(x, pixel_scale), psf_sigma_pixels, pixel_scale
        )

    def reconstruct_with_fit_maps(
        self,
        x: Tensor,
        sigma: Tensor,
        names: tuple[str, ...],
        psf_sigma_pixels: float | None = None,
        pixel_scale: float | None = None,
    ) -> FitDrawn:
        """`reconstruct_with_noise` and, at the same fit, imaging_gain's map (N, 1, H, W)
        float32 when `names` asks for it: gravitational imaging's tests at the fitted lens
        (`deeplense.lensing.perturbation`, its default blobs), the whitened residual's part
        that freeing the lens and adding the best blob of mass explain, in noise sigmas; and
        the tests' findings (the two parts, the best blob: `deeplense.fit_drawn.FINDINGS`)."""
        unknown = sorted(set(names) - set(self.fit_scores))
        if unknown:
            raise ValueError(f"lensfit2 draws no score {', '.join(unknown)} of its fit")
        start = self.encoder_start(x, pixel_scale)
        return self.refine_with_fit_maps(x, sigma, start, psf_sigma_pixels, pixel_scale, names)

    def imaging_gain_tests(
        self, x64: Tensor, sigma64: Tensor, theta: Tensor, psf_sigma: float, pixel_scale: float
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """imaging_gain's map (N, 1, n, n) float64 of images x64 (N, 1, n, n) with noise
        sigma64 at their fitted parameters theta (N, 13), through a Gaussian PSF of
        `psf_sigma` pixels on a grid of `pixel_scale` arcsec, and the tests' findings (each
        (N,) float64, `FINDINGS`); one image at a time (the tests' templates are per image)."""
        side = x64.shape[-1]
        lens = self.lens_on(side, pixel_scale)
        psf = self.psf_kernel(psf_sigma).double()
        maps, found = [], []
        for i in range(len(x64)):
            x, sigma, at = x64[i : i + 1], sigma64[i : i + 1], theta[i : i + 1].double()
            linear = lens.fit_linear(at, x, sigma, psf)
            test = perturbation_test(lens, at, x, sigma, psf, SERVED_TESTS, linear)
            assert test.gain_map is not None
            maps.append(test.gain_map.view_as(x))
            found.append(test.findings(side, pixel_scale))
        findings = {
            name: torch.tensor([f[name] for f in found], dtype=torch.float64) for name in FINDINGS
        }
        return torch.cat(maps), findings

    def lens_on(self, side: int, pixel_scale: float | None = None) -> FlexibleLens:
        """The flexible lens on a grid of `side` pixels of `pixel_scale` arcsec (None: the
        config's): the model's own where that is its grid."""
        scale = self.config.pixel_scale if pixel_scale is None else float(pixel_scale)
        if side == self.image_size and scale == self.config.pixel_scale:
            return self.lens
        return FlexibleLens(self.config.flexible(side, scale), bases_dtype=BASES_DTYPE)

    def encoder_start(self, x: Tensor, pixel_scale: float | None = None) -> Tensor:
        """The encoder's guess (N, 13) of the physical parameters for images x (N, 1, H, W) on
        their own grid of `pixel_scale` arcsec (None: the config's); the encoder reads x
        resampled to the config's grid (`model_grid_view`). One image at a time: a batched
        matrix product rounds differently with the batch's size (2e-7 here), and refinement
        carried that to 5e-6 of a score, so an image's score depended on the images it was
        sent with; alone, it depends on the image only (the encoder is a few ms of it)."""
        scale = self.config.pixel_scale if pixel_scale is None else float(pixel_scale)
        with torch.autocast(x.device.type, enabled=False):
            view = model_grid_view(x.float(), scale, self.config.pixel_scale, self.image_size)
            return torch.cat([self.guess(image[None]) for image in view]).detach()  # (N, 13)

    def refine(
        self,
        x: Tensor,
        sigma: Tensor,
        start: Tensor,
        psf_sigma_pixels: float | None = None,
        pixel_scale: float | None = None,
    ) -> Tensor:
        """`reconstruct_with_noise` from the given start (N, 13) instead of the encoder's: the
        MAP smooth lens (N, 1, H, W) after `coarse_steps` Levenberg-Marquardt steps on the
        image binned 2 x 2 and `refine_steps` on its pixels (none: the best lens at the
        start). bench/refine_noise.py perturbs the start with it."""
        return self.refine_with_fit_maps(
            x, sigma, start, psf_sigma_pixels, pixel_scale
        ).reconstruction

    def refine_with_fit_maps(
        self,
        x: Tensor,
        sigma: Tensor,
        start: Tensor,
        psf_sigma_pixels: float | None = None,
        pixel_scale: float | None = None,
        names: tuple[str, ...] = (),
    ) -> FitDrawn:
        """`refine`, and at the same fit imaging_gain's map (N, 1, H, W) float32 and its
        tests' findings when `names` holds it (`reconstruct_with_fit_maps`)."""
        scale = self.config.pixel_scale if pixel_scale is None else float(pixel_scale)
        psf_sigma = self.psf_sigma_pixels if psf_sigma_pixels is None else psf_sigma_pixels
        with torch.autocast(x.device.type, enabled=False):
            # The fit in float64, the refinement's bases drawn in float32 (BASES_DTYPE; the
            # no-refinement path's `best_lens` draws them in float64): a float32 solve of the
            # overlapping bases (cond 1e9-1e14) moved chi2 by 1% with the batch an image came
            # in.
            x64, sigma64 = x.detach().double().clone(), sigma.detach().double().clone()
            theta, model = self.refined_lens(x64, sigma64, start, psf_sigma, scale)
            reconstruction = model.clamp(0.0, 1.0).float()
            if "imaging_gain" not in names:
                return FitDrawn(reconstruction)
            gain, findings = self.imaging_gain_tests(x64, sigma64, theta, psf_sigma, scale)
            return FitDrawn(reconstruction, {"imaging_gain": gain.float()}, findings)

    def refined_lens(
        self, x64: Tensor, sigma64: Tensor, start: Tensor, psf_sigma: float, pixel_scale: float
    ) -> tuple[Tensor, Tensor]:
        """`refine`'s fit of float64 images x64 (N, 1, n, n) with noise sigma64 from start
        (N, 13), through a Gaussian PSF of `psf_sigma` pixels on a grid of `pixel_scale`
        arcsec: the MAP parameters (N, 13) float64 and the best smooth lens (N, 1, n, n)
        float64, not clamped (bench/perturbation_auc.py tests the lens it fitted)."""
        lens = self.lens_on(x64.shape[-1], pixel_scale)
        psf = self.psf_kernel(psf_sigma).double()
        start = start.detach().float()
        coarse_steps = self.coarse_steps_for(x64.shape[-1])
        if coarse_steps > 0:
            start = self.coarse_refine(x64, sigma64, start, psf_sigma, pixel_scale)
        if int(self.config.refine_steps) <= 0 and coarse_steps == 0:
            with torch.no_grad():
                return start.double(), self.best_lens(start.double(), x64, sigma64, psf, lens)
        steps = int(self.config.refine_steps)
        fit = fit_in_chunks(lens, x64, sigma64, psf, start, steps, self.prior())
        return fit.theta, fit.model

    def coarse_steps_for(self, side: int) -> int:
        """The coarse steps an image of `side` pixels gets: none below 8 px (4 binned)."""
        return int(self.config.coarse_steps) if side >= 4 * BLOCK else 0

    def coarse_refine(
        self, x64: Tensor, sigma64: Tensor, start: Tensor, psf_sigma: float, pixel_scale: float
    ) -> Tensor:
        """`coarse_steps` MAP steps on the images x64 (N, 1, n, n) binned 2 x 2, from start
        (N, 13): the parameters (N, 13) on the images' own grid (deeplense.lensing.coarse)."""
        coarse = coarse_image(x64, sigma64, pixel_scale)
        lens = self.coarse_lens(coarse.x.shape[-1], coarse.pixel_scale)
        psf = self.psf_kernel(coarse_psf_sigma(psf_sigma)).double()
        prior = self.prior()
        prior = replace(prior, mean=coarse.to_coarse(prior.mean))
        steps = int(self.config.coarse_steps)
        theta = fit_in_chunks(
            lens, coarse.x, coarse.sigma, psf, coarse.to_coarse(start), steps, prior
        ).theta
        return coarse.to_fine(theta).float()

    def coarse_lens(self, side: int, pixel_scale: float) -> FlexibleLens:
        """The flexible lens on a coarse grid: one ray per pixel (deeplense.lensing.coarse)."""
        config = replace(self.config.flexible(side, pixel_scale), supersampling=1)
        return FlexibleLens(config, bases_dtype=BASES_DTYPE)

    def loss(self, x: Tensor) -> dict[str, Tensor]:
        with torch.autocast(x.device.type, enabled=False):
            x = x.float()
            sigma = estimate_noise(x, self.psf_sigma_pixels).detach()
            theta = self.guess(x)
            if self.training:
                self._update_prior(theta.detach())
            x_hat = self.best_lens(theta, x, sigma, self.psf_kernel())
            chi2 = ((x - x_hat) / sigma).pow(2).mean()
            mse = (x - x_hat).pow(2).mean()
        return {"loss": chi2, "chi2": chi2, "mse": mse}

    def parameter_loss(
        self, x: Tensor, target: Tensor, pixel_scale: float | None = None
    ) -> dict[str, Tensor]:
        """Supervised loss of the encoder (`training.supervise`): the mean square error of its
        guess for images x (N, 1, H, W) on their own grid of `pixel_scale` arcsec against the
        known parameters `target` (N, 13), each in units of its range's width, the target
        held inside `RANGES`. Simulated lenses know their parameters; the unsupervised loss
        alone leaves the encoder in a degenerate basin (a small Einstein radius with the
        shapelet source drawing the ring itself: docs/results.md)."""
        scale = self.config.pixel_scale if pixel_scale is None else float(pixel_scale)
        with torch.autocast(x.device.type, enabled=False):
            view = model_grid_view(x.float(), scale, self.config.pixel_scale, self.image_size)
            guess = self.guess(view)  # (N, 13)
            inside = target.float().clamp(self.lo, self.lo + self.span)
            per_parameter = ((guess - inside) / self.span).pow(2).mean(dim=0)  # (13,)
        return {"loss": per_parameter.mean(), **dict(zip(NAMES, per_parameter, strict=True))}

    @torch.no_grad()
    def after_training(self, images: Tensor) -> None:
        """Learn the prior from converged refits (no prior) of up to `prior_fit_images`
        training images: their mean and variance per parameter."""
        x = images[: int(self.config.prior_fit_images)].float()
        if len(x) < 2:
            return
        was_training = self.training
        self.eval()
        try:
            sigma = estimate_noise(x, self.psf_sigma_pixels)
            fits = [
                fit_flexible(
                    self.lens, x[i : i + PRIOR_FIT_CHUNK], sigma[i : i + PRIOR_FIT_CHUNK],
                    self.psf_kernel(), self.guess(x[i : i + PRIOR_FIT_CHUNK]),
                    int(self.config.prior_fit_steps),
                ).theta
                for i in range(0, len(x), PRIOR_FIT_CHUNK)
            ]  # fmt: skip
        finally:
            self.train(was_training)
        theta = torch.cat(fits).float()  # (n, 13)
        self.prior_mean.copy_(theta.mean(dim=0))
        self.prior_var.copy_(theta.var(dim=0).clamp_min(float(self.config.prior_floor)))

    @torch.no_grad()
    def _update_prior(self, theta: Tensor) -> None:
        m = float(self.config.prior_momentum)
        var = theta.var(dim=0, unbiased=False) if len(theta) > 1 else self.prior_var
        self.prior_mean.mul_(1.0 - m).add_(m * theta.mean(dim=0))
        self.prior_var.mul_(1.0 - m).add_(m * var)

    def width_note(self) -> str:
        """The prior's width factors in words."""
        if self.config.mass_prior_width is None:
            note = f"{self.config.prior_width:g}"
        else:
            note = (
                f"{self.config.mass_prior_width:g} for the mass ({', '.join(MASS)}) "
                f"and {self.config.prior_width:g} for the source and light"
            )
        named = self.config.prior_widths or {}
        if named:
            note += ", except " + ", ".join(f"{k} {float(v):g}" for k, v in named.items())
        return note

    def card(self) -> dict[str, Any]:
        """The prior in physical units and the model's bases and refinement."""
        std = self.prior_var.clamp_min(float(self.config.prior_floor)).sqrt()
        return {
            "prior": {
                n: {"mean": round(float(mu), 5), "std": round(float(sd), 5)}
                for n, mu, sd in zip(NAMES, self.prior_mean, std, strict=True)
            },
            "prior_note": "Gaussian on the physical parameters, from converged refits of "
            f"training images; its standard deviations are used times {self.width_note()}",
            "refinement": {
                "steps": int(self.config.refine_steps),
                "coarse_steps": int(self.config.coarse_steps),
                "method": "Levenberg-Marquardt on the 13 nonlinear parameters, light and source "
                "solved linearly inside each step: 0.5 chi2 + prior penalty (MAP)",
            },
            "source": {
                "shapelet_order": int(self.config.shapelet_order),
                "scales": list(self.config.source_scales),
                "parameters": self.lens.config.n_linear,
            },
            "supersampling": int(self.config.supersampling),
        }

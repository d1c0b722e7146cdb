"""LensFit: a physics-informed autoencoder whose decoder is the lens equation.

A generic autoencoder can partly reconstruct a subhalo and leaves its own smooth errors in
the residual. LensFit cannot: its decoder draws only smooth lenses, the study's own physics
(a singular isothermal sphere with external shear, an elliptical Sersic lens light and an
elliptical Sersic source; `deeplense.lensing.torch_renderer`), so every subhalo stays in the
residual. It is the lens modeller's "fit a smooth model and look at the chi-square of the
residual", amortised by a network.

- Encoder: the study's convolutional encoder (`models.layers.ConvEncoder`), then an MLP to
  one raw value per smooth-lens parameter, each mapped into its physical range by a sigmoid:
  Einstein radius, shear (g1, g2), source position, source ellipticity (e1, e2) and
  half-light radius, lens-light ellipticity and half-light radius. Sersic indices are
  fixed (config). Units: arcsec, radians.
- Decoder: the renderer draws the unit-amplitude arcs and lens light; their amplitudes and
  the image's [0, 1] offset are solved in closed form per image by a noise-weighted linear
  least-squares fit (x ~ a arcs + b lens + c), so min-max scaling costs nothing to learn.
- Loss: the noise-whitened residual, mean((x - x_hat)^2 / sigma^2), with sigma estimated
  from each image (`deeplense.noise`); 1 for a perfect fit.
- Prior: during training, running mean and variance of the raw encodings (like BatchNorm's);
  after training (`after_training`), replaced by the mean and variance of Gauss-Newton-refined
  fits of training images under a broad prior, so that it measures the data's spread rather
  than the encoder's scatter (with the encodings' prior the Einstein radius could move by
  0.017" on Model A, where it is fixed, and absorb spherical subhalos). Stored in the
  checkpoint; `card()` reports it in physical units. With `prior_deconvolve` (the
  default), the refined fits' variance, population spread plus each fit's photon noise, has
  the noise (the mean diagonal of the inverse Fisher matrix at the fits) subtracted, keeping
  at least `prior_min_share` of it: what the training set holds fixed (Model A's Einstein
  radius) then gets a prior as narrow as the data allow, not as wide as one fit's error bar.
- Refinement (`refine_steps` > 0; 2 by default): per image, that many Levenberg-Marquardt
  (or Adam) steps on the raw parameters minimising the whitened residual plus the Gaussian
  prior's penalty, a MAP fit started at the encoder's guess. The prior keeps what the
  training set held fixed (Model A's Einstein radius) from absorbing a subhalo's mass.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, Self

import torch
from torch import Tensor
from torch.autograd import forward_ad

from deeplense.instrument import STUDY_PIXEL_SCALE_ARCSEC, STUDY_PSF_SIGMA_ARCSEC
from deeplense.lensing.forward_mode import dual_level
from deeplense.lensing.levenberg import inverse_fisher_diagonal
from deeplense.lensing.torch_renderer import LensBatch, RenderConfig, render_components
from deeplense.noise import estimate_noise
from deeplense.observation import model_grid_view, own_grid_supersampling
from models.base import AnomalyModel
from models.layers import ConvEncoder, ConvNetConfig, parameter_head, range_bounds
from models.registry import register_model

# Raw outputs of the encoder, in order, with their physical range (lo, hi).
RANGES: dict[str, tuple[float, float]] = {
    "theta_e": (0.4, 2.2),  # arcsec
    "gamma1": (-0.35, 0.35),
    "gamma2": (-0.35, 0.35),
    "source_x": (-1.6, 1.6),  # arcsec
    "source_y": (-1.6, 1.6),
    "source_e1": (-0.5, 0.5),  # ellipticity (1 - q) / (1 + q) times (cos 2 phi, sin 2 phi)
    "source_e2": (-0.5, 0.5),
    "source_r_eff": (0.1, 1.5),  # arcsec
    "lens_e1": (-0.5, 0.5),
    "lens_e2": (-0.5, 0.5),
    "lens_r_eff": (0.1, 1.5),  # arcsec
}
NAMES = tuple(RANGES)
_ELLIPTICITY_EPS = 1e-6  # keeps the angle's gradient finite at a round profile

# Fitting constants (dimensionless unless stated).
# Linear amplitudes: a ridge of this share of the Gram matrix's mean diagonal keeps the 3x3
# solve regular when a component (e.g. arcs far outside the field) has no light.
AMPLITUDE_RIDGE = 1e-6
# Levenberg-Marquardt: the damping starts at LM_DAMPING_START, is multiplied by LM_ACCEPT
# after a step that lowered an image's cost and by LM_REJECT after one that did not, and
# stays within LM_DAMPING_RANGE; LM_JITTER (on the identity) keeps the solve regular.
LM_DAMPING_START = 1e-2
LM_ACCEPT = 0.3
LM_REJECT = 10.0
LM_DAMPING_RANGE = (1e-6, 1e6)
LM_JITTER = 1e-9
# Learning the prior: images are refined in chunks of PRIOR_FIT_CHUNK (memory: the Jacobian
# is chunk x pixels x P floats), under a prior PRIOR_FIT_WIDENING times broader in variance
# than the running one, so that the data, not the old prior, decide the fits.
PRIOR_FIT_CHUNK = 32
PRIOR_FIT_WIDENING = 100.0


@dataclass
class LensFitConfig(ConvNetConfig):
    """Encoder geometry (the shared conv stack), the instrument, and the refinement."""

    pixel_scale: float = STUDY_PIXEL_SCALE_ARCSEC  # arcsec per pixel
    psf_sigma: float = STUDY_PSF_SIGMA_ARCSEC  # Gaussian PSF sigma, arcsec
    supersampling: int = 1  # sub-pixels per pixel per axis in the decoder's renderer
    source_n: float = 1.5  # Sersic indices, fixed (REFERENCE.md)
    lens_n: float = 2.5
    hidden: int = 128  # MLP width between the conv features and the parameters
    # MAP refinement at inference: 2 Levenberg-Marquardt steps by default, the measured best
    # AUC for its time (encoder alone: chance; README "LensFit"). 0 = encoder only.
    refine_steps: int = 2
    refine_method: str = "gauss_newton"  # "gauss_newton" (Levenberg-Marquardt) or "adam"
    refine_lr: float = 0.05  # Adam's step on the raw (pre-sigmoid) parameters
    prior_momentum: float = 0.01  # running prior update per training batch
    prior_fit_images: int = 256  # training images refined to learn the final prior
    prior_fit_steps: int = 8  # Gauss-Newton steps per image for it (converged fits)
    prior_floor: float = 1e-8  # smallest prior variance of a raw parameter
    # Separate the population's spread from the fits' noise: subtract each parameter's mean
    # Fisher variance (photon noise of one fit) from the refined fits' variance, keeping at
    # least `prior_min_share` of it (module doc, "Prior").
    prior_deconvolve: bool = True
    prior_min_share: float = 0.01

    @classmethod
    def tiny(cls) -> Self:
        return replace(super().tiny(), hidden=16)


# Rows (images times directions) of one forward-mode pass of the Jacobian (`_jacobian`): all
# P directions of a single image at once; a large batch keeps one direction a pass.
JACOBIAN_ROWS = 64


def _q_phi(e1: Tensor, e2: Tensor) -> tuple[Tensor, Tensor]:
    e = torch.sqrt(e1 * e1 + e2 * e2 + _ELLIPTICITY_EPS**2)
    return (1.0 - e) / (1.0 + e), 0.5 * torch.atan2(e2, e1 + _ELLIPTICITY_EPS)


@register_model("lensfit")
class LensFit(AnomalyModel):
    """Encoder -> smooth-lens parameters -> renderer -> linear amplitudes (module doc)."""

    Config = LensFitConfig
    uses_noise_map = True
    renders_any_grid = True
    lo: Tensor  # (P,) buffers: range starts and widths, the running prior of raw encodings
    span: Tensor
    prior_mean: Tensor
    prior_var: Tensor

    def __init__(self, config: LensFitConfig) -> None:
        super().__init__(config)
        self.encoder = ConvEncoder(config)
        self.head = parameter_head(config.flat_dim, config.hidden, len(NAMES))
        lo, span = range_bounds(RANGES, NAMES)
        self.register_buffer("lo", lo)
        self.register_buffer("span", span)
        self.register_buffer("prior_mean", torch.zeros(len(NAMES)))
        self.register_buffer("prior_var", torch.ones(len(NAMES)))
        self.render_config = RenderConfig(
            image_size=config.image_size,
            pixel_scale=config.pixel_scale,
            supersampling=config.supersampling,
            psf_sigma=config.psf_sigma,
        )

    # ---- pieces -------------------------------------------------------------------------

    @property
    def psf_sigma_pixels(self) -> float:
        return float(self.config.psf_sigma / self.config.pixel_scale)

    def encode(self, x: Tensor) -> Tensor:
        """(N, 1, H, W) -> raw parameters (N, P), unbounded."""
        return self.head(self.encoder(x))

    def physical(self, raw: Tensor) -> Tensor:
        """Raw (N, P) -> physical values (N, P) within RANGES."""
        return self.lo + self.span * torch.sigmoid(raw)

    def lens_batch(self, raw: Tensor) -> LensBatch:
        """The renderer's parameters for raw encodings (N, P)."""
        p = dict(zip(NAMES, self.physical(raw.float()).unbind(dim=1), strict=True))
        source_q, source_phi = _q_phi(p["source_e1"], p["source_e2"])
        lens_q, lens_phi = _q_phi(p["lens_e1"], p["lens_e2"])
        ones = torch.ones_like(p["theta_e"])
        return LensBatch(
            theta_e=p["theta_e"], gamma1=p["gamma1"], gamma2=p["gamma2"],
            source_x=p["source_x"], source_y=p["source_y"], source_r_eff=p["source_r_eff"],
            source_n=ones * self.config.source_n, source_q=source_q, source_phi=source_phi,
            lens_r_eff=p["lens_r_eff"], lens_n=ones * self.config.lens_n, lens_q=lens_q,
            lens_phi=lens_phi,
        )  # fmt: skip

    def draw(self, raw: Tensor, x: Tensor, sigma: Tensor) -> Tensor:
        """The smooth lens of `raw` fitted to x's scale: (N, 1, H, W).

        Amplitudes of arcs and lens light and the offset come from the weighted linear
        least-squares fit to x (weights 1 / sigma), solved per image in closed form.
        """
        with torch.autocast(x.device.type, enabled=False):  # physics in float32 always
            return self._draw(raw.float(), x.float(), sigma.float())

    def _draw(self, raw: Tensor, x: Tensor, sigma: Tensor) -> Tensor:
        arcs, lens = render_components(self.lens_batch(raw), self.render_config)
        columns = [arcs.flatten(1), lens.flatten(1), torch.ones_like(arcs.flatten(1))]
        design = torch.stack(columns, dim=2)  # (N, pixels, 3)
        w = (1.0 / sigma.float()).flatten(1).unsqueeze(2)  # (N, P, 1)
        a = design * w  # (N, pixels, 3)
        b = x.float().flatten(1).unsqueeze(2) * w  # (N, pixels, 1)
        gram = a.transpose(1, 2) @ a  # (N, 3, 3)
        ridge = AMPLITUDE_RIDGE * gram.diagonal(dim1=1, dim2=2).mean(dim=1).clamp_min(1e-12)
        gram = gram + ridge.view(-1, 1, 1) * torch.eye(3, dtype=gram.dtype, device=gram.device)
        coef = torch.linalg.solve(gram, a.transpose(1, 2) @ b)  # (N, 3, 1)
        return (design @ coef).view_as(x)

    def prior_penalty(self, raw: Tensor) -> Tensor:
        """Gaussian prior's negative log density (up to a constant), per image: (N,)."""
        var = self.prior_var.clamp_min(float(self.config.prior_floor))
        return 0.5 * ((raw - self.prior_mean) ** 2 / var).sum(dim=1)

    def refine(self, raw: Tensor, x: Tensor, sigma: Tensor) -> Tensor:
        """`refine_steps` steps of the MAP fit per image, from `raw` (N, P)."""
        steps = int(self.config.refine_steps)
        if steps <= 0:
            return raw
        if self.config.refine_method == "gauss_newton":
            return self._refine_gauss_newton(raw, x, sigma, steps)
        if self.config.refine_method != "adam":
            raise ValueError(
                f"refine_method must be adam or gauss_newton, got {self.config.refine_method!r}"
            )
        # Works under torch.inference_mode (the scoring path): fresh tensors, grad on.
        with torch.inference_mode(False), torch.enable_grad():
            x, sigma = x.detach().clone(), sigma.detach().clone()
            r = raw.detach().clone().requires_grad_(True)
            optimiser = torch.optim.Adam([r], lr=self.config.refine_lr)
            pixels = x[0].numel()
            for _ in range(steps):
                optimiser.zero_grad(set_to_none=True)
                chi2 = ((x - self.draw(r, x, sigma)) / sigma).pow(2).flatten(1).sum(dim=1)
                (0.5 * chi2 + self.prior_penalty(r)).sum().div(pixels).backward()
                optimiser.step()
        return r.detach()

    def _refine_gauss_newton(self, raw: Tensor, x: Tensor, sigma: Tensor, steps: int) -> Tensor:
        """Levenberg-Marquardt on 0.5 |whitened residual|^2 + prior penalty, per image.

        The Jacobian of the whitened residual with respect to the P raw parameters comes from
        P forward-mode derivatives (the renderer supports them), each one pass over the batch;
        the damping of each image grows tenfold when a step raises its cost and shrinks
        otherwise, so every image's cost never increases.
        """
        with torch.inference_mode(False), torch.no_grad():
            x, sigma = x.detach().clone().float(), sigma.detach().clone().float()
            r = raw.detach().clone().float()
            n, p = r.shape
            inv_var = 1.0 / self.prior_var.clamp_min(float(self.config.prior_floor))  # (P,)

            def whitened(v: Tensor) -> Tensor:
                return self._whitened(v, x, sigma)

            def cost(v: Tensor, res: Tensor) -> Tensor:
                return 0.5 * res.pow(2).sum(dim=1) + self.prior_penalty(v)  # (N,)

            res = whitened(r)
            current = cost(r, res)
            damping = torch.full((n,), LM_DAMPING_START, dtype=r.dtype, device=r.device)
            eye = torch.eye(p, dtype=r.dtype, device=r.device)
            for _ in range(steps):
                jac = self._jacobian(r, x, sigma)  # (N, M, P)
                jtj = jac.transpose(1, 2) @ jac + torch.diag(inv_var)  # (N, P, P)
                grad = (jac.transpose(1, 2) @ res.unsqueeze(2)).squeeze(2) + (
                    r - self.prior_mean
                ) * inv_var  # (N, P)
                diag = torch.diagonal(jtj, dim1=1, dim2=2)
                step = torch.linalg.solve(
                    jtj + damping.view(-1, 1, 1) * torch.diag_embed(diag) + LM_JITTER * eye, -grad
                )
                trial = r + step
                trial_res = whitened(trial)
                trial_cost = cost(trial, trial_res)
                better = trial_cost < current
                r = torch.where(better[:, None], trial, r)
                res = torch.where(better[:, None], trial_res, res)
                current = torch.where(better, trial_cost, current)
                damping = torch.where(better, damping * LM_ACCEPT, damping * LM_REJECT)
                damping = damping.clamp(*LM_DAMPING_RANGE)
        return r

    def _whitened(self, r: Tensor, x: Tensor, sigma: Tensor) -> Tensor:
        """The whitened residual (x - draw(r)) / sigma of each image, flattened: (N, M)."""
        return ((x - self.draw(r, x, sigma)) / sigma).flatten(1)

    def _jacobian(self, r: Tensor, x: Tensor, sigma: Tensor) -> Tensor:
        """d(whitened residual)/d(raw parameters): (N, M, P), by forward mode.

        The P directions go through the renderer together, the N images stacked once per
        direction, each copy carrying its direction's tangent (`JACOBIAN_ROWS` rows a pass):
        one pass instead of P for a few images. Most of a pass's operations are on (N,)
        parameters, where forward mode's dispatch (torch's zero tangents for the constants
        are Python-level kernels), not arithmetic, took most of the time."""
        n, p = r.shape
        per_pass = max(1, min(p, JACOBIAN_ROWS // max(n, 1)))
        columns = []
        for first in range(0, p, per_pass):
            k = min(per_pass, p - first)
            tangent = torch.zeros(k, n, p, dtype=r.dtype, device=r.device)
            tangent[torch.arange(k), :, first + torch.arange(k)] = 1.0
            with dual_level():
                dual = forward_ad.make_dual(r.repeat(k, 1), tangent.view(k * n, p))
                out = self._whitened(dual, x.repeat(k, 1, 1, 1), sigma.repeat(k, 1, 1, 1))
                columns.append(forward_ad.unpack_dual(out).tangent.view(k, n, -1))  # (k, N, M)
        return torch.cat(columns).permute(1, 2, 0).contiguous()  # the layout LM sums in

    @torch.no_grad()
    def fit_variance(self, r: Tensor, x: Tensor, sigma: Tensor) -> Tensor:
        """Each raw parameter's variance from one image's photon noise at the fit `r`: the
        diagonal of the inverse Fisher matrix (J^T J)^-1 of the whitened residual, (N, P)."""
        with torch.inference_mode(False):
            jac = self._jacobian(r.float(), x.float(), sigma.float())  # (N, M, P)
        return inverse_fisher_diagonal(jac).float()

    # ---- the AnomalyModel interface -----------------------------------------------------

    def fitted_parameters(self) -> int:
        """The smooth-lens parameters and the three linear amplitudes (arcs, light, offset)."""
        return len(NAMES) + 3

    def reconstruct(self, x: Tensor) -> Tensor:
        return self.reconstruct_with_noise(x, estimate_noise(x.float(), self.psf_sigma_pixels))

    def reconstruct_with_noise(
        self,
        x: Tensor,
        sigma: Tensor,
        psf_sigma_pixels: float | None = None,
        pixel_scale: float | None = None,
    ) -> Tensor:
        """The fit weighs each pixel by 1 / sigma: a supplied noise map replaces the estimate,
        and a pixel of infinite sigma (masked, zero weight) does not count. `psf_sigma_pixels`
        (the images' own PSF on their grid, a Gaussian's sigma or a kernel's equivalent)
        replaces the config's in the renderer for this call; None keeps it. `pixel_scale`
        (arcsec; None: the config's): x is n x n pixels of that scale, and the lens is drawn
        on them; the encoder reads x resampled to the config's grid (`model_grid_view`)."""
        scale = self.config.pixel_scale if pixel_scale is None else float(pixel_scale)
        view = model_grid_view(x.float(), scale, self.config.pixel_scale, self.image_size)
        with self._rendering_on(x.shape[-1], scale, psf_sigma_pixels):
            raw = self.refine(self.encode(view.to(x.dtype)), x, sigma)
            return self.draw(raw, x, sigma).clamp(0.0, 1.0)

    @contextmanager
    def _rendering_on(
        self, side: int, pixel_scale: float, psf_sigma_pixels: float | None
    ) -> Iterator[None]:
        # The renderer's grid and PSF for one call, restored afterwards even on an error.
        # Forward passes of one model never overlap (the service holds one compute lock), so
        # the swap is safe.
        saved = self.render_config
        psf_pixels = self.psf_sigma_pixels if psf_sigma_pixels is None else psf_sigma_pixels
        wanted = replace(
            saved,
            image_size=side,
            pixel_scale=pixel_scale,
            psf_sigma=psf_pixels * pixel_scale,
            supersampling=own_grid_supersampling(
                self.config.supersampling, pixel_scale, self.config.pixel_scale
            ),
        )
        if wanted == saved:
            yield
            return
        self.render_config = wanted
        try:
            yield
        finally:
            self.render_config = saved

    def loss(self, x: Tensor) -> dict[str, Tensor]:
        sigma = estimate_noise(x.float(), self.psf_sigma_pixels).detach()
        raw = self.encode(x)
        if self.training:
            self._update_prior(raw.detach())
        x_hat = self.draw(raw, x, sigma)  # float32, also under autocast
        chi2 = ((x.float() - x_hat) / sigma).pow(2).mean()
        mse = (x.float() - x_hat).pow(2).mean()
        return {"loss": chi2, "chi2": chi2, "mse": mse}

    @torch.no_grad()
    def after_training(self, images: Tensor) -> None:
        """Learn the prior from refined fits of up to `prior_fit_images` training images."""
        x = images[: int(self.config.prior_fit_images)].float()
        if len(x) < 2:
            return
        was_training = self.training
        self.eval()
        sigma = estimate_noise(x, self.psf_sigma_pixels)
        raw = self.encode(x)
        chunks = range(0, len(x), PRIOR_FIT_CHUNK)
        steps = int(self.config.prior_fit_steps)
        saved_var = self.prior_var.clone()
        try:
            self.prior_var.mul_(PRIOR_FIT_WIDENING)  # a broad prior while fitting
            refined = torch.cat(
                [
                    self._refine_gauss_newton(
                        raw[i : i + PRIOR_FIT_CHUNK], x[i : i + PRIOR_FIT_CHUNK],
                        sigma[i : i + PRIOR_FIT_CHUNK], steps,
                    )
                    for i in chunks
                ]
            )  # fmt: skip
        finally:  # an error mid-fit leaves the model as it was, never with the broad prior
            self.prior_var.copy_(saved_var)
            self.train(was_training)
        spread = refined.var(dim=0)  # (P,) population + fit noise
        if self.config.prior_deconvolve:
            noise = torch.cat(
                [
                    self.fit_variance(
                        refined[i : i + PRIOR_FIT_CHUNK], x[i : i + PRIOR_FIT_CHUNK],
                        sigma[i : i + PRIOR_FIT_CHUNK],
                    )
                    for i in chunks
                ]
            ).mean(dim=0)  # (P,)  # fmt: skip
            spread = torch.maximum(spread - noise, float(self.config.prior_min_share) * spread)
        self.prior_mean.copy_(refined.mean(dim=0))
        self.prior_var.copy_(spread.clamp_min(float(self.config.prior_floor)))

    @torch.no_grad()
    def _update_prior(self, raw: Tensor) -> None:
        m = float(self.config.prior_momentum)
        mean = raw.float().mean(dim=0)
        var = raw.float().var(dim=0, unbiased=False) if len(raw) > 1 else self.prior_var
        self.prior_mean.mul_(1.0 - m).add_(m * mean)
        self.prior_var.mul_(1.0 - m).add_(m * var)

    def card(self) -> dict[str, Any]:
        """The learned prior in physical units (mean and std, delta method) and the
        refinement settings, for the model card."""
        mean = self.physical(self.prior_mean[None])[0]
        s = torch.sigmoid(self.prior_mean)
        std = self.span * s * (1.0 - s) * self.prior_var.sqrt()
        return {
            "prior": {
                n: {"mean": round(float(mu), 5), "std": round(float(sd), 5)}
                for n, mu, sd in zip(NAMES, mean, std, strict=True)
            },
            "prior_note": "Gaussian on the raw parameters, from refined fits of training images"
            + (
                f" less their photon noise (kept >= {self.config.prior_min_share:g} of the "
                "fits' variance)"
                if self.config.prior_deconvolve
                else ""
            )
            + "; physical mean and std by the delta method",
            "refinement": {
                "steps": int(self.config.refine_steps),
                "lr": float(self.config.refine_lr),
                "method": f"{self.config.refine_method} on the raw parameters: "
                "0.5 chi2 + prior penalty (MAP)",
            },
            "fixed": {"source_n": self.config.source_n, "lens_n": self.config.lens_n},
            "supersampling": self.config.supersampling,
        }

"""The torch renderer against lenstronomy, scipy, finite differences and physics."""

import dataclasses
import math

import numpy as np
import pytest
import torch
from scipy import ndimage, special
from torch.autograd import forward_ad

from deeplense.lensing.torch_renderer import (
    PARAMETERS,
    Components,
    LensBatch,
    RenderConfig,
    combine,
    psf_blur,
    render_components,
    sersic,
    source_plane,
)
from training.lensing.reference import LenstronomyRenderer, lens_model, light_models
from training.lensing.render import LensParams, SimConfig
from training.simulate import DATASETS, draw_params, image_rngs

SIM = SimConfig()
CONFIG = SIM.render_config()  # the simulator's grid: 150 x 150 pixels of 0.05", 2x2, PSF 0.1"
TINY = RenderConfig(image_size=4, pixel_scale=0.6, supersampling=2, psf_sigma=0.4)


def drawn(cls: str, index: int, dataset: str = "model_a") -> LensParams:
    """Parameters of test image `index` of class `cls` (seed 3), as the simulator draws them."""
    rng, _ = image_rngs(3, "test", cls, index)
    return draw_params(DATASETS[dataset], cls, rng)


def grid(n: int, pixel: float) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) (n, n) arcsec of the centres of n x n pixels of `pixel` arcsec, centred."""
    c = (np.arange(n) - (n - 1) / 2.0) * pixel
    x, y = np.meshgrid(c, c)  # x along columns, y along rows
    return x, y


def batch_values(**values: float) -> LensBatch:
    """A one-image float64 batch from keyword values (theta_sub / subhalos optional)."""
    base = dict(
        theta_e=1.2,
        gamma1=0.05,
        gamma2=-0.03,
        source_x=0.1,
        source_y=-0.2,
        source_r_eff=0.5,
        source_n=1.5,
        source_q=0.8,
        source_phi=0.4,
        lens_r_eff=0.5,
        lens_n=2.5,
        lens_q=0.7,
        lens_phi=1.1,
    )
    base.update(values)
    return LensBatch(**{k: torch.tensor([v], dtype=torch.float64) for k, v in base.items()})


@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float64, 1e-9), (torch.float32, 1e-5)])
def test_matches_lenstronomy(dtype: torch.dtype, tolerance: float) -> None:
    # The project requires 1e-3 of the peak (0.02 noise sigma at SNR 20). lenstronomy's
    # numerics (2x2 sub-pixels, Gaussian PSF on pixels) are ours, so float64 agrees to
    # rounding (measured 2e-15) and float32 to its precision (measured 6e-7).
    records = [drawn("no_sub", 0), drawn("vort", 0), drawn("sphere", 1, "model_b")]
    ours = render_components(LensBatch.from_records(records, dtype=dtype), CONFIG)
    reference = LenstronomyRenderer(SIM)
    for i, params in enumerate(records):
        for part, theirs in zip(ours, reference.render(params), strict=True):
            mine = part[i, 0].double().numpy()
            assert np.abs(mine - theirs).max() < tolerance * theirs.max()


@pytest.mark.parametrize("cls", ["sphere", "vort", "random"])
def test_ray_tracing_matches_lenstronomy(cls: str) -> None:
    if cls == "random":  # 25 masses anywhere within 1", heavier than the datasets'
        masses = np.random.default_rng(0).uniform(-1.0, 1.0, (25, 2))
        params = dataclasses.replace(
            drawn("sphere", 0), subhalos=tuple(map(tuple, masses)), theta_sub=0.05
        )
    else:
        params = drawn(cls, 1)
    model, kwargs = lens_model(params)
    x, y = grid(300, 0.025)  # the 2 x 2 sub-pixels of the 150 x 150 image
    theirs = np.array(model.ray_shooting(x.ravel(), y.ravel(), kwargs)).reshape(2, *x.shape)
    bx, by = source_plane(LensBatch.from_records([params]), CONFIG)
    ours = np.stack([bx[0].numpy(), by[0].numpy()])
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-12)  # arcsec: both exact


def test_sersic_matches_lenstronomy() -> None:
    params = drawn("no_sub", 1)
    source, source_kwargs, light, light_kwargs = light_models(params)
    x, y = grid(150, 0.05)

    def ours(*values: float) -> np.ndarray:
        r_eff, n, q, phi, *centre = (torch.tensor([v], dtype=torch.float64) for v in values)
        image = sersic(torch.from_numpy(x), torch.from_numpy(y), r_eff, n, q, phi, *centre)
        return image[0].numpy()

    theirs = source.surface_brightness(x.ravel(), y.ravel(), source_kwargs).reshape(x.shape)
    mine = ours(params.source_r_eff, params.source_n, params.source_q, params.source_phi,
                params.source_x, params.source_y)  # fmt: skip
    np.testing.assert_allclose(mine, theirs, rtol=1e-10)
    theirs = light.surface_brightness(x.ravel(), y.ravel(), light_kwargs).reshape(x.shape)
    mine = ours(params.lens_r_eff, params.lens_n, params.lens_q, params.lens_phi)
    np.testing.assert_allclose(mine, theirs, rtol=1e-10)


def test_psf_matches_scipy_even_when_wider_than_the_image() -> None:
    image = torch.rand(2, 1, 7, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    config = RenderConfig(image_size=7, pixel_scale=0.05, psf_sigma=0.1)  # radius 10 > 7 pixels
    ours = psf_blur(image, config)
    for i in range(2):
        theirs = ndimage.gaussian_filter(image[i, 0].numpy(), 2.0, mode="nearest", truncate=5.0)
        np.testing.assert_allclose(ours[i, 0].numpy(), theirs, rtol=0, atol=1e-14)


def test_unlensed_source_holds_the_analytic_sersic_flux() -> None:
    # No lens: the image is the source itself. Elliptical Sersic flux with product-average
    # R_eff is 2 pi n R_eff^2 e^b b^(-2n) Gamma(2n), whatever q and phi.
    r_eff, n = 0.2, 1.5
    batch = batch_values(
        theta_e=0.0, gamma1=0.0, gamma2=0.0, source_x=0.0, source_y=0.0, source_r_eff=r_eff,
        source_n=n, source_q=0.6, source_phi=0.3,
    )  # fmt: skip
    arcs = render_components(batch, CONFIG).arcs
    flux = float(arcs.sum()) * CONFIG.pixel_scale**2
    b = 1.9992 * n - 0.3271
    expected = 2 * math.pi * n * r_eff**2 * math.exp(b) * b ** (-2 * n) * special.gamma(2 * n)
    assert flux == pytest.approx(expected, rel=2e-3)


def test_a_mixed_batch_equals_one_by_one_renders() -> None:
    records = [drawn("no_sub", 3), drawn("sphere", 3), drawn("vort", 3), drawn("no_sub", 4)]
    config = RenderConfig(image_size=60, pixel_scale=0.08)
    together = render_components(LensBatch.from_records(records), config)
    for i, params in enumerate(records):
        with torch.no_grad():  # the renderer's no-grad path, with grad above: same bits
            alone = render_components(LensBatch.from_records([params]), config)
        for part, single in zip(together, alone, strict=True):
            # bit for bit, so that a simulator's files do not depend on its batching
            assert torch.equal(part[i], single[0])
    smooth = render_components(
        LensBatch.from_records([dataclasses.replace(records[1], subhalos=())]), config
    )
    assert (together.arcs[1] - smooth.arcs[0]).abs().max() > 1e-4  # the subhalos act


def test_float32_follows_float64() -> None:
    records = [drawn("no_sub", 5), drawn("sphere", 5)]
    config = RenderConfig(image_size=80, pixel_scale=0.06)
    wide = render_components(LensBatch.from_records(records, dtype=torch.float64), config)
    narrow = render_components(LensBatch.from_records(records, dtype=torch.float32), config)
    for w, s in zip(wide, narrow, strict=True):
        assert s.dtype == torch.float32
        assert (s.double() - w).abs().max() < 1e-5 * w.abs().max()


def test_combine_scales_each_component() -> None:
    arcs = torch.rand(3, 1, 4, 4, dtype=torch.float64)
    lens = torch.rand(3, 1, 4, 4, dtype=torch.float64)
    source_amplitude = torch.tensor([0.7, 0.8, 0.9], dtype=torch.float64)
    image = combine(Components(arcs, lens), source_amplitude, 1.2)
    expected = arcs * source_amplitude[:, None, None, None] + 1.2 * lens
    torch.testing.assert_close(image, expected)


def _parameters(batch: LensBatch) -> dict[str, torch.Tensor]:
    """Leaf copies of every tensor of `batch`, requiring gradients."""
    return {k: v.detach().clone().requires_grad_(True) for k, v in batch.tensors().items()}


@pytest.mark.parametrize(
    "values",
    [
        {},  # generic
        # the symmetric points: round profiles at angle 0, no shear, source at the origin
        dict(source_q=1.0, source_phi=0.0, lens_q=1.0, lens_phi=0.0, source_x=0.0,
             source_y=0.0, gamma1=0.0, gamma2=0.0),
    ],
)  # fmt: skip
def test_gradients_match_finite_differences(values: dict[str, float]) -> None:
    batch = batch_values(**values)
    subhalos = torch.tensor([[[0.83, 0.47], [-0.71, 0.77]]], dtype=torch.float64)
    batch = dataclasses.replace(
        batch, subhalos=subhalos, theta_sub=torch.tensor([0.1], dtype=torch.float64)
    )
    names = list(batch.tensors())
    assert set(PARAMETERS) < set(names)

    def image(*tensors: torch.Tensor) -> torch.Tensor:
        arcs, lens = render_components(LensBatch(**dict(zip(names, tensors, strict=True))), TINY)
        return arcs + 0.5 * lens

    inputs = tuple(_parameters(batch).values())
    assert torch.autograd.gradcheck(image, inputs, eps=1e-6, atol=1e-6, rtol=1e-4)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_forward_mode_jacobian_equals_reverse_mode() -> None:  # torch.func warns on import
    # Gauss-Newton refinement wants J = d image / d parameters: torch.func.jacfwd must work.
    batch = dataclasses.replace(
        batch_values(),
        subhalos=torch.tensor([[[0.83, 0.47], [-0.71, 0.77]]], dtype=torch.float64),
        theta_sub=torch.tensor([0.1], dtype=torch.float64),
    )
    values = torch.stack([getattr(batch, k) for k in PARAMETERS], dim=-1)  # (1, 13)

    def image(x: torch.Tensor) -> torch.Tensor:
        fields = {k: x[:, i] for i, k in enumerate(PARAMETERS)}
        arcs, lens = render_components(dataclasses.replace(batch, **fields), TINY)
        return arcs + lens

    forward = torch.func.jacfwd(image)(values)  # (1, 1, 4, 4, 1, 13)
    reverse = torch.func.jacrev(image)(values)
    torch.testing.assert_close(forward, reverse, rtol=1e-10, atol=1e-12)
    assert forward.abs().amax(dim=(0, 1, 2, 3, 4)).min() > 0  # every parameter acts
    with torch.no_grad():  # forward mode needs no autograd graph, so it works here too
        torch.testing.assert_close(torch.func.jacfwd(image)(values), reverse)
        with forward_ad.dual_level():
            tangent = torch.zeros_like(values)
            tangent[:, 0] = 1.0  # d / d theta_e
            out = image(forward_ad.make_dual(values, tangent))
            derivative = forward_ad.unpack_dual(out).tangent
        assert derivative is not None
        torch.testing.assert_close(derivative, reverse[..., 0, 0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gradients_are_finite_at_symmetric_points(dtype: torch.dtype) -> None:
    values = dict(source_q=1.0, source_phi=0.0, lens_q=1.0, lens_phi=0.0, source_x=0.0,
                  source_y=0.0, gamma1=0.0, gamma2=0.0)  # fmt: skip
    batch = batch_values(**values)
    leaves = {k: v.to(dtype).requires_grad_(True) for k, v in batch.tensors().items()}
    config = RenderConfig(image_size=40, pixel_scale=0.1)
    arcs, lens = render_components(LensBatch(**leaves), config)
    (arcs.square().sum() + lens.square().sum()).backward()
    for name, leaf in leaves.items():
        assert leaf.grad is not None and torch.isfinite(leaf.grad).all(), name
    grad = leaves["theta_e"].grad
    assert grad is not None and float(grad.abs()) > 0


def test_records_with_and_without_subhalos_share_a_batch() -> None:
    records = [drawn("no_sub", 0), drawn("sphere", 0)]
    batch = LensBatch.from_records(records)
    assert batch.n_subhalos == 25 and batch.subhalos is not None and batch.theta_sub is not None
    assert float(batch.theta_sub[0]) == 0.0 and float(batch.theta_sub[1]) > 0.0
    with pytest.raises(ValueError, match="one subhalo count"):
        LensBatch.from_records([records[1], dataclasses.replace(records[1], subhalos=((0, 0),))])


def test_bad_parameters_are_rejected_with_the_reason() -> None:
    batch = batch_values()
    with pytest.raises(ValueError, match="gamma1 must have shape"):
        dataclasses.replace(batch, gamma1=torch.zeros(2, dtype=torch.float64))
    with pytest.raises(ValueError, match="lens_q is torch.float32"):
        dataclasses.replace(batch, lens_q=torch.ones(1))
    with pytest.raises(ValueError, match="both subhalos"):
        dataclasses.replace(batch, subhalos=torch.zeros(1, 3, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"subhalos must have shape \(N=1, K, 2\)"):
        dataclasses.replace(
            batch,
            subhalos=torch.zeros(1, 3, dtype=torch.float64),
            theta_sub=torch.zeros(1, dtype=torch.float64),
        )
    with pytest.raises(ValueError, match="supersampling"):
        RenderConfig(supersampling=0)

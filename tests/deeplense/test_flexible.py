"""The flexible smooth lens (deeplense.lensing.flexible): its bases, its exact Jacobian, and
a fit that recovers a lens it drew. Tiny grids (24 px), so every test takes well under a
second."""

import math
from dataclasses import replace

import pytest
import torch

from deeplense.lensing.flexible import (
    INDEX,
    LIMITS,
    NAMES,
    FlexibleConfig,
    FlexibleLens,
    clamp_parameters,
    design_matrix,
    gram_matrix,
    model_jacobian,
    normal_equations,
    shapelet_source,
    shapelets,
)
from deeplense.lensing.levenberg import jacobian, levenberg_marquardt
from tests.lenses import flexible_lenses

CONFIG = FlexibleConfig(
    image_size=24, pixel_scale=0.15, shapelet_order=3, light_sigmas=(0.1, 0.3, 0.9),
    supersampling=1,
)  # fmt: skip
UNREGULARISED = replace(CONFIG, source_ridge=0.0)  # the linear solve exact on a model image
PSF = torch.tensor([[0.05, 0.1, 0.05], [0.1, 0.4, 0.1], [0.05, 0.1, 0.05]], dtype=torch.float64)


def lens_parameters(n: int = 2) -> torch.Tensor:
    """(n, 13) elliptical, sheared, off-centre lenses (slightly different per image)."""
    theta = flexible_lenses(n)
    theta[:, INDEX["theta_e"]] += 0.05 * torch.arange(n)
    return theta


def coefficients(n: int = 2) -> torch.Tensor:
    """(n, K): bright lens light, a lopsided source, a small offset."""
    g = torch.Generator().manual_seed(0)
    coef = torch.rand(n, CONFIG.n_linear, generator=g, dtype=torch.float64) * 0.2
    coef[:, : len(CONFIG.light_sigmas)] = torch.tensor([0.5, 0.3, 0.1], dtype=torch.float64)
    coef[:, len(CONFIG.light_sigmas)] = 1.0  # the source's round part
    return coef


def render(theta: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
    """(n, 1, 24, 24) images the model draws."""
    design = design_matrix(theta, CONFIG, PSF)
    return (design @ coef.unsqueeze(2)).view(-1, 1, CONFIG.image_size, CONFIG.image_size)


def test_shapelets_are_orthonormal() -> None:
    step = 0.02
    axis = torch.arange(-4.0, 4.0, step, dtype=torch.float64)
    v, u = torch.meshgrid(axis, axis, indexing="ij")
    basis = shapelets(u[None], v[None], torch.tensor([0.7], dtype=torch.float64), 4)[0]
    flat = basis.flatten(1)  # (15, M)
    gram = flat @ flat.T * step * step
    assert torch.allclose(gram, torch.eye(15, dtype=torch.float64), atol=1e-6)


def test_shapelet_source_value_and_gradient_agree_with_autograd() -> None:
    g = torch.Generator().manual_seed(1)
    u = torch.randn(2, 50, generator=g, dtype=torch.float64).requires_grad_(True)
    v = torch.randn(2, 50, generator=g, dtype=torch.float64).requires_grad_(True)
    beta = torch.tensor([0.6, 1.1], dtype=torch.float64)
    coef = torch.randn(2, 10, generator=g, dtype=torch.float64)
    value, d_u, d_v = shapelet_source(u, v, beta, coef, 3)
    direct = (shapelets(u, v, beta, 3) * coef[:, :, None]).sum(dim=1)
    assert torch.allclose(value, direct, atol=1e-12)
    grad_u, grad_v = torch.autograd.grad(direct.sum(), (u, v))
    assert torch.allclose(d_u, grad_u, atol=1e-10) and torch.allclose(d_v, grad_v, atol=1e-10)


@pytest.mark.parametrize("scales", [(1.0,), (1.0, 3.0)])
def test_model_jacobian_equals_forward_mode_through_the_design(
    scales: tuple[float, ...],
) -> None:
    config = replace(CONFIG, source_scales=scales)
    theta = lens_parameters()
    coef = torch.rand(2, config.n_linear, generator=torch.Generator().manual_seed(2),
                      dtype=torch.float64)  # fmt: skip

    def model(t: torch.Tensor) -> torch.Tensor:
        return (design_matrix(t, config, PSF) @ coef.unsqueeze(2)).squeeze(2)

    exact = model_jacobian(theta, coef, config, PSF)  # (2, 576, 13)
    auto = jacobian(model, theta)
    assert exact.shape == (2, config.image_size**2, len(NAMES))
    assert torch.allclose(exact, auto, atol=1e-9 * auto.abs().max())


def test_linear_solve_reproduces_a_noiseless_image_of_the_model() -> None:
    theta, coef = lens_parameters(), coefficients()
    image = render(theta, coef)
    sigma = torch.full_like(image, 0.01)
    lens = FlexibleLens(UNREGULARISED)
    assert torch.allclose(lens.model_image(theta, image, sigma, PSF), image, atol=1e-8)
    assert lens.whitened_residual(theta, image, sigma, PSF).abs().max() < 1e-6
    # the ridge on the shapelets costs a small fraction of a sigma
    ridged = FlexibleLens(CONFIG).whitened_residual(theta, image, sigma, PSF)
    assert 0 < ridged.abs().max() < 0.05


def test_variable_projection_jacobian_is_exact_at_a_perfect_fit() -> None:
    """Kaufman's Jacobian drops a term proportional to the residual: at zero residual it
    equals the full derivative of the projected residual."""
    theta, coef = lens_parameters(), coefficients()
    image = render(theta, coef)
    sigma = torch.full_like(image, 0.01)
    lens = FlexibleLens(CONFIG)
    full = jacobian(lambda t: lens.whitened_residual(t, image, sigma, PSF), theta)
    projected = lens.jacobian(theta, image, sigma, PSF)
    assert torch.allclose(projected, full, atol=1e-4 * full.abs().max())


def test_masked_pixels_do_not_count() -> None:
    theta, coef = lens_parameters(), coefficients()
    image = render(theta, coef)
    sigma = torch.full_like(image, 0.01)
    sigma[:, :, :5] = math.inf  # a masked strip
    corrupted = image.clone()
    corrupted[:, :, :5] = 100.0
    lens = FlexibleLens(UNREGULARISED)
    residual = lens.whitened_residual(theta, corrupted, sigma, PSF)
    assert residual.abs().max() < 1e-6
    used = CONFIG.image_size * (CONFIG.image_size - 5)
    assert lens.degrees_of_freedom(sigma).tolist() == [used - CONFIG.n_linear - len(NAMES)] * 2


def test_levenberg_marquardt_recovers_the_lens_it_drew() -> None:
    truth, coef = lens_parameters(), coefficients()
    image = render(truth, coef)
    sigma = torch.full_like(image, 1e-3)
    lens = FlexibleLens(CONFIG)
    start = truth.clone()
    start[:, INDEX["theta_e"]] += 0.03
    start[:, INDEX["center_x"]] -= 0.02
    start[:, INDEX["mass_e1"]] -= 0.04

    def residual(t: torch.Tensor) -> torch.Tensor:
        return lens.whitened_residual(t, image, sigma, PSF)

    before = residual(start).pow(2).sum(dim=1)
    fit = levenberg_marquardt(
        residual, start, steps=15, linearise=lambda t: lens.jacobian(t, image, sigma, PSF)
    )
    assert (fit.cost < 1e-6 * before).all()
    for name in ("theta_e", "center_x", "mass_e1", "mass_e2", "slope"):
        assert torch.allclose(fit.theta[:, INDEX[name]], truth[:, INDEX[name]], atol=2e-3), name


def test_float32_bases_fit_as_float64_ones_do() -> None:
    """LensFit 2 draws its bases in float32 (`bases_dtype`) and keeps the Gram matrix, the
    solve, the image, the residual and the Jacobian's projection in float64: the same best
    lens to 1% of the noise and the same Jacobian to 1%, with LensFit 2's nested light
    Gaussians and two shapelet scales (condition number ~1e14). Measured here: 3e-4 of the
    noise and 2e-4; with the Gram summed in float32, 0.12 of the noise and 11%."""
    config = replace(CONFIG, light_sigmas=FlexibleConfig(24, 0.15).light_sigmas,
                     source_scales=(1.0, 3.0))  # fmt: skip
    g = torch.Generator().manual_seed(3)
    coef = torch.rand(2, config.n_linear, generator=g, dtype=torch.float64) * 0.2
    coef[:, :3] = torch.tensor([0.5, 0.3, 0.1], dtype=torch.float64)
    theta, noise = lens_parameters(), 0.01
    image = (design_matrix(theta, config, PSF) @ coef.unsqueeze(2)).view(-1, 1, 24, 24)
    image = image + noise * torch.randn(image.shape, generator=g, dtype=image.dtype)
    sigma = torch.full_like(image, noise)
    start = theta.clone()
    start[:, INDEX["theta_e"]] += 0.02
    exact, mixed = FlexibleLens(config), FlexibleLens(config, bases_dtype=torch.float32)
    fit = mixed.fit_linear(start, image, sigma, PSF)
    assert fit.design.dtype == torch.float32 and fit.coef.dtype == torch.float64
    model = mixed.model_image(start, image, sigma, PSF)
    assert model.dtype == torch.float64
    assert (model - exact.model_image(start, image, sigma, PSF)).abs().max() < 0.01 * noise
    full, drawn32 = (
        exact.jacobian(start, image, sigma, PSF),
        mixed.jacobian(start, image, sigma, PSF),
    )
    assert drawn32.dtype == torch.float64
    assert ((drawn32 - full).norm(dim=1) / full.norm(dim=1)).max() < 0.01


@pytest.mark.parametrize("name", sorted(LIMITS))
def test_parameters_are_held_within_their_limits(name: str) -> None:
    theta = lens_parameters(1).repeat(2, 1)
    lo, hi = LIMITS[name]
    theta[0, INDEX[name]], theta[1, INDEX[name]] = lo - 5.0, hi + 5.0
    held = clamp_parameters(theta)[:, INDEX[name]]
    assert held.tolist() == [lo, hi]


@pytest.mark.parametrize("stored_by_columns", [False, True])
def test_gram_matrix_is_the_exactly_symmetric_product(stored_by_columns: bool) -> None:
    g = torch.Generator().manual_seed(3)
    a = torch.randn(2, 23, 576, generator=g, dtype=torch.float64).transpose(1, 2)
    a = a if stored_by_columns else a.contiguous()  # (2, 576, 23): uneven row blocks
    gram = gram_matrix(a)
    assert torch.equal(gram, gram.transpose(1, 2))  # a BLAS a^T a is not, at this size
    torch.testing.assert_close(gram, a.transpose(1, 2) @ a, rtol=1e-13, atol=1e-12)


def test_gram_matrix_differentiates_as_the_product() -> None:
    a = torch.randn(2, 9, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(gram_matrix, (a,))


@pytest.mark.parametrize("stored_by_columns", [True, False])
def test_normal_equations_solve_and_absorb_as_their_dense_formulas(
    stored_by_columns: bool,
) -> None:
    design = design_matrix(lens_parameters(), UNREGULARISED, PSF)  # (2, 576, K), by columns
    design = design if stored_by_columns else design.contiguous()
    g = torch.Generator().manual_seed(4)
    x = torch.rand(2, design.shape[1], generator=g, dtype=torch.float64)
    weight = 1.0 + torch.rand(2, design.shape[1], generator=g, dtype=torch.float64)
    weight[:, :5] = 0.0  # masked pixels
    eq = normal_equations(design, x, weight, UNREGULARISED)
    a = design.contiguous() * weight.unsqueeze(2)  # the whitened design, row by row
    dense = a.transpose(1, 2) @ a + torch.diag_embed(eq.ridge)
    coef = torch.linalg.solve(dense, a.transpose(1, 2) @ (x * weight).unsqueeze(2))
    torch.testing.assert_close(eq.coefficients(), coef, rtol=1e-6, atol=1e-8)
    columns = torch.randn(2, design.shape[1], 3, generator=g, dtype=torch.float64)
    absorbed = a @ torch.linalg.solve(dense, a.transpose(1, 2) @ columns)
    torch.testing.assert_close(eq.absorbed(columns), absorbed, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(eq.combine(coef), design @ coef, rtol=1e-12, atol=1e-12)


def test_the_float32_loss_keeps_no_float64_design_for_its_backward() -> None:
    # LensFit 2's training loss: float32 data, bases in float32, autograd through the fit.
    # Saved for the backward pass: the whitened float64 design (the Gram matrix's
    # products), not a second float64 copy of the design (one per image in a batch).
    theta = lens_parameters().float().requires_grad_(True)
    image = render(lens_parameters(), coefficients()).float()
    sigma = torch.full_like(image, 0.01)
    lens = FlexibleLens(CONFIG)
    design_size = image.shape[0] * image[0].numel() * CONFIG.n_linear
    storages: set[int] = set()

    def pack(saved: torch.Tensor) -> torch.Tensor:
        if saved.dtype == torch.float64 and saved.untyped_storage().nbytes() >= 8 * design_size:
            storages.add(saved.untyped_storage().data_ptr())
        return saved

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda saved: saved):
        model = lens.model_image(theta, image, sigma, PSF.float())
    model.sum().backward()
    assert theta.grad is not None and torch.isfinite(theta.grad).all()
    assert len(storages) == 1

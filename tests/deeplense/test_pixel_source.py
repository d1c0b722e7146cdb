"""The pixelated source (deeplense.lensing.pixel_source, pixel_evidence): the lensing
operator puts a source pixel where its rays land, the evidence is the Gaussian marginal
likelihood and chooses the regularisation a source was drawn with, and a lens drawn with a
pixelated source fits to the noise. Tiny grids (32 px, 16 x 16 source pixels)."""

import math
from dataclasses import replace

import pytest
import torch

from deeplense.lensing.flexible import INDEX, FlexibleConfig, image_grid, source_plane
from deeplense.lensing.pixel_evidence import (
    best_lambda,
    fit_pixel_source,
    linear_system,
    solve_at,
)
from deeplense.lensing.pixel_source import (
    PixelSourceConfig,
    lensing_operator,
    pixel_design,
    regularisation_matrix,
    source_pixel_centres,
)
from tests.lenses import flexible_lenses

FLEX = FlexibleConfig(image_size=32, pixel_scale=0.1, light_sigmas=(0.1, 0.3, 0.9))
CONFIG = PixelSourceConfig(FLEX, source_pixels=16, half_width=0.8)
DELTA = torch.ones(1, 1, dtype=torch.float64)  # no PSF
PSF = torch.tensor([[0.05, 0.1, 0.05], [0.1, 0.4, 0.1], [0.05, 0.1, 0.05]], dtype=torch.float64)


@pytest.mark.parametrize("core", [None, 0.3])
def test_a_source_pixel_lights_the_image_pixels_its_rays_land_near(core: float | None) -> None:
    config = replace(CONFIG, core=core)
    theta = flexible_lenses(1)
    column = lensing_operator(theta[0], config, DELTA)  # (n*n, P*P)
    x, y = image_grid(FLEX, theta)
    bx, by = source_plane(theta, x, y)  # (1, m, m)
    fx = config.index(bx[0] - theta[0, INDEX["source_x"]])  # fractional grid index
    fy = config.index(by[0] - theta[0, INDEX["source_y"]])
    ss, n = FLEX.supersampling, FLEX.image_size
    for row, col in ((5, 7), (8, 8), (10, 4)):  # pixels near the grid's middle
        near = ((fx - col).abs() < 1.0) & ((fy - row).abs() < 1.0)
        pixels = near.view(n, ss, n, ss).any(dim=3).any(dim=1).flatten()  # (n*n,)
        assert pixels.any(), "the test needs a source pixel some ray reaches"
        assert torch.equal(column[:, row * 16 + col] > 0, pixels)


def test_the_stretched_grid_is_finer_at_the_centre_and_inverts() -> None:
    config = replace(CONFIG, core=0.2)
    offsets = config.offset(torch.arange(16, dtype=torch.float64))
    widths = offsets.diff()
    assert widths[7] < 0.6 * CONFIG.step and widths[0] > 1.5 * CONFIG.step  # finer centre
    assert float(offsets[-1] + widths[-1] / 2) == pytest.approx(0.8, rel=0.2)
    torch.testing.assert_close(config.index(offsets), torch.arange(16, dtype=torch.float64))


def test_bilinear_interpolation_is_exact_for_a_linear_source() -> None:
    theta = flexible_lenses(1)
    operator = lensing_operator(theta[0], CONFIG, DELTA)
    sx, sy = source_pixel_centres(theta, CONFIG)
    a, b, c = 0.3, 1.7, -0.9
    image = operator @ (a + b * sx[0] + c * sy[0])  # (n*n,)
    x, y = image_grid(FLEX, theta)
    bx, by = source_plane(theta, x, y)
    inner = CONFIG.half_width - CONFIG.step  # rays well inside the grid
    cx, cy = float(theta[0, INDEX["source_x"]]), float(theta[0, INDEX["source_y"]])
    inside = ((bx[0] - cx).abs() < inner) & ((by[0] - cy).abs() < inner)
    n, ss = FLEX.image_size, FLEX.supersampling
    all_inside = inside.view(n, ss, n, ss).all(dim=3).all(dim=1).flatten()
    expected = (a + b * bx[0] + c * by[0]).view(n, ss, n, ss).mean(dim=(1, 3)).flatten()
    assert all_inside.sum() > 20
    torch.testing.assert_close(image[all_inside], expected[all_inside], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind", ["curvature", "gradient"])
def test_regularisation_is_positive_definite_and_zero_only_for_no_source(kind: str) -> None:
    config = PixelSourceConfig(FLEX, source_pixels=6, regularisation=kind)  # type: ignore[arg-type]
    r = regularisation_matrix(config)
    torch.testing.assert_close(r, r.T)
    assert float(torch.linalg.eigvalsh(r).min()) > 1e-6
    ramp = torch.arange(36, dtype=torch.float64) % 6  # 0..5 along x, constant along y
    if kind == "curvature":  # only at the grid's edges (zero beyond): per row 1 and -6 at
        # its ends; per column of value v, -v at both ends
        assert float(ramp @ r @ ramp) == pytest.approx(6 * (1 + 36) + 2 * 55)
    else:  # per row 1 x 5 steps and -5 beyond; per column -v beyond its end
        assert float(ramp @ r @ ramp) == pytest.approx(6 * (5 + 25) + 55)


def _random_system(lam: float, seed: int = 0):  # type: ignore[no-untyped-def]
    """A small random linear problem: design (M, K) of 2 light, 9 source, 1 offset columns,
    data of a source drawn from the prior of strength `lam`, and noise."""
    g = torch.Generator().manual_seed(seed)
    config = PixelSourceConfig(
        FlexibleConfig(image_size=8, pixel_scale=0.1, light_sigmas=(0.1, 0.3)), source_pixels=3
    )
    design = torch.randn(40, config.n_linear, generator=g, dtype=torch.float64)
    sigma = 0.05 + 0.05 * torch.rand(40, generator=g, dtype=torch.float64)
    r = regularisation_matrix(config)
    z = torch.randn(config.n_source, generator=g, dtype=torch.float64)
    chol = torch.linalg.cholesky(lam * r)
    source = torch.linalg.solve_triangular(chol.T, z[:, None], upper=True)[:, 0]
    coef = torch.cat([torch.tensor([1.0, 0.5]), source, torch.tensor([0.1])]).double()
    x = design @ coef + sigma * torch.randn(40, generator=g, dtype=torch.float64)
    return design, x, sigma, config, r, float(torch.logdet(r))


def test_log_evidence_is_the_gaussian_marginal_likelihood() -> None:
    """Against log N(d; 0, C + A_s (lambda R)^-1 A_s^T + V A_f A_f^T), V -> infinity for the
    flat-prior light and offset: differences between two lambdas must agree."""
    design, x, sigma, config, r, logdet = _random_system(1.0)
    system = linear_system(design, x, 1.0 / sigma, config, r, logdet)
    kl, ks = config.n_light, config.n_source
    source = design[:, kl : kl + ks]
    flat = torch.cat([design[:, :kl], design[:, kl + ks :]], dim=1)

    def exact(lam: float) -> float:
        cov = torch.diag(sigma**2) + source @ torch.linalg.inv(lam * r) @ source.T
        cov = cov + 1e8 * flat @ flat.T
        dist = torch.distributions.MultivariateNormal(torch.zeros(40, dtype=torch.float64), cov)
        return float(dist.log_prob(x))

    ours = {lam: solve_at(system, math.log(lam)) for lam in (0.3, 3.0)}
    assert ours[0.3] is not None and ours[3.0] is not None
    difference = ours[3.0].log_evidence - ours[0.3].log_evidence
    assert difference == pytest.approx(exact(3.0) - exact(0.3), abs=1e-3)


def test_the_solution_minimises_chi2_plus_penalty() -> None:
    design, x, sigma, config, r, logdet = _random_system(1.0)
    system = linear_system(design, x, 1.0 / sigma, config, r, logdet)
    sol = solve_at(system, math.log(2.0))
    assert sol is not None
    kl, ks = config.n_light, config.n_source
    chi2 = float((((x - design @ sol.coef) / sigma) ** 2).sum())
    assert sol.chi2 == pytest.approx(chi2, rel=1e-8)
    s = sol.coef[kl : kl + ks]
    assert sol.penalty == pytest.approx(2.0 * float(s @ r @ s), rel=1e-8)
    for _ in range(5):  # any other coefficients cost more
        other = sol.coef + 1e-3 * torch.randn_like(sol.coef)
        t = other[kl : kl + ks]
        cost = float((((x - design @ other) / sigma) ** 2).sum()) + 2.0 * float(t @ r @ t)
        assert cost > sol.chi2 + sol.penalty


def _lensed(source: torch.Tensor, noise: float, seed: int) -> tuple[torch.Tensor, ...]:
    """An image (1, 1, n, n) of the test lens with light, `source` (P*P,) and offset."""
    theta = flexible_lenses(1)
    design = pixel_design(theta[0], CONFIG, PSF)
    coef = torch.cat([torch.tensor([0.2, 0.1, 0.05]), source, torch.tensor([0.01])])
    clean = (design @ coef.double()).view(1, 1, FLEX.image_size, FLEX.image_size)
    g = torch.Generator().manual_seed(seed)
    x = clean + noise * torch.randn(clean.shape, generator=g, dtype=torch.float64)
    return theta, x, torch.full_like(x, noise), clean


def _gaussian_source(width: float = 0.25) -> torch.Tensor:
    theta = flexible_lenses(1)
    sx, sy = source_pixel_centres(theta, CONFIG)
    cx, cy = theta[0, INDEX["source_x"]], theta[0, INDEX["source_y"]]
    return torch.exp(-0.5 * ((sx[0] - cx) ** 2 + (sy[0] - cy) ** 2) / width**2)


def test_a_smooth_source_gets_stronger_regularisation_than_a_rough_one() -> None:
    g = torch.Generator().manual_seed(3)
    rough = 0.5 * torch.rand(CONFIG.n_source, generator=g, dtype=torch.float64)
    lambdas = {}
    for name, source in (("smooth", _gaussian_source()), ("rough", rough)):
        theta, x, sigma, _ = _lensed(source, noise=0.01, seed=1)
        lambdas[name] = float(fit_pixel_source(theta, x, sigma, PSF, CONFIG).log_lambda[0])
    assert lambdas["smooth"] > lambdas["rough"] + math.log(10.0)


def test_the_evidence_finds_the_strength_a_source_was_drawn_with() -> None:
    """A source drawn from the prior N(0, (lambda0 R)^-1): the evidence-optimal lambda
    within a factor 2 of lambda0."""
    lam0 = 1e3
    r = regularisation_matrix(CONFIG)
    chol = torch.linalg.cholesky(lam0 * r)  # s = L^-T z has covariance (lam0 R)^-1
    z = torch.randn(
        CONFIG.n_source, generator=torch.Generator().manual_seed(5), dtype=torch.float64
    )
    source = torch.linalg.solve_triangular(chol.T, z[:, None], upper=True)[:, 0]
    theta, x, sigma, _ = _lensed(source, noise=0.002, seed=2)
    fit = fit_pixel_source(theta, x, sigma, PSF, CONFIG)
    assert abs(float(fit.log_lambda[0]) - math.log(lam0)) < math.log(2.0)


def test_a_lens_drawn_with_a_pixelated_source_fits_to_the_noise_and_a_wrong_one_does_not() -> None:
    theta, x, sigma, clean = _lensed(_gaussian_source(), noise=0.01, seed=4)
    fit = fit_pixel_source(theta, x, sigma, PSF, CONFIG)
    pixels = x.numel()
    assert 0.8 < float(fit.chi2[0]) / pixels < 1.05
    assert float((((fit.model - clean) / sigma) ** 2).mean()) < 0.3  # closer to the truth
    wrong = theta.clone()
    wrong[0, INDEX["theta_e"]] += 0.1  # a smooth lens of the wrong Einstein radius
    assert float(fit_pixel_source(wrong, x, sigma, PSF, CONFIG).chi2[0]) / pixels > 1.5


def test_best_lambda_is_the_evidence_maximum() -> None:
    design, x, sigma, config, r, logdet = _random_system(1.0)
    system = linear_system(design, x, 1.0 / sigma, config, r, logdet)
    best = best_lambda(system)
    assert abs(best.log_lambda - math.log(system.scale)) < 4.0 * math.log(10.0)  # inside
    for step in (-0.05, 0.05):
        near = solve_at(system, best.log_lambda + step)
        assert near is not None and near.log_evidence <= best.log_evidence + 1e-9

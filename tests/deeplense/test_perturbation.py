"""The subhalo test (deeplense.lensing.perturbation): its blobs deflect as point masses, its
templates are the first-order change of a lens drawn with a blob, it reads as noise for a
lens the smooth model draws, and it finds a blob drawn on an arc. Tiny grids (32 px)."""

import math
from dataclasses import replace

import pytest
import torch

from deeplense.lensing.flexible import (
    INDEX,
    MASS,
    NAMES,
    FlexibleConfig,
    FlexibleLens,
    design_matrix,
    image_grid,
    shapelet_source,
    source_plane,
    sub_pixel_grid,
    to_pixels,
)
from deeplense.lensing.perturbation import (
    PerturbationConfig,
    ProjectedTemplates,
    blob_deflection,
    blob_deflections,
    disc_centres,
    jacobian_bases,
    perturbation_test,
    templates,
)
from tests.lenses import flexible_lenses

CONFIG = FlexibleConfig(
    image_size=32, pixel_scale=0.1, shapelet_order=3, light_sigmas=(0.2, 0.6), supersampling=1
)
LENS = FlexibleLens(CONFIG)
PSF = torch.tensor([[0.05, 0.1, 0.05], [0.1, 0.4, 0.1], [0.05, 0.1, 0.05]], dtype=torch.float64)
NOISE = 0.01
# A strong ridge (its dof half the blobs'), so that the noise expectation must be the ridge's
TEST = PerturbationConfig(spacing=0.2, width=0.1, disc_radius=1.6, ridge=0.1)


def coefficients() -> torch.Tensor:
    """(1, K): no lens light, a round source with a lopsided part, no offset."""
    coef = torch.zeros(1, CONFIG.n_linear, dtype=torch.float64)
    k_light = len(CONFIG.light_sigmas)
    coef[0, k_light] = 1.0
    coef[0, k_light + 1 : k_light + 4] = torch.tensor([0.3, -0.2, 0.15], dtype=torch.float64)
    return coef


def draw(theta: torch.Tensor, coef: torch.Tensor, blob: tuple[float, float, float]) -> torch.Tensor:
    """(1, 1, 32, 32) the lensed source of coefficients coef (no light), its rays deflected
    further by a blob (x, y, theta_sub^2) of `TEST.width`."""
    x, y = image_grid(CONFIG, theta)
    bx, by = source_plane(theta, x, y)
    centre = torch.tensor([blob[:2]], dtype=torch.float64)
    ax, ay = blob_deflection(x[0], y[0], centre, TEST.width)
    p = theta[0]
    u = (bx - blob[2] * ax - p[INDEX["source_x"]]).flatten(1)
    v = (by - blob[2] * ay - p[INDEX["source_y"]]).flatten(1)
    k_light = len(CONFIG.light_sigmas)
    beta = torch.exp(p[INDEX["log_beta"]]).reshape(1)
    value, _, _ = shapelet_source(u, v, beta, coef[:, k_light:-1], CONFIG.shapelet_order)
    n = CONFIG.image_size
    return to_pixels(value.view(1, 1, n, n), CONFIG, PSF).view(1, 1, n, n)


def lens() -> torch.Tensor:
    return flexible_lenses(1, log_beta=math.log(0.3))


def test_a_blob_deflects_as_a_point_mass_beyond_a_few_widths_and_stays_finite() -> None:
    axis = torch.linspace(-1.0, 1.0, 41, dtype=torch.float64)
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    centre = torch.tensor([[0.0, 0.0]], dtype=torch.float64)
    ax, ay = blob_deflection(x, y, centre, 0.05)
    r2 = x * x + y * y
    far = r2 > (6 * 0.05) ** 2
    assert torch.allclose(ax[0][far], (x / r2)[far], rtol=1e-6)
    assert torch.allclose(ay[0][far], (y / r2)[far], rtol=1e-6)
    assert torch.isfinite(ax).all() and torch.isfinite(ay).all()
    # inside the core the deflection is the Gaussian's, r / (2 width^2), 0 at the centre
    px, py = (
        torch.tensor([[0.004]], dtype=torch.float64),
        torch.tensor([[0.003]], dtype=torch.float64),
    )
    inner = blob_deflection(px, py, centre, 0.05)
    assert math.isclose(inner[0].item(), 0.004 / (2 * 0.05**2), rel_tol=1e-2)
    assert math.isclose(inner[1].item(), 0.003 / (2 * 0.05**2), rel_tol=1e-2)
    centred = blob_deflection(x[:1, :1] * 0, y[:1, :1] * 0, centre, 0.05)
    assert centred[0].item() == 0.0 and centred[1].item() == 0.0


def off_centre_lens(cx: float, cy: float) -> torch.Tensor:
    """(13,) parameters, zero but the lens centre (arcsec)."""
    theta = torch.zeros(13, dtype=torch.float64)
    theta[INDEX["center_x"]], theta[INDEX["center_y"]] = cx, cy
    return theta


@pytest.mark.parametrize(
    "centres",
    [
        # the disc's lattice (2 px apart) about an off-grid lens centre, reaching past the field
        disc_centres(off_centre_lens(0.013, -0.027), PerturbationConfig(disc_radius=2.5)),
        torch.tensor([[0.9, 0.3], [0.13, -0.41], [-2.0, 1.7]], dtype=torch.float64),  # off it
    ],
)
def test_blob_deflections_drawn_once_and_shifted_equal_each_blob_drawn_directly(
    centres: torch.Tensor,
) -> None:
    grid = sub_pixel_grid(CONFIG, torch.float64, torch.device("cpu"))  # (32,), 0.1" apart
    y, x = torch.meshgrid(grid, grid, indexing="ij")
    ax, ay = blob_deflections(grid, centres, 0.1)
    bx, by = blob_deflection(x, y, centres, 0.1)
    assert ax.shape == (len(centres), 32, 32)
    torch.testing.assert_close(ax, bx, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(ay, by, rtol=1e-9, atol=1e-12)
    single = blob_deflections(grid, centres, 0.1, torch.float32)
    assert single[0].dtype == torch.float32
    torch.testing.assert_close(single[0], bx.float(), rtol=1e-5, atol=1e-5)


def test_projected_templates_equal_the_columns_projected_one_by_one() -> None:
    """b and the norms from the templates' products with the design, the basis and r equal
    those of the K columns projected densely (off the linear bases, then the basis), even for
    columns the bases absorb almost wholly."""
    theta = lens()
    g = torch.Generator().manual_seed(6)
    n = CONFIG.image_size
    x = torch.rand(1, 1, n, n, generator=g, dtype=torch.float64)
    sigma = torch.full_like(x, NOISE)
    sigma[..., :3, :] = math.inf
    equations = LENS.fit_linear(theta, x, sigma, PSF).equations
    weight = equations.weight[0, :, 0]  # (M,)
    design = equations.design[0]  # (M, B)
    mixed = design @ torch.randn(design.shape[1], 5, generator=g, dtype=torch.float64)
    rows = torch.cat([torch.randn(4, n * n, generator=g, dtype=torch.float64), mixed.T]) * weight
    rows[-1] += 1e-3 * torch.randn(n * n, generator=g, dtype=torch.float64) * weight
    spread = torch.randn(n * n, 3, generator=g, dtype=torch.float64) * weight[:, None]
    basis, _ = torch.linalg.qr(spread)  # (M, 3)
    r = torch.randn(n * n, generator=g, dtype=torch.float64) * weight
    r = r - basis @ (basis.T @ r)
    projected = ProjectedTemplates.of(rows, equations, basis, r)
    columns = rows.T - equations.absorbed(rows.T[None])[0]
    columns = columns - basis @ (basis.T @ columns)  # (M, K)
    torch.testing.assert_close(projected.b, columns.T @ r, rtol=1e-8, atol=1e-10)
    # to |g|^2's rounding: the norms of absorbed columns are differences of nearly equal terms
    scale = rows.square().sum(dim=1)  # (K,) |g_k|^2
    assert float((columns.square().sum(dim=0) / scale)[4:].max()) < 1e-5  # nearly absorbed
    error = (projected.norms - columns.square().sum(dim=0)).abs() / scale
    assert float(error.max()) < 1e-12
    torch.testing.assert_close(projected.dense(), columns, rtol=1e-8, atol=1e-10)
    picked = torch.tensor([4, 1])
    torch.testing.assert_close(projected.columns(picked), columns[:, picked], rtol=1e-8, atol=1e-10)


def test_templates_are_the_first_order_change_of_a_lens_drawn_with_a_blob() -> None:
    theta, coef = lens(), coefficients()
    centres = torch.tensor([[0.9, 0.3], [-0.5, -0.8]], dtype=torch.float64)
    g = templates(LENS, theta, coef, PSF, centres, TEST.width)  # (1, M, 2)
    plain = draw(theta, coef, (0.0, 0.0, 0.0)).flatten()
    for k, (cx, cy) in enumerate(centres.tolist()):
        h = 1e-5
        change = (draw(theta, coef, (cx, cy, h)).flatten() - plain) / h
        assert change.abs().max() > 1e-2  # the blob sits where the source is seen
        assert torch.allclose(g[0, :, k], change, atol=1e-4 * change.abs().max())


@pytest.mark.parametrize(("miss", "counted"), [(0.0, MASS), (0.01, MASS), (0.0, NAMES)])
def test_a_lens_the_smooth_model_draws_reads_as_noise_even_slightly_misfitted(
    miss: float, counted: tuple[str, ...]
) -> None:
    """Tested at the true lens and at one 0.01" off in Einstein radius and centre: the
    residual of an unconverged lens lies along the Jacobian, which the blob tests remove
    (without that the off lens read as 130 sigma) and the tension measures (8 dof at the
    truth, the mass's parameters; 13 when it counts all; about 2,300 off)."""
    theta, coef = lens(), coefficients()
    test = replace(TEST, tension_of=counted)
    fitted = theta.clone()
    fitted[0, INDEX["theta_e"]] += miss
    fitted[0, INDEX["center_x"]] += miss
    clean = draw(theta, coef, (0.0, 0.0, 0.0))
    sigma = torch.full_like(clean, NOISE)
    g = torch.Generator().manual_seed(3)
    excess, tension = [], []
    for _ in range(20):
        x = clean + NOISE * torch.randn(clean.shape, generator=g, dtype=torch.float64)
        found = perturbation_test(LENS, fitted, x, sigma, PSF, test)
        excess.append(found.excess)
        tension.append(found.tension)
    values = torch.tensor(excess)
    assert abs(float(values.mean())) < 0.6  # the noise expectation is the ridge's dof
    assert 0.4 < float(values.std()) < 2.0
    mean_tension = sum(tension) / len(tension)
    if miss > 0.0:
        assert mean_tension > 500.0
    elif counted == MASS:
        assert 5.0 < mean_tension < 11.5  # chi-square of 8 dof: mean 8, its error 0.9
    else:
        assert 9.0 < mean_tension < 18.0  # chi-square of 13 dof: mean 13, its error 1.1


def test_the_tension_leaves_out_what_the_source_and_light_explain() -> None:
    """A lens with light fitted with the light's ellipticity 0.1 off: the residual lies
    along it, which all 13 parameters' tension counts (hundreds) and the mass's does not
    (noise: 8 dof); the two bases span the Jacobian, the mass's part orthogonal to the rest."""
    theta, coef = lens(), coefficients()
    coef[0, 0] = 3.0  # lens light: the first Gaussian
    fitted = theta.clone()
    fitted[0, INDEX["light_e1"]] += 0.1
    n = CONFIG.image_size
    clean = (design_matrix(theta, CONFIG, PSF) @ coef[:, :, None]).view(1, 1, n, n)
    sigma = torch.full_like(clean, NOISE)
    g = torch.Generator().manual_seed(6)
    x = clean + NOISE * torch.randn(clean.shape, generator=g, dtype=torch.float64)
    assert TEST.tension_of == MASS  # the default
    whole = perturbation_test(LENS, fitted, x, sigma, PSF, replace(TEST, tension_of=NAMES))
    of_mass = perturbation_test(LENS, fitted, x, sigma, PSF, TEST)
    assert whole.tension > 200.0 and of_mass.tension < 30.0
    assert math.isclose(whole.scan, of_mass.scan, rel_tol=1e-6)  # the blobs: the same span
    jac = LENS.jacobian(fitted, x, sigma, PSF).double()[0]  # (M, 13)
    basis, counted = jacobian_bases(jac, MASS)
    assert basis.shape == (jac.shape[0], 13) and counted.shape == (jac.shape[0], len(MASS))
    torch.testing.assert_close(basis.T @ basis, torch.eye(13, dtype=torch.float64))
    torch.testing.assert_close(counted, basis[:, -len(MASS) :])
    spanned = jac - basis @ (basis.T @ jac)
    assert float(spanned.abs().max()) < 1e-8 * float(jac.abs().max())
    with pytest.raises(ValueError, match="tension_of names lens parameters"):
        PerturbationConfig(tension_of=("theta_e", "mass"))


def test_a_parameter_that_changes_nothing_adds_no_direction_to_the_tension() -> None:
    """A parameter held at its limit has a zero Jacobian column, another may repeat one: the
    bases leave them out (a plain QR gave each an arbitrary unit direction, counted as noise
    that rounding chose: the service and the CLI disagreed by 0.1% on a tiny model)."""
    g = torch.Generator().manual_seed(7)
    jac = torch.randn((400, 13), generator=g, dtype=torch.float64)
    jac[:, INDEX["slope"]] = 0.0  # held at its limit
    jac[:, INDEX["gamma2"]] = 3.0 * jac[:, INDEX["source_x"]]  # nothing the others lack
    basis, counted = jacobian_bases(jac, MASS)
    assert basis.shape == (400, 11) and counted.shape == (400, len(MASS) - 2)
    torch.testing.assert_close(basis.T @ basis, torch.eye(11, dtype=torch.float64))
    assert float((jac - basis @ (basis.T @ jac)).abs().max()) < 1e-10
    whitened = torch.randn(400, generator=g, dtype=torch.float64)
    tension = float((counted.T @ whitened).square().sum())
    rest = basis[:, : 11 - counted.shape[1]]
    both = float((basis.T @ whitened).square().sum()) - float((rest.T @ whitened).square().sum())
    assert math.isclose(tension, both, rel_tol=1e-9)  # the gain beyond the others'


def test_a_blob_on_an_arc_is_found_at_many_sigma() -> None:
    theta, coef = lens(), coefficients()
    clean = draw(theta, coef, (0.9, 0.3, 0.01))  # theta_sub 0.1"
    sigma = torch.full_like(clean, NOISE)
    g = torch.Generator().manual_seed(4)
    x = clean + NOISE * torch.randn(clean.shape, generator=g, dtype=torch.float64)
    found = perturbation_test(LENS, theta, x, sigma, PSF, TEST)
    assert found.excess > 10.0
    assert found.scan > 50.0
    assert found.blobs == len(disc_centres(theta[0], TEST))
    assert math.dist(found.best, (0.9, 0.3)) < 0.25  # a grid point near the blob
    assert 0.006 < found.amplitude < 0.014  # theta_sub^2 = 0.01 arcsec^2
    assert math.isclose(found.imaging_gain, found.tension + found.scan)
    # what the service reports: the blob's pixel on the image (x along columns, y along rows;
    # the drawn blob at (0.9, 0.3)" sits at column 24.5, row 18.5 of 32 px of 0.1")
    findings = found.findings(CONFIG.image_size, CONFIG.pixel_scale)
    assert math.dist((findings["blob_column"], findings["blob_row"]), (24.5, 18.5)) < 2.5
    assert (findings["blob_x_arcsec"], findings["blob_y_arcsec"]) == found.best
    assert findings["tension"] + findings["blob_gain"] == found.imaging_gain
    assert 0.08 < findings["blob_theta_sub_arcsec"] < 0.12  # theta_sub 0.1"


@pytest.mark.parametrize("radius", [0.0, 1.6])
def test_no_blob_means_no_evidence(radius: float) -> None:
    theta, coef = lens(), coefficients()
    x = draw(theta, coef, (0.0, 0.0, 0.0))
    dark = PerturbationConfig(lit_sigma=1e9, disc_radius=radius, spacing=10.0)
    found = perturbation_test(LENS, theta, x, torch.full_like(x, NOISE), PSF, dark)
    if radius == 0.0:
        assert found.blobs == 0 and found.excess == 0.0 and found.scan == 0.0
        findings = found.findings(CONFIG.image_size, CONFIG.pixel_scale)
        assert math.isnan(findings["blob_column"]) and math.isnan(findings["blob_x_arcsec"])
        assert findings["blob_theta_sub_arcsec"] == 0.0 and findings["blob_gain"] == 0.0
    else:
        assert found.blobs == 1  # the grid's one point within the disc: the lens centre


def test_the_gain_map_is_the_part_of_the_residual_the_gain_counts_and_shows_the_blob() -> None:
    """imaging_gain's map (what the service shows and sums): its sum of squares is tension +
    scan, masked pixels (infinite sigma) are zero in it, and its brightest pixel lies by
    the blob."""
    theta, coef = lens(), coefficients()
    clean = draw(theta, coef, (0.9, 0.3, 0.01))
    sigma = torch.full_like(clean, NOISE)
    sigma[..., :4, :] = math.inf  # four masked rows
    g = torch.Generator().manual_seed(5)
    x = clean + NOISE * torch.randn(clean.shape, generator=g, dtype=torch.float64)
    found = perturbation_test(LENS, theta, x, sigma, PSF, TEST)
    assert found.gain_map is not None and found.gain_map.shape == (CONFIG.image_size**2,)
    gain = float(found.gain_map.square().sum())
    assert math.isclose(gain, found.imaging_gain, rel_tol=1e-9)
    m = found.gain_map.view(CONFIG.image_size, CONFIG.image_size)
    assert float(m[:4].abs().max()) == 0.0
    gx, gy = image_grid(CONFIG, theta)
    k = int(m.abs().flatten().argmax())
    assert math.dist((float(gx.flatten()[k]), float(gy.flatten()[k])), (0.9, 0.3)) < 0.4

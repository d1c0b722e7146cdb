"""Analytic lens and light profiles, vectorised over coordinate arrays.

Conventions (the same as lenstronomy's, so the two can be checked against each other):
angles in arcsec; x along image axis 1 (columns), y along axis 0 (rows); a deflection is
returned as (alpha_x, alpha_y) and the lens equation is beta = theta - alpha(theta).
Elliptical profiles use the circularised radius R = sqrt(q x'^2 + y'^2 / q), x' along the
major axis at angle `phi` (radians, counter-clockwise from +x), q = minor / major axis ratio.
"""

import numpy as np

# lenstronomy floors radii at these values; we do the same so both agree at the centre.
_SIS_R_MIN = 1e-15  # arcsec
_POINT_MASS_R2_MIN = 1e-50  # arcsec^2
_SERSIC_R_MIN = 1e-4  # arcsec (lenstronomy's Sersic `smoothing`)


def sis_deflection(
    x: np.ndarray, y: np.ndarray, theta_e: float, center: tuple[float, float] = (0.0, 0.0)
) -> tuple[np.ndarray, np.ndarray]:
    """Singular isothermal sphere: |alpha| = theta_e everywhere, pointing to the centre."""
    dx = x - center[0]
    dy = y - center[1]
    f = theta_e / np.maximum(np.hypot(dx, dy), _SIS_R_MIN)
    return f * dx, f * dy


def shear_deflection(
    x: np.ndarray, y: np.ndarray, gamma1: float, gamma2: float
) -> tuple[np.ndarray, np.ndarray]:
    """External shear (zero deflection at the origin): alpha = [[g1, g2], [g2, -g1]] @ (x, y)."""
    return gamma1 * x + gamma2 * y, gamma2 * x - gamma1 * y


def shear_components(gamma: float, angle: float) -> tuple[float, float]:
    """(gamma1, gamma2) of a shear of magnitude `gamma` whose axis lies at `angle` radians."""
    return gamma * float(np.cos(2.0 * angle)), gamma * float(np.sin(2.0 * angle))


def point_mass_deflection(
    x: np.ndarray, y: np.ndarray, theta_e: float, positions: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Sum of equal point masses: alpha = theta_e^2 (theta - theta_k) / |theta - theta_k|^2.

    `positions` is (K, 2) arcsec. Exact, O(K * x.size): the renderer uses
    `training.lensing.grid.point_mass_deflection_grid` instead, which agrees to 1e-4 arcsec.
    """
    ax = np.zeros(np.shape(x))
    ay = np.zeros(np.shape(x))
    t2 = theta_e * theta_e
    for px, py in np.asarray(positions, dtype=np.float64).reshape(-1, 2):
        dx = x - px
        dy = y - py
        f = t2 / np.maximum(dx * dx + dy * dy, _POINT_MASS_R2_MIN)
        ax += f * dx
        ay += f * dy
    return ax, ay


def sersic_b(n: float) -> float:
    """Sersic b_n such that R_eff encloses half the light (lenstronomy's approximation)."""
    return max(1.9992 * n - 0.3271, 1e-5)


def phi_q_to_e1e2(phi: float, q: float) -> tuple[float, float]:
    """Orientation (radians) and axis ratio to lenstronomy's ellipticity moduli (e1, e2)."""
    e = (1.0 - q) / (1.0 + q)
    return e * float(np.cos(2.0 * phi)), e * float(np.sin(2.0 * phi))


def sersic(
    x: np.ndarray,
    y: np.ndarray,
    r_eff: float,
    n: float,
    q: float = 1.0,
    phi: float = 0.0,
    center: tuple[float, float] = (0.0, 0.0),
) -> np.ndarray:
    """Elliptical Sersic surface brightness, 1 at the half-light radius `r_eff` (arcsec).

    I(R) = exp(-b_n ((R / r_eff)^(1/n) - 1)); r_eff is the circularised (product-average)
    half-light radius, as lenstronomy's SERSIC_ELLIPSE. The output has the dtype of x.
    """
    e1, e2 = phi_q_to_e1e2(phi, q)
    norm = np.sqrt(max(abs(1.0 - e1 * e1 - e2 * e2), 1e-6))
    dtype = np.result_type(x, y)
    dx = x - dtype.type(center[0])
    dy = y - dtype.type(center[1])
    # Rotation and stretch folded into one 2x2 matrix (lenstronomy's product-average form).
    a, b, c = (1.0 - e1) / norm, -e2 / norm, (1.0 + e1) / norm
    u = dtype.type(a) * dx + dtype.type(b) * dy
    v = dtype.type(b) * dx + dtype.type(c) * dy
    r2 = u * u + v * v
    r2 = np.maximum(r2, dtype.type(_SERSIC_R_MIN**2), out=r2)
    r2 *= dtype.type(1.0 / (r_eff * r_eff))
    # (R / r_eff)^(1/n) = (R^2 / r_eff^2)^(1/(2n)); a cube root is ~10x faster than a power.
    cube_root = abs(n - 1.5) < 1e-12
    s = np.cbrt(r2, out=r2) if cube_root else np.power(r2, dtype.type(0.5 / n), out=r2)
    bn = dtype.type(sersic_b(n))
    s *= -bn
    s += bn
    return np.exp(s, out=s)

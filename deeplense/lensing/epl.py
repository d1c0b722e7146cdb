"""Deflection of an elliptical power-law mass (EPL), lenstronomy's convention, in torch.

Convergence kappa = (3 - gamma) / 2 * (theta_e / R)^(gamma - 1), R = sqrt(q x'^2 + y'^2 / q)
in the frame of the major axis (angle phi from +x): gamma = 2 is the singular isothermal
ellipsoid, and at q = 1 the SIS (gamma 2) or a power-law sphere of Einstein radius theta_e.
The deflection is Tessore & Metcalf (2015)'s closed form, eq. (22)-(23), with its
hypergeometric function summed as a series (their eq. 29), as lenstronomy's EPL_NUMBA:
alpha = 2 b / (1 + q) (b / R_q)^(t - 1) e^(i psi) 2F1(1, t/2; 2 - t/2; -f e^(2 i psi)),
b = theta_e sqrt(q), t = gamma - 1, f = (1 - q) / (1 + q), R_q e^(i psi) = q x' + i y'.
The series' terms shrink as f^n, so it is summed until f^n < 1e-16 (35 terms at q = 0.5).

Angles in arcsec, `phi` in radians counter-clockwise from +x; differentiable in every
parameter (torch complex arithmetic), float32 or float64.
"""

import math

import torch
from torch import Tensor

_R_MIN = 1e-9  # arcsec, lenstronomy's floor of the elliptical radius
_TOLERANCE = 1e-16  # the series stops when f^n falls below this
_MAX_TERMS = 200


def _series_terms(q: Tensor) -> int:
    """Terms of the series for the most elliptical of `q`: f^n < 1e-16, f = (1-q)/(1+q)."""
    q = q.detach()  # a number, not a derivative: no forward-mode operations for it
    f = float(((1.0 - q) / (1.0 + q)).abs().max())
    if f < _TOLERANCE:
        return 1
    return min(_MAX_TERMS, int(math.log(_TOLERANCE) / math.log(f)) + 2)


def _column(t: Tensor) -> Tensor:
    return t.reshape(-1, *([1] * 2))


def _major_axis_frame(
    x: Tensor, y: Tensor, phi: Tensor, center_x: Tensor | None, center_y: Tensor | None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """cos phi, sin phi (N, 1, 1) and the offsets from the centre along the major axis and
    across it, (N, H, W) arcsec."""
    dx = x if center_x is None else x - _column(center_x)
    dy = y if center_y is None else y - _column(center_y)
    cos, sin = _column(torch.cos(phi)), _column(torch.sin(phi))
    return cos, sin, cos * dx + sin * dy, -sin * dx + cos * dy


def epl_deflection(
    x: Tensor,
    y: Tensor,
    theta_e: Tensor,
    gamma: Tensor,
    q: Tensor,
    phi: Tensor,
    center_x: Tensor | None = None,
    center_y: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """(alpha_x, alpha_y), each (N, H, W) arcsec, of N EPL lenses at positions x, y.

    `x`, `y` are arcsec, broadcastable to (N, H, W); `theta_e` (arcsec), `gamma` (the
    3-D density slope, 2 isothermal, in (1, 3)), `q` (minor / major, in (0, 1]), `phi`
    (major-axis angle, radians) and the centre (arcsec, default the origin) are (N,).
    lenstronomy's EPL(theta_E, gamma, e1, e2) with (e1, e2) = (1-q)/(1+q) (cos 2 phi, sin 2 phi).
    """
    cos, sin, xr, yr = _major_axis_frame(x, y, phi, center_x, center_y)
    qc, t = _column(q), _column(gamma) - 1.0
    b = _column(theta_e) * torch.sqrt(qc)
    z = torch.complex(qc * xr, yr.expand_as(qc * xr))  # R_q e^(i psi)
    r = torch.abs(z).clamp_min(_R_MIN)
    unit = z / r  # e^(i psi)
    ratio = -(1.0 - qc) / (1.0 + qc) * unit * unit  # -f e^(2 i psi)
    # the terms' ratios (2n - 2 + t) / (2n + 2 - t), n = 1.., in one operation: under forward
    # mode each operation mixing t with a constant costs a Python-level zero tangent, so
    # one per term was most of the Jacobian's time
    n = 2.0 * torch.arange(1, _series_terms(q), dtype=t.dtype, device=t.device)  # 2n
    ratios = ((n - 2.0) + t[..., None]) / ((n + 2.0) - t[..., None])  # (N, 1, 1, terms - 1)
    term = unit
    total = unit
    for r_n in ratios.unbind(dim=-1):
        term = term * r_n * ratio
        total = total + term
    alpha = (2.0 * b / (1.0 + qc)) * torch.pow(b / r, t - 1.0) * total
    ax, ay = alpha.real, alpha.imag  # major-axis frame
    return cos * ax - sin * ay, sin * ax + cos * ay


def epl_hessian(
    x: Tensor,
    y: Tensor,
    alpha_x: Tensor,
    alpha_y: Tensor,
    theta_e: Tensor,
    gamma: Tensor,
    q: Tensor,
    phi: Tensor,
    center_x: Tensor | None = None,
    center_y: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """(f_xx, f_xy, f_yy), each (N, H, W): the second derivatives of the lensing potential
    of N EPL lenses at x, y, from their deflection there (`epl_deflection`'s, same
    arguments), with no further series: Tessore & Metcalf (2015), in the major axis's frame
    with z = x' + i y', convergence kappa = (2 - t) / 2 (b / R)^t and complex shear
    -kappa z / z* + (1 - t) alpha / z*, t = gamma - 1; the shear turned back by e^(2 i phi).
    Undefined at the centre itself (z = 0), where the power law is singular."""
    cos, sin, xr, yr = _major_axis_frame(x, y, phi, center_x, center_y)
    ar, ai = cos * alpha_x + sin * alpha_y, -sin * alpha_x + cos * alpha_y
    qc, t = _column(q), _column(gamma) - 1.0
    b = _column(theta_e) * torch.sqrt(qc)
    big_r = torch.sqrt(qc * qc * xr * xr + yr * yr).clamp_min(_R_MIN)
    kappa = (2.0 - t) / 2.0 * torch.pow(b / big_r, t)
    r2 = (xr * xr + yr * yr).clamp_min(_R_MIN**2)
    # z / z* = z^2 / |z|^2 and alpha / z* = alpha z / |z|^2, in real arithmetic
    shear_r = (-kappa * (xr * xr - yr * yr) + (1.0 - t) * (ar * xr - ai * yr)) / r2
    shear_i = (-kappa * (2.0 * xr * yr) + (1.0 - t) * (ar * yr + ai * xr)) / r2
    cos2, sin2 = cos * cos - sin * sin, 2.0 * sin * cos  # e^(2 i phi)
    g1, g2 = cos2 * shear_r - sin2 * shear_i, sin2 * shear_r + cos2 * shear_i
    return kappa + g1, g2, kappa - g1


__all__ = ["epl_deflection", "epl_hessian"]

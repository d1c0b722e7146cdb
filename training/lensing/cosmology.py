"""Distance ratios that set the Einstein radius and the angular sizes of Model B's galaxies.

Cosmology: astropy's FlatLambdaCDM(H0=70 km/s/Mpc, Om0=0.3), no radiation (Tcmb0=0).
astropy.cosmology takes about a second to import, so it is imported on first use only.
"""

from functools import lru_cache
from typing import Any

COSMOLOGY_NAME = "FlatLambdaCDM(H0=70, Om0=0.3, Tcmb0=0)"


@lru_cache(maxsize=1)
def cosmology() -> Any:
    """The one cosmology the simulator uses (an astropy FlatLambdaCDM)."""
    from astropy.cosmology import FlatLambdaCDM

    return FlatLambdaCDM(H0=70.0, Om0=0.3)


def lensing_ratio(z_lens: float, z_source: float) -> float:
    """D_ls / D_s of angular diameter distances: (D_C(z_s) - D_C(z_l)) / D_C(z_s) when flat."""
    if not 0 <= z_lens < z_source:
        raise ValueError(f"need 0 <= z_lens < z_source, got {z_lens}, {z_source}")
    d_l, d_s = cosmology().comoving_distance([z_lens, z_source]).value
    return float((d_s - d_l) / d_s)


def angular_diameter_distance(z: float) -> float:
    """D_A(z) in Mpc."""
    return float(cosmology().angular_diameter_distance(z).value)


def einstein_radius(
    z_lens: float, z_source: float, theta_ref: float = 1.2, z_ref: tuple[float, float] = (0.5, 1.0)
) -> float:
    """Einstein radius (arcsec) of a singular isothermal sphere of fixed velocity dispersion.

    theta_E = 4 pi (sigma_v / c)^2 D_ls / D_s, normalised so that a lens at z_ref[0] and a
    source at z_ref[1] give `theta_ref`.
    """
    if (z_lens, z_source) == tuple(z_ref):
        return theta_ref
    return theta_ref * lensing_ratio(z_lens, z_source) / lensing_ratio(*z_ref)


def angular_size(size_ref: float, z: float, z_ref: float) -> float:
    """Angular size (arcsec) at redshift z of an object that measures `size_ref` at z_ref."""
    if z == z_ref:
        return size_ref
    return size_ref * angular_diameter_distance(z_ref) / angular_diameter_distance(z)

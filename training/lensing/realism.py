"""Model R's departures from Model A: what they draw (specs), and each image's draws.

Each spec group changes one part of the image; `RealismSpec` holds those in play (None:
Model A's). The draws come after every draw of Model A's (lens, source, subhalos) from the
same parameter stream, so a departure image has Model A's lens, source position and
subhalos at the same seed: the sets are paired with Model A image by image.

- Mass (`MassSpec`): an elliptical power law (EPL; `deeplense.lensing.epl`) of slope gamma
  (2 = isothermal), axis ratio q and major-axis angle U[0, pi), its centre offset by a radius
  from the optical axis at a random azimuth; the external shear, the subhalos and the lens
  light move with that centre. theta_e stays Model A's (lenstronomy's EPL theta_E).
- Lens light (`LensLightSpec`): a Sersic of drawn n, R_eff and axis ratio, and with some
  probability a second, extended and fainter, component (an envelope) at the same centre.
- PSF (`PsfSpec`): per image a Gaussian or a Moffat (`deeplense.lensing.psf`), its FWHM a
  drawn multiple of the instrument's nominal FWHM (SimConfig.psf_sigma * 2.3548).
- Source (`SourceSpec`): a morphology drawn from `SOURCE_KINDS`; the host Sersic (Model
  A's source fields) is kept, resized and rescaled in brightness, and compact or extended
  components are added (`RealParams.source_components`), all procedural:
  sersic: the host alone; knots: the host plus 2-4 compact star-forming knots;
  clumpy: a fainter exponential disc plus 4-8 clumps; disc: an exponential disc plus a de
  Vaucouleurs bulge (and 0-3 faint knots); irregular: the host plus 2-4 extended offset
  lobes (a merger's or tidal shape); galaxy: a composite of them (disc, bulge, knots, a lobe),
  the stand-in for a real galaxy image (no package we depend on ships licensed galaxy
  images offline: GalSim's COSMOS sample is a download; docs/model_r.md).
Lengths in arcsec, angles in radians; source components' positions in the source plane.
"""

import math
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

from deeplense.instrument import FWHM_PER_SIGMA

if TYPE_CHECKING:
    from training.lensing.render import LensParams

Range = tuple[float, float]
SOURCE_KINDS = ("sersic", "knots", "clumpy", "disc", "irregular", "galaxy")
PSF_KINDS = ("gaussian", "moffat")
# One source component: (x, y, r_eff, n, q, phi, intensity at R_eff in counts/s/pixel)
COMPONENT_FIELDS = ("x", "y", "r_eff", "n", "q", "phi", "intensity")


@dataclass(frozen=True)
class MassSpec:
    """EPL slope gamma, axis ratio, centre offset radius (arcsec); uniform draws."""

    slope: Range = (2.0, 2.0)
    q: Range = (0.5, 1.0)
    centre_offset: Range = (0.0, 0.0)


@dataclass(frozen=True)
class LensLightSpec:
    """The lens light's Sersic (n, R_eff arcsec, q, intensity at R_eff in counts/s/pixel;
    q None: Model A's draw), and a second component with probability `second`, its R_eff and
    intensity relative to the first's."""

    n: Range = (2.0, 4.0)
    r_eff: Range = (0.3, 0.8)
    q: Range | None = None
    intensity: Range | None = None  # None: Model A's 1.2
    second: float = 0.0
    second_n: Range = (0.5, 1.5)
    second_r_eff_ratio: Range = (1.5, 3.0)
    second_intensity_ratio: Range = (0.05, 0.3)
    second_q: Range = (0.5, 1.0)


@dataclass(frozen=True)
class PsfSpec:
    """FWHM as a multiple of the nominal one; Moffat with probability `moffat`, its beta."""

    fwhm_factor: Range = (1.2, 1.2)
    moffat: float = 0.0
    beta: Range = (2.5, 5.0)

    @property
    def fixed_gaussian(self) -> bool:
        """Whether every image has the same Gaussian PSF (a per-dataset instrument)."""
        return self.moffat == 0 and self.fwhm_factor[0] == self.fwhm_factor[1]


@dataclass(frozen=True)
class SourceSpec:
    """Morphologies and their weights; the host's R_eff and intensity multiplied by drawn
    factors; the host's Sersic index (None: Model A's 1.5)."""

    kinds: tuple[tuple[str, float], ...] = (("knots", 1.0),)
    size_factor: Range = (1.0, 1.0)
    brightness_factor: Range = (1.0, 1.0)
    host_n: Range | None = None


@dataclass(frozen=True)
class RealismSpec:
    """The departures in play (None: Model A's)."""

    mass: MassSpec | None = None
    lens_light: LensLightSpec | None = None
    psf: PsfSpec | None = None
    source: SourceSpec | None = None


@dataclass(frozen=True)
class RealParams:
    """One image's departures from Model A (defaults: none). parameters.csv holds the
    scalar fields; `source_components` goes to source_components.csv."""

    mass_slope: float = 2.0  # EPL gamma (2: isothermal)
    mass_q: float = 1.0  # mass axis ratio
    mass_phi: float = 0.0  # mass major-axis angle, radians
    lens_x: float = 0.0  # lens centre (mass and light), arcsec
    lens_y: float = 0.0
    lens2_intensity: float = 0.0  # second lens-light component at its R_eff; 0: none
    lens2_r_eff: float = 1.0
    lens2_n: float = 1.0
    lens2_q: float = 1.0
    lens2_phi: float = 0.0
    psf: str = "gaussian"  # PSF_KINDS
    psf_fwhm: float = 0.0  # arcsec; 0: the instrument's (SimConfig.psf_sigma)
    psf_beta: float = 0.0  # Moffat beta; 0 for a Gaussian
    source_kind: str = "sersic"  # SOURCE_KINDS
    source_components: tuple[tuple[float, ...], ...] = field(default=())


SCALAR_FIELDS = tuple(f for f in RealParams.__dataclass_fields__ if f != "source_components")
TEXT_FIELDS = ("psf", "source_kind")

MODEL_R = RealismSpec(
    mass=MassSpec(slope=(1.8, 2.2), q=(0.5, 1.0), centre_offset=(0.0, 0.03)),
    lens_light=LensLightSpec(
        n=(1.5, 5.0), r_eff=(0.3, 1.0), q=(0.5, 1.0), intensity=(0.8, 1.6), second=0.4
    ),
    psf=PsfSpec(fwhm_factor=(0.75, 1.25), moffat=0.5, beta=(2.5, 5.0)),
    source=SourceSpec(
        kinds=tuple((kind, 1.0) for kind in SOURCE_KINDS),
        size_factor=(0.5, 1.5),
        brightness_factor=(0.6, 1.4),
        host_n=(0.5, 2.5),
    ),
)

# The mismatch suite: each departure alone on Model A (the one-change sets), and all.
DEPARTURES: dict[str, RealismSpec] = {
    "elliptical_mass": RealismSpec(mass=MassSpec(q=(0.7, 1.0))),
    "lens_light": RealismSpec(lens_light=LensLightSpec(n=(2.0, 4.0), r_eff=(0.3, 0.8))),
    "wide_psf": RealismSpec(psf=PsfSpec(fwhm_factor=(1.2, 1.2))),
    "knotty_source": RealismSpec(source=SourceSpec(kinds=(("knots", 1.0),))),
    "galaxy_source": RealismSpec(source=SourceSpec(kinds=(("galaxy", 1.0),))),
}
DEPARTURES["all"] = RealismSpec(
    mass=DEPARTURES["elliptical_mass"].mass,
    lens_light=DEPARTURES["lens_light"].lens_light,
    psf=DEPARTURES["wide_psf"].psf,
    source=SourceSpec(kinds=(("knots", 1.0), ("galaxy", 1.0))),
)


def _u(rng: np.random.Generator, r: Range) -> float:
    return float(rng.uniform(*r))


def _polar(rng: np.random.Generator, radius: Range) -> tuple[float, float]:
    r, a = _u(rng, radius), _u(rng, (0.0, 2.0 * math.pi))
    return r * math.cos(a), r * math.sin(a)


def _components(
    rng: np.random.Generator,
    count: int,
    host: "LensParams",
    radius: Range,
    r_eff: Range,
    n: Range,
    q: Range,
    intensity: Range,
) -> list[tuple[float, ...]]:
    """`count` components around the host's centre: radius and R_eff in units of the host's
    R_eff, intensity in units of the host's."""
    out = []
    for _ in range(count):
        dx, dy = _polar(rng, radius)
        out.append(
            (
                host.source_x + dx * host.source_r_eff,
                host.source_y + dy * host.source_r_eff,
                _u(rng, r_eff) * host.source_r_eff,
                _u(rng, n),
                _u(rng, q),
                _u(rng, (0.0, math.pi)),
                _u(rng, intensity) * host.source_intensity,
            )
        )
    return out


def _knots(rng: np.random.Generator, host: "LensParams", low: int, high: int) -> list:
    """Compact star-forming knots: R_eff 0.06-0.16 of the host's (0.03-0.08" at 0.5"), near
    Gaussian (n 0.5-1), 2-8 times the host's surface brightness at its R_eff."""
    count = int(rng.integers(low, high + 1))
    return _components(rng, count, host, (0.0, 1.2), (0.06, 0.16), (0.5, 1.0), (0.6, 1.0), (2, 8))


def draw_source(
    rng: np.random.Generator, kind: str, host: "LensParams"
) -> tuple["LensParams", list[tuple[float, ...]]]:
    """(host, extra components) of morphology `kind` around `host` (Model A's source)."""
    if kind == "sersic":
        return host, []
    if kind == "knots":
        return host, _knots(rng, host, 2, 4)
    if kind == "clumpy":  # a fainter exponential disc holding 4-8 larger clumps
        disc = replace(host, source_n=1.0, source_intensity=host.source_intensity * 0.5)
        clumps = _components(rng, int(rng.integers(4, 9)), disc, (0.0, 1.5), (0.1, 0.3),
                             (0.5, 1.0), (0.5, 1.0), (2.0, 5.0))  # fmt: skip
        return disc, clumps
    if kind == "disc":  # exponential disc, seen at any inclination, plus a bulge
        disc = replace(host, source_n=1.0, source_q=_u(rng, (0.3, 1.0)))
        bulge = (host.source_x, host.source_y, _u(rng, (0.15, 0.35)) * host.source_r_eff,
                 4.0, _u(rng, (0.7, 1.0)), _u(rng, (0.0, math.pi)),
                 _u(rng, (2.0, 6.0)) * host.source_intensity)  # fmt: skip
        return disc, [bulge, *_knots(rng, disc, 0, 3)]
    if kind == "irregular":  # extended lobes offset from the host
        lobes = _components(rng, int(rng.integers(2, 5)), host, (0.3, 1.2), (0.3, 0.7),
                            (0.5, 1.5), (0.3, 1.0), (0.3, 1.0))  # fmt: skip
        return host, lobes
    if kind == "galaxy":  # disc + bulge + knots + a lobe: a composite, procedural galaxy
        disc, parts = draw_source(rng, "disc", host)
        knots = _knots(rng, disc, 2, 5)
        lobe = _components(rng, 1, disc, (0.5, 1.2), (0.3, 0.6), (0.5, 1.0), (0.3, 0.8),
                           (0.2, 0.6))  # fmt: skip
        return disc, [*parts, *knots, *lobe]
    raise ValueError(f"unknown source kind {kind!r}; valid: {', '.join(SOURCE_KINDS)}")


def draw(
    spec: RealismSpec, rng: np.random.Generator, params: "LensParams", psf_sigma: float
) -> "LensParams":
    """`params` (Model A's draws) with the departures of `spec` drawn from `rng`.

    `psf_sigma` is the instrument's nominal Gaussian sigma (arcsec). Draws come in a fixed
    order (mass, lens light, PSF, source), each group only when in play.
    """
    real = RealParams(psf_fwhm=psf_sigma * FWHM_PER_SIGMA)
    if spec.mass is not None:
        cx, cy = _polar(rng, spec.mass.centre_offset)
        real = replace(
            real,
            mass_slope=_u(rng, spec.mass.slope),
            mass_q=_u(rng, spec.mass.q),
            mass_phi=_u(rng, (0.0, math.pi)),
            lens_x=cx,
            lens_y=cy,
        )
        params = replace(params, subhalos=tuple((x + cx, y + cy) for x, y in params.subhalos))
    if spec.lens_light is not None:
        light = spec.lens_light
        params = replace(
            params,
            lens_n=_u(rng, light.n),
            lens_r_eff=_u(rng, light.r_eff),
            lens_q=params.lens_q if light.q is None else _u(rng, light.q),
            lens_intensity=params.lens_intensity
            if light.intensity is None
            else _u(rng, light.intensity),
        )
        if rng.uniform() < light.second:
            real = replace(
                real,
                lens2_intensity=params.lens_intensity * _u(rng, light.second_intensity_ratio),
                lens2_r_eff=params.lens_r_eff * _u(rng, light.second_r_eff_ratio),
                lens2_n=_u(rng, light.second_n),
                lens2_q=_u(rng, light.second_q),
                lens2_phi=_u(rng, (0.0, math.pi)),
            )
    if spec.psf is not None:
        moffat = rng.uniform() < spec.psf.moffat
        real = replace(
            real,
            psf="moffat" if moffat else "gaussian",
            psf_fwhm=real.psf_fwhm * _u(rng, spec.psf.fwhm_factor),
            psf_beta=_u(rng, spec.psf.beta) if moffat else 0.0,
        )
    if spec.source is not None:
        source = spec.source
        names = [kind for kind, _ in source.kinds]
        weights = np.array([w for _, w in source.kinds], dtype=np.float64)
        kind = names[int(rng.choice(len(names), p=weights / weights.sum()))]
        params = replace(
            params,
            source_r_eff=params.source_r_eff * _u(rng, source.size_factor),
            source_intensity=params.source_intensity * _u(rng, source.brightness_factor),
            source_n=params.source_n if source.host_n is None else _u(rng, source.host_n),
        )
        params, extra = draw_source(rng, kind, params)
        real = replace(real, source_kind=kind, source_components=tuple(extra))
    return replace(params, realism=real)

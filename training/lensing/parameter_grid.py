"""The study's parameter sampler (issue 18): every uniform parameter takes one of K values.

The study's simulator (docs/study_sampler.md) did not draw each image's parameters
independently. Each call, one per class, drew K = 5 values of every uniform parameter (lens
axis ratio and angle, shear magnitude and angle, source radius, azimuth, axis ratio, angle
and intensity), took every combination of them and sampled images from that product. So
within a class each parameter has only K distinct values, and the classes, drawn by separate
calls, have different ones.

`ParameterGrid` holds those values as fractions of each parameter's range, per class: a
draw of parameter `name` on [lo, hi] is lo + (hi - lo) * u, with u one of the class's K
fractions for `name`, chosen uniformly per image. `shared=True` gives every class the
no_sub class's grid (the control in which only the substructure differs).
"""

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# every uniform draw of Model A's and Model B's smooth lens and source, in draw order
GRID_PARAMETERS = (
    "z_lens",
    "z_source",
    "shear",
    "shear_angle",
    "source_radius",
    "source_azimuth",
    "lens_q",
    "lens_phi",
    "source_q",
    "source_phi",
    "source_intensity",
    "snr",
)
GRID_SEED_KEY = 7  # spawn_key (GRID_SEED_KEY, class code): apart from the images' (split, ...)

UniformDraw = Callable[[str, float, float], float]  # (parameter name, lo, hi) -> value


@dataclass(frozen=True)
class ParameterGrid:
    """K fractions in [0, 1) per parameter per class; `fractions(cls, name)` reads one."""

    size: int  # K, values per parameter (the study: 5)
    shared: bool  # every class on the no_sub class's grid
    table: tuple[tuple[str, tuple[tuple[str, tuple[float, ...]], ...]], ...]  # cls -> name -> K

    def fractions(self, cls: str, name: str) -> tuple[float, ...]:
        """The K sorted fractions of parameter `name` for class `cls`."""
        return dict(dict(self.table)[cls])[name]

    def values(self, cls: str, name: str, lo: float, hi: float) -> list[float]:
        """The K values parameter `name` on [lo, hi] takes in class `cls`."""
        return [lo + (hi - lo) * u for u in self.fractions(cls, name)]


def draw_grid(seed: int, size: int, class_codes: dict[str, int], shared: bool) -> ParameterGrid:
    """The grid of dataset seed `seed`: for each class, K uniform fractions per parameter
    from SeedSequence(seed, spawn_key=(GRID_SEED_KEY, class code)), the no_sub code (0) for
    every class when `shared`."""
    if size < 2:
        raise ValueError(f"a parameter grid needs at least 2 values per parameter, got {size}")
    table = []
    for cls, code in class_codes.items():
        key = (GRID_SEED_KEY, 0 if shared else code)
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))
        per_name = tuple(
            (name, tuple(sorted(float(u) for u in rng.uniform(size=size))))
            for name in GRID_PARAMETERS
        )
        table.append((cls, per_name))
    return ParameterGrid(size=size, shared=shared, table=tuple(table))


def uniform_draw(grid: ParameterGrid | None, cls: str, rng: np.random.Generator) -> UniformDraw:
    """One image's uniform draws: rng.uniform(lo, hi) without a grid (the same stream as
    always), else one of the class's K grid values chosen by rng.integers(K)."""
    if grid is None:
        return lambda name, lo, hi: float(rng.uniform(lo, hi))

    def on_grid(name: str, lo: float, hi: float) -> float:
        u = grid.fractions(cls, name)[int(rng.integers(grid.size))]
        return lo + (hi - lo) * u

    return on_grid


def grid_record(grid: ParameterGrid, ranges: dict[str, tuple[float, float]]) -> dict[str, object]:
    """The manifest's record: K, shared, and each class's values in each parameter's units."""
    return {
        "size": grid.size,
        "shared": grid.shared,
        "rule": (
            "each image takes, for every parameter below, one of its class's values, chosen "
            "uniformly and independently (the study's sampler; docs/study_sampler.md)"
        ),
        "values": {
            cls: {name: grid.values(cls, name, *ranges[name]) for name, _ in per_name}
            for cls, per_name in grid.table
        },
    }

"""Simulated images/s per class at 150x150, one process, ours and lenstronomy's.

Times the whole per-image pipeline of `training.simulate.simulate_image` (parameter draw,
the torch renderer's ray tracing, light and PSF in float64 on one thread, Poisson noise,
[0, 1] scaling) for no_sub, sphere and vort, and
the same images through lenstronomy's ImageModel (one model per class, reused; our noise),
when lenstronomy is installed. "per core" is images per CPU-second of this process, which
stays meaningful on a busy machine where wall-clock time does not.

With --effect it also prints how strongly the subhalos change the image: per image, the
largest |with - without subhalos| in units of the noise sigma of that pixel.

    python bench/bench_simulate.py [--images 200] [--reference-images 40] [--effect]
"""

import argparse
import dataclasses
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from deeplense.vocabulary import CLASSES  # noqa: E402
from training.lensing.noise import min_max_scale, noise_sigma, poisson_observation  # noqa: E402
from training.lensing.render import LensParams, SimConfig, render_components  # noqa: E402
from training.simulate import (  # noqa: E402
    DATASETS,
    DatasetSpec,
    draw_params,
    image_rngs,
    simulate_image,
)

SEED = 12345


def timed(count: int, render: Callable[[int], object]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) to call render(0..count-1), after one warm-up call."""
    render(count)
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(count):
        render(i)
    return time.perf_counter() - wall, time.process_time() - cpu


def ours(spec: DatasetSpec, config: SimConfig, cls: str) -> Callable[[int], object]:
    return lambda i: simulate_image(spec, config, SEED, "test", cls, i)


def lenstronomy(spec: DatasetSpec, config: SimConfig, cls: str) -> Callable[[int], object]:
    """The same images through one lenstronomy ImageModel per class (kwargs change only)."""
    from training.lensing.reference import LenstronomyRenderer, lens_model, light_models

    first = draw_params(spec, cls, image_rngs(SEED, "test", cls, 0)[0])
    model = LenstronomyRenderer(config).image_model(first)

    def render(i: int) -> np.ndarray:
        params_rng, noise_rng = image_rngs(SEED, "test", cls, i)
        params = draw_params(spec, cls, params_rng)
        _, lens_kwargs = lens_model(params)
        _, source_kwargs, _, light_kwargs = light_models(params)
        # Unit amplitudes: lenstronomy's per-pixel flux over the pixel area is a rate of 1 at
        # R_eff; the study's intensities (ours) scale it and cost the same.
        rate = model.image(lens_kwargs, source_kwargs, light_kwargs) / config.pixel_scale**2
        return min_max_scale(poisson_observation(rate, params.exposure, config.sky, noise_rng))

    return render


def effect_table(spec: DatasetSpec, config: SimConfig, count: int) -> None:
    print(f"\nsubhalo effect, {spec.name}: peak |with - without| / noise sigma over {count} images")
    print(f"{'class':8} {'median':>7} {'mean':>6} {'p10':>6} {'p90':>6} {'< 1 sigma':>10}")
    for cls in ("sphere", "vort"):
        peaks = []
        for i in range(count):
            params: LensParams = draw_params(spec, cls, image_rngs(SEED, "test", cls, i)[0])
            with_sub = render_components(params, config)
            smooth = render_components(dataclasses.replace(params, subhalos=()), config)
            sigma = noise_sigma(smooth.rate, params.exposure, config.sky)
            peaks.append(float((np.abs(with_sub.rate - smooth.rate) / sigma).max()))
        p = np.array(peaks)
        print(
            f"{cls:8} {np.median(p):7.2f} {p.mean():6.2f} {np.quantile(p, 0.1):6.2f} "
            f"{np.quantile(p, 0.9):6.2f} {(p < 1).mean():10.0%}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=200, help="images per class, ours")
    parser.add_argument("--reference-images", type=int, default=40, help="lenstronomy's")
    parser.add_argument("--dataset", default="model_a", choices=sorted(DATASETS))
    parser.add_argument("--effect", action="store_true", help="also print the subhalo effect")
    args = parser.parse_args()
    spec, config = DATASETS[args.dataset], SimConfig()
    try:
        import lenstronomy as _  # noqa: F401

        simulators = {"ours": ours, "lenstronomy": lenstronomy}
    except ImportError:
        simulators = {"ours": ours}
    print(f"{args.dataset}, {config.image_size}x{config.image_size}, supersampling "
          f"{config.supersampling}, one process")  # fmt: skip
    print(f"{'simulator':12} {'class':7} {'images':>6} {'seconds':>8} {'images/s':>9} "
          f"{'images/s per core':>18}")  # fmt: skip
    for name, factory in simulators.items():
        count = args.images if name == "ours" else args.reference_images
        for cls in CLASSES:
            wall, cpu = timed(count, factory(spec, config, cls))
            print(f"{name:12} {cls:7} {count:6d} {wall:8.2f} {count / wall:9.1f} "
                  f"{count / cpu:18.1f}")  # fmt: skip
    if args.effect:
        effect_table(spec, config, 100)


if __name__ == "__main__":
    main()

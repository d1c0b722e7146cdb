"""The noise estimate against the true noise map, by brightness: why a supplied ERR map does
not raise LensFit's AUC (issue 17, docs/results.md).

The card set of `bench/bench_instrument.py` (Model A lenses, test images 0..N-1 of seed 17,
Poisson noise, sky subtracted): each image is prepared as the service prepares it, once with
its true noise sigma (ERR) and once without (the estimate, `deeplense.noise`), and the ratio
estimated / true is summarised per image within bins of the noiseless image's level on the
[0, 1] scale the model sees.

    .venv/bin/python bench/noise_estimate_bias.py [--n 100]
"""

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_instrument import imaging_sets, noiseless, observe  # noqa: E402

from deeplense.fits_layout import ImageExtras  # noqa: E402
from deeplense.instrument import STUDY_IMAGE_SIZE, STUDY_INSTRUMENT  # noqa: E402
from deeplense.observation import prepare_observation  # noqa: E402
from training.lensing.render import SimConfig  # noqa: E402
from training.simulate import draw_params, get_spec, image_rngs  # noqa: E402

LEVELS = (0.0, 0.01, 0.03, 0.1, 0.2, 0.4, 1.01)  # bin edges of the noiseless scaled level


def ratios(cls: str, n: int, seed: int) -> tuple[list[float], list[list[float]]]:
    """Per image: the median estimated / true sigma over all pixels, and within each level bin."""
    card = imaging_sets(STUDY_INSTRUMENT, STUDY_IMAGE_SIZE)["card"]
    spec, sky = get_spec("model_a", subhalo_mass_fraction=0.01), SimConfig().sky
    whole: list[float] = []
    binned: list[list[float]] = [[] for _ in LEVELS[1:]]
    for index in range(n):
        params_rng, noise_rng = image_rngs(seed, "test", cls, index)
        params = draw_params(spec, cls, params_rng)
        sci, err = observe(params, card, noise_rng, sky)
        size = STUDY_IMAGE_SIZE
        true = prepare_observation(
            sci, size, STUDY_INSTRUMENT, "t", ImageExtras(noise=err, noise_extension="ERR")
        )
        estimated = prepare_observation(sci, size, STUDY_INSTRUMENT, "e")
        assert true.sigma is not None and estimated.sigma is not None
        ratio = estimated.sigma[0] / true.sigma[0]  # (S, S)
        level = (noiseless(params, card) - sci.min()) / (sci.max() - sci.min())
        whole.append(float(np.median(ratio)))
        for b, (lo, hi) in enumerate(zip(LEVELS[:-1], LEVELS[1:], strict=True)):
            inside = (level >= lo) & (level < hi)
            if inside.any():
                binned[b].append(float(np.median(ratio[inside])))
    return whole, binned


def _quartiles(values: list[float]) -> str:
    v = np.asarray(values)
    return f"{np.median(v):.3f} ({np.percentile(v, 25):.3f}-{np.percentile(v, 75):.3f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100, help="test images per class")
    parser.add_argument("--seed", type=int, default=17, help="simulation seed (training: 0)")
    args = parser.parse_args()
    print(f"estimated / true noise sigma, {args.n} card-set images per class, seed {args.seed}")
    print("median over images of each image's median ratio (quartiles)\n")
    print("| noiseless level | no_sub | sphere |\n| --- | --- | --- |")
    columns = {cls: ratios(cls, args.n, args.seed) for cls in ("no_sub", "sphere")}
    print(f"| all pixels | {' | '.join(_quartiles(c[0]) for c in columns.values())} |")
    for b, (lo, hi) in enumerate(zip(LEVELS[:-1], LEVELS[1:], strict=True)):
        cells = " | ".join(_quartiles(c[1][b]) if c[1][b] else "-" for c in columns.values())
        print(f"| {lo:.2f}-{min(hi, 1.0):.2f} | {cells} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

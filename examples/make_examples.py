"""Regenerate the example images in this folder: two simulated Model A images per class, each
saved as .npy (float32, [0, 1]), FITS (float32) and 16-bit PNG.

    .venv/bin/python examples/make_examples.py [--overwrite]

The images come from the project's simulator, `training.simulate.simulate_image` with seed
2026 and split "test"; the shipped checkpoints were trained on seed 0, so no example
is a training image.
"""

import argparse
import sys
from pathlib import Path

import numpy as np
from astropy.io import fits
from PIL import Image

from training.simulate import SimConfig, get_spec, simulate_image

HERE = Path(__file__).resolve().parent
SEED = 2026
PER_CLASS = 2


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--overwrite", action="store_true", help="replace existing files")
    args = parser.parse_args()
    spec = get_spec("model_a")
    config = SimConfig()
    for cls in ("no_sub", "sphere", "vort"):
        for index in range(PER_CLASS):
            image = simulate_image(spec, config, SEED, "test", cls, index).image  # (150, 150)
            stem = HERE / f"{cls}_{index}"
            paths = [stem.with_suffix(s) for s in (".npy", ".fits", ".png")]
            if not args.overwrite and any(p.exists() for p in paths):
                print(f"error: {stem}.* exist; pass --overwrite", file=sys.stderr)
                return 2
            np.save(paths[0], image.astype(np.float32), allow_pickle=False)
            fits.PrimaryHDU(image.astype(np.float32)).writeto(paths[1], overwrite=True)
            png = np.round(image * 65535).astype(np.uint16)
            Image.fromarray(png).save(paths[2])
    print(f"wrote {3 * 3 * PER_CLASS} files to {HERE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

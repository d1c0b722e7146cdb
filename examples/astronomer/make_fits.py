"""Write the astronomer's example: a FITS file as a survey stores a cutout.

    .venv/bin/python examples/astronomer/make_fits.py [--overwrite]

For vort_0 and no_sub_0 (the same simulated lenses as the other examples: seed 2026, split
"test", index 0) it writes `<name>.fits`: the image in counts/s (extension SCI,
sky subtracted, Poisson noise), its true per-pixel noise sigma (extension ERR, counts/s), the
PSF as a sampled, normalised Gaussian kernel (extension PSF), and the pixel scale in the
header (PIXSCALE, arcsec). Min-max scaled, SCI is exactly the `.npy` example.
"""

import argparse
import sys
from pathlib import Path

import numpy as np
from astropy.io import fits

from deeplense.instrument import gaussian_kernel
from training.lensing.noise import noise_sigma, poisson_observation
from training.lensing.render import render_components
from training.simulate import SimConfig, draw_params, get_spec, image_rngs

HERE = Path(__file__).resolve().parent  # examples/astronomer
SEED = 2026


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--overwrite", action="store_true", help="replace existing files")
    args = parser.parse_args()
    spec, config = get_spec("model_a"), SimConfig()
    instrument = config.instrument()
    for cls in ("vort", "no_sub"):
        path = HERE / f"{cls}_0.fits"
        if path.exists() and not args.overwrite:
            print(f"error: {path} exists; pass --overwrite", file=sys.stderr)
            return 2
        params_rng, noise_rng = image_rngs(SEED, "test", cls, 0)
        params = draw_params(spec, cls, params_rng, config.exposure)
        rate = render_components(params, config).rate  # counts/s, noiseless
        sci = poisson_observation(rate, params.exposure, config.sky, noise_rng)
        err = noise_sigma(rate, params.exposure, config.sky)
        header = fits.Header()
        header["PIXSCALE"] = (instrument.pixel_scale, "arcsec per pixel")
        header["BUNIT"] = "counts/s"
        hdus = fits.HDUList(
            [
                fits.PrimaryHDU(),
                fits.ImageHDU(sci.astype(np.float32), header=header, name="SCI"),
                fits.ImageHDU(err.astype(np.float32), name="ERR"),
                fits.ImageHDU(gaussian_kernel(instrument.psf_sigma_pixels), name="PSF"),
            ]
        )
        hdus.writeto(path, overwrite=args.overwrite)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

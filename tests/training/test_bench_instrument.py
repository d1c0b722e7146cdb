"""bench/bench_instrument.py: the astronomer's FITS it builds, its photometry, and a tiny run."""

import sys
from pathlib import Path

import numpy as np
import pytest

from deeplense.imaging import decode_image
from deeplense.instrument import STUDY_INSTRUMENT, gaussian_kernel
from tests.bench_scripts import load_bench
from training.lensing.render import SimConfig
from training.simulate import draw_params, get_spec, image_rngs


def test_fits_is_read_back_as_sci_err_psf_and_pixel_scale() -> None:
    bench = load_bench("bench_instrument")
    rng = np.random.default_rng(0)
    sci, err = rng.normal(size=(20, 24)), rng.uniform(0.1, 1.0, size=(20, 24))  # (H, W) each
    psf = gaussian_kernel(1.5)
    decoded = decode_image(bench.astronomer_fits(sci, 0.1, err, psf), "cut.fits")
    assert decoded.extras is not None
    assert decoded.extras.noise is not None and decoded.extras.psf is not None
    np.testing.assert_allclose(decoded.pixels, sci.astype(np.float32))
    np.testing.assert_allclose(decoded.extras.noise, err.astype(np.float32))
    assert decoded.extras.noise_extension == "ERR"
    np.testing.assert_allclose(decoded.extras.psf, psf.astype(np.float32))
    assert decoded.extras.pixel_scale == pytest.approx(0.1)
    assert decoded.extras.pixel_scale_keyword == "PIXSCALE"
    bare = decode_image(bench.astronomer_fits(sci, 0.05, None, None), "cut.fits").extras
    assert bare is not None and bare.noise is None and bare.psf is None


def test_a_pixel_four_times_larger_collects_four_times_the_photons() -> None:
    # The same lens over the same 10" field at 0.05" and at 0.1": equal total counts/s.
    bench = load_bench("bench_instrument")
    params = draw_params(get_spec("model_a"), "no_sub", image_rngs(17, "test", "no_sub", 0)[0])
    totals, skies = [], []
    for size, scale in ((200, 0.05), (100, 0.1)):
        imaging = bench.ImagingSet("t", size, scale, 0.1)
        config = imaging.sim_config()
        assert config.pixel_scale / config.supersampling == pytest.approx(0.025)
        noise_rng = np.random.default_rng(1)
        sci, err = bench.observe(params, imaging, noise_rng, SimConfig().sky)
        totals.append(sci.sum())
        skies.append(np.median(err[:5, :5]) ** 2 * params.exposure)  # ~ sky counts per pixel
    assert totals[1] == pytest.approx(totals[0], rel=0.02)
    assert skies[1] == pytest.approx(4 * skies[0], rel=0.05)


def test_sets_follow_the_card_and_the_issue() -> None:
    sets = load_bench("bench_instrument").imaging_sets(STUDY_INSTRUMENT, 150)
    assert sets["wide_psf"].psf_sigma == pytest.approx(0.12)
    assert (sets["euclid"].image_size, sets["euclid"].pixel_scale) == (100, 0.1)
    assert sets["euclid"].psf_sigma == pytest.approx(0.068, abs=5e-4)
    assert not sets["card_no_err"].with_err and sets["card"].with_err


def test_tiny_run_prints_every_set_and_the_latency(
    tiny_checkpoints: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["bench_instrument.py", "--n", "2", "--checkpoints", str(tiny_checkpoints),
            "--model", "lensfit", "--latency-rounds", "1"]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    assert load_bench("bench_instrument").main() == 0
    out = capsys.readouterr().out
    for name in ("card", "wide_psf", "euclid", "card_no_err"):
        assert f"| {name} |" in out
    assert "noise upload ERR" in out and "noise estimated" in out
    assert '0.1" (upload)' in out and "fitted on the image's own grid" in out
    assert "| card .npy (SCI only) |" in out and "| euclid FITS (SCI+ERR+PSF) |" in out

"""Model R and the mismatch suite: physics, draws, files, and Model A left as it was."""

import csv
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import training.simulate as simulate
from deeplense.errors import DatasetError
from deeplense.instrument import FWHM_PER_SIGMA
from deeplense.vocabulary import dataset_instrument
from training.__main__ import main
from training.commands import simulate as command
from training.lensing import realism, realistic
from training.lensing.realism import RealParams
from training.lensing.render import SimConfig, render_components
from training.simulate import (
    DATASETS,
    draw_params,
    get_spec,
    image_rngs,
    read_parameters,
    read_split_parameters,
    regenerate_image,
    simulate_dataset,
)

CONFIG = SimConfig()


def test_the_cli_names_every_dataset_and_departure() -> None:
    assert tuple(sorted(DATASETS)) == command.DATASETS
    assert simulate.DEPARTURES == command.DEPARTURES


@pytest.mark.parametrize(("cls", "substructure"), [("no_sub", "stated"), ("sphere", "stated"),
                                                   ("vort", "study")])  # fmt: skip
def test_realistic_renderer_at_model_a_values_is_model_as_renderer(
    cls: str, substructure: str
) -> None:
    params = draw_params(get_spec("model_a", substructure), cls, image_rngs(0, "test", cls, 2)[0])
    plain = render_components(params, CONFIG)
    real = render_components(dataclasses.replace(params, realism=RealParams()), CONFIG)
    for a, b in ((plain.arcs, real.arcs), (plain.lens, real.lens)):
        assert np.abs(a - b).max() < 1e-13 * a.max()


def test_the_lens_equation_equals_lenstronomys_epl_shear_and_point_masses() -> None:
    from lenstronomy.LensModel.lens_model import LensModel

    params = draw_params(get_spec("model_r"), "sphere", image_rngs(0, "test", "sphere", 0)[0])
    real = params.realism
    assert real is not None and len(params.subhalos) == 25
    c = torch.linspace(-3.0, 3.0, 13, dtype=torch.float64) + 0.011
    y, x = torch.meshgrid(c, c, indexing="ij")
    ax, ay = realistic._deflection(params, real, c, x[None], y[None])
    e = (1 - real.mass_q) / (1 + real.mass_q)
    kwargs = [
        {"theta_E": params.theta_e, "gamma": real.mass_slope, "e1": e * math.cos(2 * real.mass_phi),
         "e2": e * math.sin(2 * real.mass_phi), "center_x": real.lens_x, "center_y": real.lens_y},
        {"gamma1": params.gamma1, "gamma2": params.gamma2, "ra_0": real.lens_x,
         "dec_0": real.lens_y},
        *({"theta_E": params.theta_sub, "center_x": sx, "center_y": sy}
          for sx, sy in params.subhalos),
    ]  # fmt: skip
    model = LensModel(["EPL", "SHEAR"] + ["POINT_MASS"] * 25)
    rx, ry = model.alpha(x.numpy(), y.numpy(), kwargs)
    np.testing.assert_allclose(ax[0].numpy(), rx, rtol=0, atol=1e-9)
    np.testing.assert_allclose(ay[0].numpy(), ry, rtol=0, atol=1e-9)


def test_a_moffat_psf_keeps_the_flux_and_a_gaussian_one_is_the_renderers() -> None:
    params = draw_params(get_spec("model_a"), "no_sub", image_rngs(0, "test", "no_sub", 1)[0])
    fwhm = CONFIG.psf_sigma * FWHM_PER_SIGMA
    gauss = render_components(dataclasses.replace(params, realism=RealParams()), CONFIG)
    moffat = render_components(
        dataclasses.replace(params, realism=RealParams(psf="moffat", psf_fwhm=fwhm, psf_beta=3.0)),
        CONFIG,
    )
    # the arcs lie well inside the field: the PSF moves light, it does not add or lose any
    assert moffat.arcs.sum() == pytest.approx(gauss.arcs.sum(), rel=2e-3)
    assert moffat.arcs.max() < gauss.arcs.max()  # the same FWHM, but light in the wings


def _draws(name: str, cls: str, n: int = 60) -> list:
    spec = get_spec(name)
    return [draw_params(spec, cls, image_rngs(7, "train", cls, i)[0]) for i in range(n)]


def _within(values: list[float], lo: float, hi: float) -> bool:
    return min(values) >= lo and max(values) <= hi


def test_model_r_draws_within_its_stated_ranges() -> None:
    spec = realism.MODEL_R
    assert spec.mass and spec.lens_light and spec.psf and spec.source
    draws = _draws("model_r", "sphere")
    reals = [p.realism for p in draws]
    assert _within([r.mass_slope for r in reals], *spec.mass.slope)
    assert _within([r.mass_q for r in reals], *spec.mass.q)
    assert _within([math.hypot(r.lens_x, r.lens_y) for r in reals], *spec.mass.centre_offset)
    assert _within([p.lens_n for p in draws], *spec.lens_light.n)
    assert _within([p.lens_r_eff for p in draws], *spec.lens_light.r_eff)
    assert 0 < sum(r.lens2_intensity > 0 for r in reals) < len(reals)  # sometimes two
    nominal = CONFIG.psf_sigma * FWHM_PER_SIGMA
    lo, hi = spec.psf.fwhm_factor
    assert _within([r.psf_fwhm for r in reals], lo * nominal, hi * nominal)
    assert {r.psf for r in reals} == {"gaussian", "moffat"}
    assert all((r.psf == "moffat") == (r.psf_beta >= 2.5) for r in reals)
    assert {r.source_kind for r in reals} <= set(realism.SOURCE_KINDS)
    assert len({r.source_kind for r in reals}) >= 4
    assert _within([p.source_r_eff for p in draws], 0.5 * 0.5, 0.5 * 1.5)
    for p in draws:  # the subhalos sit around the offset centre, as Model A's around 0
        offset = np.array(p.subhalos) - (p.realism.lens_x, p.realism.lens_y)
        assert np.hypot(*offset.T).max() <= 1.0


@pytest.mark.parametrize("departure", simulate.DEPARTURES)
def test_each_departure_keeps_model_as_other_draws_image_by_image(departure: str) -> None:
    base, changed = _draws("model_a", "vort", 30), _draws(f"model_a+{departure}", "vort", 30)
    spec = realism.DEPARTURES[departure]
    kept = ["theta_e", "gamma1", "gamma2", "source_x", "source_y", "source_phi"]
    if spec.lens_light is None:
        kept += ["lens_n", "lens_r_eff", "lens_q", "lens_phi", "lens_intensity"]
    if spec.source is None:
        kept += ["source_r_eff", "source_n", "source_q", "source_intensity"]  # (disc: q)
    for a, b in zip(base, changed, strict=True):
        assert b.realism is not None and a.realism is None
        assert all(getattr(a, f) == getattr(b, f) for f in kept), departure
        assert b.subhalos == a.subhalos or spec.mass is not None
    reals = [p.realism for p in changed]
    if spec.mass is not None:  # the elliptical lens: SIE, axis ratio 0.7-1, centred
        assert _within([r.mass_q for r in reals], 0.7, 1.0)
        assert {r.mass_slope for r in reals} == {2.0} and {r.lens_x for r in reals} == {0.0}
    if spec.lens_light is not None:
        assert _within([p.lens_n for p in changed], 2.0, 4.0)
        assert _within([p.lens_r_eff for p in changed], 0.3, 0.8)
    fwhm = {round(r.psf_fwhm / (CONFIG.psf_sigma * FWHM_PER_SIGMA), 12) for r in reals}
    assert fwhm == ({1.2} if spec.psf is not None else {1.0})
    if departure == "knotty_source":
        assert all(2 <= len(r.source_components) <= 4 for r in reals)
        assert all(c[2] <= 0.16 * 0.5 for r in reals for c in r.source_components)  # compact


def test_unknown_or_doubled_departures_are_refused_with_the_valid_ones() -> None:
    with pytest.raises(DatasetError, match="valid: elliptical_mass, lens_light"):
        get_spec("model_a+bendy")
    with pytest.raises(DatasetError, match="own departures"):
        get_spec("model_r+wide_psf")
    with pytest.raises(DatasetError, match="valid: model_a, model_b, model_r"):
        get_spec("model_c")


def test_model_a_draws_and_files_have_no_realism(tmp_path: Path) -> None:
    """Model A's bytes are those of simulator 2.2 (checked by hashes when Model R landed):
    its parameters, its CSV columns and its manifest's ranges carry nothing of Model R."""
    assert DATASETS["model_a"].realism is None and DATASETS["model_b"].realism is None
    assert all(p.realism is None for p in _draws("model_a", "sphere", 3))
    out = simulate_dataset("model_a", tmp_path / "a", 1, 1, 1, seed=2, workers=1, progress=False)
    header = (out / "parameters.csv").read_text().splitlines()[0].split(",")
    assert "psf" not in header and header[-2:] == ["snr_median", "snr_peak"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert "realism" not in manifest["ranges"] and "departures" not in manifest
    assert not (out / simulate.SOURCE_COMPONENTS_FILE).exists()
    assert manifest["instrument"]["psf"] == "gaussian"


def test_cli_model_r_end_to_end_records_each_images_psf(tmp_path: Path) -> None:
    out = tmp_path / "r"
    argv = ["simulate", "--dataset", "model_r", "--out", str(out), "--n-train", "3",
            "--n-val", "2", "--n-val-sub", "1", "--n-test", "2", "--seed", "4",
            "--workers", "1"]  # fmt: skip
    assert main(argv) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["dataset"] == "model_r"
    assert manifest["counts"]["val"] == {"no_sub": 2, "sphere": 1, "vort": 1}
    assert manifest["instrument"]["psf"] == "per-image"
    lo, hi = manifest["instrument"]["psf_fwhm_range_arcsec"]
    with (out / "parameters.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 + 4 + 6
    for row in rows:
        assert row["psf"] in ("gaussian", "moffat") and lo <= float(row["psf_fwhm"]) <= hi
        assert (float(row["psf_beta"]) > 0) == (row["psf"] == "moffat")
        assert row["source_kind"] in realism.SOURCE_KINDS
    images = np.load(out / "test" / "vort.npy")
    assert images.shape == (2, 1, 150, 150) and images.min() == 0 and images.max() == 1
    assert np.array_equal(regenerate_image(out, "test", "vort", 1), images[1, 0])
    bulk = read_split_parameters(out, "test")  # realism and source components read back too
    assert bulk == {key: read_parameters(out, "test", *key) for key in bulk} and len(bulk) == 6
    # the service's reader of the instrument falls back to the nominal PSF (the median)
    instrument = dataset_instrument(out)
    assert instrument is not None and instrument.psf_sigma == CONFIG.psf_sigma


def test_a_departure_set_is_named_and_regenerated(tmp_path: Path) -> None:
    argv = ["simulate", "--dataset", "model_a", "--departure", "wide_psf", "--out",
            str(tmp_path / "w"), "--n-train", "1", "--n-val", "1", "--n-val-sub", "0",
            "--n-test", "1", "--workers", "1"]  # fmt: skip
    assert main(argv) == 0
    manifest = json.loads((tmp_path / "w" / "manifest.json").read_text())
    assert manifest["dataset"] == "model_a+wide_psf"
    assert manifest["instrument"]["psf_sigma_arcsec"] == pytest.approx(1.2 * CONFIG.psf_sigma)
    image = np.load(tmp_path / "w" / "test" / "sphere.npy")[0, 0]
    assert np.array_equal(regenerate_image(tmp_path / "w", "test", "sphere", 0), image)

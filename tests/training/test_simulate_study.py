"""`simulate --substructure study` (issue 18): the study code's subhalo masses and vortex."""

import csv
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import integrate, stats

from training.__main__ import main
from training.lensing.reference import LenstronomyRenderer
from training.lensing.render import LensParams, SimConfig, render_components
from training.simulate import (
    STUDY,
    draw_params,
    get_spec,
    image_rngs,
    read_parameters,
    read_split_parameters,
    regenerate_image,
    simulate_dataset,
    substructure_signal,
)

LO, HI = STUDY.mass_range  # 1e6, 1e10 Msun
P = STUDY.mass_slope + 1.0  # dN/dm ~ m^-0.9: p = 0.1


def power_law_cdf(m: np.ndarray) -> np.ndarray:
    """CDF of dN/dm ~ m^-0.9 on [1e6, 1e10]: (m^p - lo^p) / (hi^p - lo^p)."""
    return (m**P - LO**P) / (HI**P - LO**P)


def tiny(out: Path, substructure: str, dataset: str = "model_a") -> Path:
    return simulate_dataset(
        dataset, out, n_train=2, n_val=2, n_test=2, n_val_sub=1, seed=4, workers=1,
        progress=False, substructure=substructure,
    )  # fmt: skip


def subhalo_rows(folder: Path) -> list[dict[str, str]]:
    with (folder / "subhalos.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def test_sphere_masses_follow_the_power_law() -> None:
    spec = get_spec("model_a", "study")
    masses: list[float] = []
    fractions = []
    for index in range(400):  # 10,000 masses, as simulate draws them (test split, seed 0)
        params = draw_params(spec, "sphere", image_rngs(0, "test", "sphere", index)[0])
        m = STUDY.lens_mass * (np.array(params.subhalo_theta) / params.theta_e) ** 2
        masses.extend(m)
        fractions.append(m.sum() / STUDY.lens_mass)
        # theta_i = 1.2" sqrt(m_i / 1e12 Msun) at Model A's theta_E = 1.2"
        assert params.theta_e == 1.2 and len(m) == 25
    masses_arr = np.array(masses)
    assert masses_arr.min() >= LO and masses_arr.max() <= HI
    assert stats.kstest(masses_arr, power_law_cdf).pvalue > 0.01
    # A log-uniform law (slope -1) is told apart from it: the test has power.
    assert stats.kstest(masses_arr, stats.loguniform(LO, HI).cdf).pvalue < 1e-6
    # Mean total: 25 E[m] / 1e12 with E[m] = p/(p+1) (hi^(p+1) - lo^(p+1)) / (hi^p - lo^p)
    # = 1.510e9 Msun, so 3.78% of the lens (the "about 3.8%").
    norm = integrate.quad(lambda m: m**-0.9, LO, HI)[0]
    numeric_mean = integrate.quad(lambda m: m**0.1, LO, HI)[0] / norm
    assert STUDY.mean_mass() == pytest.approx(numeric_mean, rel=1e-9)
    assert 25 * STUDY.mean_mass() / STUDY.lens_mass == pytest.approx(0.0378, abs=5e-5)
    # One image's total has a spread of 1.19% (25 Var[m]), so 400 images' mean has 0.06%.
    assert np.mean(fractions) == pytest.approx(0.0378, abs=0.0025)


def test_vortex_fraction_and_length_lie_in_the_study_ranges() -> None:
    spec = get_spec("model_b", "study")  # theta_E varies: lengths scale with theta_E / 1.2"
    fractions, lengths = [], []
    for index in range(200):
        params = draw_params(spec, "vort", image_rngs(0, "test", "vort", index)[0])
        assert params.subhalo_theta == ()  # equal masses
        fractions.append(25 * params.theta_sub**2 / params.theta_e**2)
        ends = np.subtract(params.subhalos[-1], params.subhalos[0])
        lengths.append(math.hypot(*ends) * 1.2 / params.theta_e)
    assert min(fractions) >= 0.03 and max(fractions) <= 0.055
    assert min(lengths) >= 0.5 and max(lengths) <= 2.0
    assert stats.kstest(fractions, stats.uniform(0.03, 0.025).cdf).pvalue > 0.01
    assert stats.kstest(lengths, stats.uniform(0.5, 1.5).cdf).pvalue > 0.01


@pytest.mark.parametrize("cls", ["sphere", "vort"])
def test_study_keeps_the_stated_lens_and_positions(cls: str) -> None:
    stated = draw_params(get_spec("model_b", "stated"), cls, image_rngs(2, "val", cls, 7)[0])
    study = draw_params(get_spec("model_b", "study"), cls, image_rngs(2, "val", cls, 7)[0])

    def smooth(params: LensParams) -> LensParams:
        return dataclasses.replace(params, theta_sub=0.0, subhalos=(), subhalo_theta=())

    assert smooth(study) == smooth(stated)
    if cls == "sphere":
        assert study.subhalos == stated.subhalos  # only the masses differ
    else:  # the same line centre and orientation, another length
        assert np.allclose(np.mean(study.subhalos, axis=0), np.mean(stated.subhalos, axis=0))


def test_unequal_subhalos_render_as_lenstronomy() -> None:
    rng = image_rngs(3, "test", "sphere", 0)[0]
    params = draw_params(get_spec("model_a", "study"), "sphere", rng)
    assert len(set(params.subhalo_theta)) == 25
    config = SimConfig()
    ours = render_components(params, config).arcs
    theirs = LenstronomyRenderer(config).render(params)[0] * params.source_intensity
    assert np.abs(ours - theirs).max() < 1e-3 * theirs.max()  # measured: 1e-15


def test_no_sub_is_the_same_bytes_and_the_draws_are_recorded(tmp_path: Path) -> None:
    stated = tiny(tmp_path / "stated", "stated", "model_b")
    study = tiny(tmp_path / "study", "study", "model_b")
    for name in ["train/no_sub.npy", "val/no_sub.npy", "test/no_sub.npy"]:
        assert (stated / name).read_bytes() == (study / name).read_bytes()
    for name in ["val/sphere.npy", "val/vort.npy", "test/sphere.npy", "test/vort.npy"]:
        assert (stated / name).read_bytes() != (study / name).read_bytes()
    manifest = json.loads((study / "manifest.json").read_text())
    assert manifest["substructure"] == "study" and manifest["subhalo_mass_fraction"] is None
    record = manifest["study_substructure"]
    assert record["mass_range"] == [1e6, 1e10] and record["mass_slope"] == -0.9
    assert record["vortex_mass_fraction"] == [0.03, 0.055]
    assert record["sphere_mass_fraction_mean"] == pytest.approx(0.0378, abs=5e-5)
    assert json.loads((stated / "manifest.json").read_text())["substructure"] == "stated"
    rows = subhalo_rows(study)
    assert len(rows) == 25 * 6  # val and test, sphere and vort
    theta_e = {}
    with (study / "parameters.csv").open(newline="") as f:
        for r in csv.DictReader(f):
            theta_e[r["split"], r["class"], r["index"]] = float(r["theta_e"])
    for r in rows:
        mass, theta = float(r["mass_msun"]), float(r["theta_sub"])
        assert mass >= LO and mass <= HI and theta > 0  # vort: 3-5.5% / 25 = 1.2e9-2.2e9 Msun
        e = theta_e[r["split"], r["class"], r["index"]]
        assert theta == pytest.approx(e * math.sqrt(mass / 1e12), rel=1e-12)
    for split, cls in [("val", "sphere"), ("val", "vort"), ("test", "sphere")]:
        stored = np.load(study / split / f"{cls}.npy", allow_pickle=False)[0, 0]
        assert regenerate_image(study, split, cls, 0).tobytes() == stored.tobytes()
    for split in ("val", "test"):  # the bulk reader equals the one-image reader
        bulk = read_split_parameters(study, split)
        assert bulk == {key: read_parameters(study, split, *key) for key in bulk}
        assert len(bulk) == sum(
            json.loads((study / "manifest.json").read_text())["counts"][split].values()
        )
    params = read_parameters(study, "test", "sphere", 1)
    masses = STUDY.lens_mass * (np.array(params.subhalo_theta) / params.theta_e) ** 2
    assert 25 * params.theta_sub**2 / params.theta_e**2 == pytest.approx(masses.sum() / 1e12)


def test_cli_study_runs_and_refuses_a_mass_fraction(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "data"
    argv = ["simulate", "--dataset", "model_a", "--out", str(out), "--n-train", "0",
            "--n-val", "0", "--n-test", "1", "--workers", "1",
            "--substructure", "study"]  # fmt: skip
    assert main([*argv, "--subhalo-mass-fraction", "0.02"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--substructure study draws its own masses" in err
    assert not out.exists()
    assert main(argv) == 0
    assert json.loads((out / "manifest.json").read_text())["substructure"] == "study"
    assert subhalo_rows(out)[0].keys() >= {"theta_sub", "mass_msun"}


def test_an_unknown_substructure_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["simulate", "--dataset", "model_a", "--out", "unused", "--substructure", "paper"]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert "--substructure" in capsys.readouterr().err


def test_the_study_change_exceeds_the_stated_one() -> None:
    stated = substructure_signal("model_a", "vort", 3, substructure="stated")
    study = substructure_signal("model_a", "vort", 3, substructure="study")
    assert (stated > 0).all() and study.mean() > 2 * stated.mean()  # 3-5.5% against 1%

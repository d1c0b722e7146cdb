"""Real images' instrument (issue 17): ROC-AUC of the default model when each test lens comes
as an astronomer's FITS file (SCI in counts/s, ERR = its true noise sigma, a PSF extension,
PIXSCALE), scored through the service's HTTP path, for four sets of the same lenses:

  card         the checkpoint's instrument (Model A: 150 x 150 of 0.05", PSF sigma 0.1"),
               FITS with ERR and PSF: the baseline;
  wide_psf     the same lenses through a PSF 20% wider (sigma 0.12"), FITS with that PSF
               and ERR (goal: AUC within 0.02 of card);
  euclid       Euclid-like: 100 x 100 of 0.1", Gaussian PSF FWHM 0.16" (sigma 0.068"), each
               pixel collecting photons in proportion to its area (below), FITS with
               PIXSCALE 0.1, its PSF and ERR (goal: AUC >= 0.85);
  card_no_err  card's very files without the ERR extension: the service estimates the noise
               (goal: the AUC does not fall when the noise map is supplied).

Then the latency of single-image requests: plain .npy (the card set's SCI array) against the
FITS files of card and euclid (the euclid file is fitted on its own grid by a model that
draws the lens, LensFit; resampled to the model's grid for any other).

Photometry. The simulator's Sersic intensities are the profile's value at a pixel in counts/s
per pixel, with no pixel-area factor (training/lensing/render.py), calibrated for its 0.05"
pixels; `simulate --pixel-scale 0.1` keeps those per-pixel values, so its 0.1" pixels would
collect a quarter of the photons a real 0.1" pixel does. Here the noiseless rate and the sky
of every set are multiplied by the area ratio (pixel scale / 0.05")^2, 4 for euclid, before
the Poisson draw at the same 300 s: a 0.1" pixel collects what four 0.05" pixels do, so the
surface brightness per arcsec^2 and the exposure are the study's. (Multiplying the exposure
by 4 gives the same counts and S/N; only SCI's units would differ, which min-max scaling
removes.) Sub-pixels stay 0.025" (supersampling 2 at 0.05", 4 at 0.1").

The lenses are test images 0..N-1 of each class (no_sub, sphere, vort; 1% subhalo mass) of
`--seed` (default 17, not the training seed 0): the parameters come from the simulator's own
generators (training.simulate.image_rngs, draw_params), so every set sees the same lenses;
each set draws its own Poisson noise from the image's noise generator.

    .venv/bin/python bench/bench_instrument.py [--n 100] [--checkpoints checkpoints/model_a]

LensFit costs about 0.15-0.4 s per image on a 2-core CPU: --n 100 (1,200 images) takes
roughly 10 minutes.
"""

import argparse
import dataclasses
import io
import os
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The service sets this before torch loads (see app/__init__.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from astropy.io import fits  # noqa: E402
from tqdm import tqdm  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fastapi.testclient import TestClient  # noqa: E402

from app.main import create_app, wait_started  # noqa: E402
from app.settings import Settings  # noqa: E402
from deeplense.fits_layout import ImageExtras  # noqa: E402
from deeplense.instrument import FWHM_PER_SIGMA, Instrument, gaussian_kernel  # noqa: E402
from deeplense.metrics import auc_standard_error, roc_auc  # noqa: E402
from deeplense.observation import prepare_observation  # noqa: E402
from deeplense.scores import compute_scores  # noqa: E402
from models.checkpoint import find_checkpoints, load_checkpoint  # noqa: E402
from training.lensing.noise import noise_sigma, poisson_observation  # noqa: E402
from training.lensing.render import LensParams, SimConfig, render_components  # noqa: E402
from training.simulate import draw_params, get_spec, image_rngs  # noqa: E402

CLASSES = ("no_sub", "sphere", "vort")
SIM_PIXEL_SCALE = 0.05  # arcsec: the pixel the simulator's Sersic intensities are per
SUB_PIXEL = 0.025  # arcsec: the simulator's sub-pixel (supersampling 2 at 0.05")
EUCLID_SIZE, EUCLID_SCALE, EUCLID_FWHM = 100, 0.1, 0.16  # the survey: pixels, arcsec
SETS = ("card", "wide_psf", "euclid", "card_no_err")


@dataclass(frozen=True)
class ImagingSet:
    """How one set's lenses are seen and uploaded."""

    name: str
    image_size: int  # pixels per side
    pixel_scale: float  # arcsec per pixel
    psf_sigma: float  # arcsec, Gaussian
    with_err: bool = True  # an ERR extension (the true sigma)
    with_psf: bool = True  # a PSF extension (the kernel the image was blurred with)

    @property
    def area_ratio(self) -> float:
        """Photons a pixel collects relative to the simulator's 0.05" pixel."""
        return (self.pixel_scale / SIM_PIXEL_SCALE) ** 2

    def sim_config(self) -> SimConfig:
        return SimConfig(
            image_size=self.image_size,
            pixel_scale_arcsec=self.pixel_scale,
            psf_sigma=self.psf_sigma,
            supersampling=max(2, round(self.pixel_scale / SUB_PIXEL)),
        )

    def describe(self) -> str:
        fwhm = FWHM_PER_SIGMA * self.psf_sigma
        parts = ["SCI"] + ["ERR"] * self.with_err + ["PSF"] * self.with_psf + ["PIXSCALE"]
        return (
            f'{self.image_size}x{self.image_size} of {self.pixel_scale:g}", PSF sigma '
            f'{self.psf_sigma:.3f}" (FWHM {fwhm:.3f}"); {"+".join(parts)}'
        )


def imaging_sets(card: Instrument, image_size: int) -> dict[str, ImagingSet]:
    """The four sets (module docstring) for a checkpoint of `card` and side `image_size`."""
    sigma = card.psf_sigma_arcsec
    base = ImagingSet("card", image_size, card.pixel_scale, sigma)
    return {
        "card": base,
        "wide_psf": ImagingSet("wide_psf", image_size, card.pixel_scale, 1.2 * sigma),
        "euclid": ImagingSet("euclid", EUCLID_SIZE, EUCLID_SCALE, EUCLID_FWHM / FWHM_PER_SIGMA),
        "card_no_err": ImagingSet("card_no_err", image_size, card.pixel_scale, sigma, False),
    }


def noiseless(params: LensParams, imaging: ImagingSet) -> np.ndarray:
    """The noiseless rate (counts/s per pixel of `imaging`, the pixel's area included)."""
    return render_components(params, imaging.sim_config()).rate * imaging.area_ratio


def observe(
    params: LensParams, imaging: ImagingSet, noise_rng: np.random.Generator, sky: float
) -> tuple[np.ndarray, np.ndarray]:
    """(SCI, ERR) in counts/s per pixel of `imaging`: the noiseless rate and the sky scaled
    by the pixel's area, Poisson noise at the params' exposure, sky subtracted."""
    rate = noiseless(params, imaging)
    sky_rate = sky * imaging.area_ratio
    sci = poisson_observation(rate, params.exposure, sky_rate, noise_rng)
    return sci, noise_sigma(rate, params.exposure, sky_rate)


def astronomer_fits(
    sci: np.ndarray, pixel_scale: float, err: np.ndarray | None, psf: np.ndarray | None
) -> bytes:
    """A FITS file as a survey stores a cutout: an empty primary, SCI (counts/s, PIXSCALE in
    arcsec and BUNIT in its header), then ERR (sigma, counts/s) and PSF when given."""
    header = fits.Header()
    header["PIXSCALE"] = (pixel_scale, "arcsec per pixel")
    header["BUNIT"] = "counts/s"
    hdus: list[Any] = [fits.PrimaryHDU(), fits.ImageHDU(sci.astype(np.float32), header, "SCI")]
    if err is not None:
        hdus.append(fits.ImageHDU(err.astype(np.float32), name="ERR"))
    if psf is not None:
        hdus.append(fits.ImageHDU(psf.astype(np.float32), name="PSF"))
    buffer = io.BytesIO()
    fits.HDUList(hdus).writeto(buffer)
    return buffer.getvalue()


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array.astype(np.float32), allow_pickle=False)
    return buffer.getvalue()


def lens_files(
    imaging: ImagingSet, n: int, seed: int, fraction: float
) -> Iterator[tuple[str, str, bytes]]:
    """(class, filename, FITS bytes) of test images 0..n-1 per class seen through `imaging`."""
    spec, sky = get_spec("model_a", subhalo_mass_fraction=fraction), SimConfig().sky
    kernel = gaussian_kernel(imaging.psf_sigma / imaging.pixel_scale)
    for cls in CLASSES:
        for index in range(n):
            params_rng, noise_rng = image_rngs(seed, "test", cls, index)
            params = draw_params(spec, cls, params_rng)
            sci, err = observe(params, imaging, noise_rng, sky)
            data = astronomer_fits(sci, imaging.pixel_scale, err if imaging.with_err else None,
                                   kernel if imaging.with_psf else None)  # fmt: skip
            yield cls, f"{imaging.name}_{cls}_{index}.fits", data


@dataclass
class SetResult:
    """What the service answered for one set."""

    scores: dict[str, list[float]]  # class -> anomaly scores
    flagged: dict[str, list[bool]]  # class -> is_anomaly
    seconds: float  # wall time of the requests (decode, prepare, model, response)
    score_name: str
    instrument: dict[str, Any]  # the first result's record
    warnings: list[str]


def post(client: TestClient, files: list[tuple[str, bytes]], model: str | None) -> dict:
    params = {"include_images": "false", **({"model": model} if model else {})}
    multipart = [("files", (name, data, "application/octet-stream")) for name, data in files]
    response = client.post("/score", params=params, files=multipart)
    if response.status_code != 200:
        raise RuntimeError(f"POST /score answered {response.status_code}: {response.text[:300]}")
    return response.json()


def score_set(
    client: TestClient, imaging: ImagingSet, n: int, seed: int, fraction: float,
    batch: int, model: str | None,
) -> SetResult:  # fmt: skip
    """Every file of the set through POST /score, `batch` files per request."""
    result = SetResult({c: [] for c in CLASSES}, {c: [] for c in CLASSES}, 0.0, "", {}, [])
    pending: list[tuple[str, str, bytes]] = []

    def flush() -> None:
        start = time.perf_counter()
        body = post(client, [(name, data) for _, name, data in pending], model)
        result.seconds += time.perf_counter() - start
        result.score_name = body["score"]
        for (cls, _, _), answer in zip(pending, body["results"], strict=True):
            if answer["error"] is not None:
                raise RuntimeError(f"{answer['filename']}: {answer['error']}")
            result.scores[cls].append(float(answer["anomaly_score"]))
            result.flagged[cls].append(bool(answer["is_anomaly"]))
            if not result.instrument:
                result.instrument, result.warnings = answer["instrument"], answer["warnings"]
        pending.clear()

    files = lens_files(imaging, n, seed, fraction)
    for item in tqdm(files, total=3 * n, desc=imaging.name, unit="image", file=sys.stderr):
        pending.append(item)
        if len(pending) == batch:
            flush()
    if pending:
        flush()
    return result


def aucs(result: SetResult) -> dict[str, float]:
    s = {c: np.asarray(v) for c, v in result.scores.items()}
    sub = np.concatenate([s["sphere"], s["vort"]])
    return {"sub": roc_auc(s["no_sub"], sub), "sphere": roc_auc(s["no_sub"], s["sphere"]),
            "vort": roc_auc(s["no_sub"], s["vort"])}  # fmt: skip


def used(record: dict[str, Any]) -> str:
    """The service's record of what it used, in a few words."""
    scale, psf, noise = record["pixel_scale"], record["psf"], record["noise"]
    where = f"{noise['source']}" + (f" {noise['extension']}" if noise["extension"] else "")
    return (
        f'scale {scale["value_arcsec"]:g}" ({scale["source"]}), PSF FWHM '
        f'{psf["fwhm_arcsec"]:.3f}" ({psf["source"]}), noise {where}'
    )


def latency(
    client: TestClient, files: dict[str, bytes], rounds: int, model: str | None
) -> dict[str, list[float]]:
    """ms of single-image POST /score per kind, the kinds taken in turn each round."""
    out: dict[str, list[float]] = {kind: [] for kind in files}
    for kind, data in files.items():  # one warm-up each
        post(client, [(kind, data)], model)
    for _ in range(rounds):
        for kind, data in files.items():
            start = time.perf_counter()
            post(client, [(kind, data)], model)
            out[kind].append(1000 * (time.perf_counter() - start))
    return out


def paired_difference(
    a: dict[str, list[float]], b: dict[str, list[float]], draws: int = 2000
) -> float:
    """Bootstrap standard error of AUC_sub(a) - AUC_sub(b) for scores of the same images
    (class -> per-image values, same order): the images are resampled, both sets alike."""
    rng = np.random.default_rng(0)
    arrays = {c: (np.asarray(a[c]), np.asarray(b[c])) for c in CLASSES}
    diffs = []
    for _ in range(draws):
        pick = {c: rng.integers(0, len(arrays[c][0]), len(arrays[c][0])) for c in CLASSES}
        pair = [
            roc_auc(arrays["no_sub"][k][pick["no_sub"]],
                    np.concatenate([arrays[c][k][pick[c]] for c in ("sphere", "vort")]))
            for k in (0, 1)
        ]  # fmt: skip
        diffs.append(pair[0] - pair[1])
    return float(np.std(diffs))


def oracle(
    imaging: ImagingSet, card: Instrument, side: int, n: int, seed: int, fraction: float,
    score: str,
) -> dict[str, dict[str, list[float]]]:  # fmt: skip
    """The exact-smooth-lens diagnostic of one set: each image (prepared as the service
    prepares its FITS: ERR, PSF, PIXSCALE) scored by `score` against its own noiseless smooth
    lens (no subhalos) drawn through (own) the image's PSF and (card) the card's PSF, each
    prepared alike and fitted to the image by noise-weighted least squares in amplitude and
    offset. -> template -> class -> (n,) values. No network: what an exact renderer reaches,
    with the right PSF and with the card's (the one LensFit's renderer draws with)."""
    spec, sky = get_spec("model_a", subhalo_mass_fraction=fraction), SimConfig().sky
    kernel = gaussian_kernel(imaging.psf_sigma / imaging.pixel_scale)
    card_sigma = card.psf_sigma_arcsec
    templates = {"own": imaging, "card": dataclasses.replace(imaging, psf_sigma=card_sigma)}
    out: dict[str, dict[str, list[float]]] = {t: {c: [] for c in CLASSES} for t in templates}
    items = [(cls, i) for cls in CLASSES for i in range(n)]
    for cls, index in tqdm(items, desc=f"oracle {imaging.name}", unit="image", file=sys.stderr):
        params_rng, noise_rng = image_rngs(seed, "test", cls, index)
        params = draw_params(spec, cls, params_rng)
        sci, err = observe(params, imaging, noise_rng, sky)
        extras = ImageExtras(err, "ERR", kernel, imaging.pixel_scale, "PIXSCALE")
        seen = prepare_observation(sci, side, card, "image", extras)
        x = torch.from_numpy(seen.x)[None].double()  # (1, 1, S, S)
        sigma = torch.from_numpy(seen.sigma)[None].double()
        valid = None if seen.valid is None else torch.from_numpy(seen.valid)[None]
        weight = torch.where(torch.isfinite(sigma), sigma.pow(-2), 0.0).flatten()
        smooth = dataclasses.replace(params, theta_sub=0.0, subhalos=(), subhalo_theta=())
        for name, through in templates.items():
            rate = noiseless(smooth, through)
            t = torch.from_numpy(prepare_observation(rate, side, card, "model", extras).x)
            design = torch.stack(
                [t.double().flatten(), torch.ones(t.numel(), dtype=torch.float64)], 1
            )
            root = weight.sqrt()[:, None]
            coef = torch.linalg.lstsq(design * root, x.flatten()[:, None] * root).solution
            x_hat = (design @ coef).reshape(x.shape)
            value = compute_scores(x, x_hat, [score], seen.psf_sigma_pixels, None, sigma, valid)
            out[name][cls].append(float(value.values[score][0]))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=100, help="test images per class")
    parser.add_argument("--seed", type=int, default=17, help="simulation seed (training: 0)")
    parser.add_argument("--fraction", type=float, default=0.01, help="subhalo mass fraction")
    parser.add_argument("--checkpoints", type=Path, default=REPO / "checkpoints" / "model_a")
    parser.add_argument("--model", default=None, help="default: the service's default model")
    parser.add_argument("--sets", nargs="+", choices=SETS, default=list(SETS), help="sets")
    parser.add_argument("--batch", type=int, default=25, help="files per request")
    parser.add_argument("--latency-rounds", type=int, default=10, help="0: skip the latency")
    parser.add_argument("--no-oracle", action="store_true", help="skip the exact-lens diagnostic")
    args = parser.parse_args()

    settings = Settings(checkpoint_dir=args.checkpoints, device="cpu", request_timeout_s=3600.0,
                        log_level="WARNING")  # fmt: skip
    with TestClient(app := create_app(settings)) as client:
        wait_started(app)  # the models load in the background
        model = args.model  # None: each request names none, the service picks its default
        name = args.model or default_model(client)
        loaded = load_checkpoint(find_checkpoints(args.checkpoints)[name])
        card, side = loaded.config.input.instrument(), loaded.config.input.height
        sets = imaging_sets(card, side)
        print(
            f"model {name} ({args.checkpoints.name}); card: {side}x{side} of "
            f'{card.pixel_scale:g}", PSF sigma {card.psf_sigma_arcsec:g}"; '
            f"{args.n} test images per class (seed {args.seed}, subhalo mass fraction "
            f"{args.fraction:g}); load average {os.getloadavg()[0]:.1f} at the start\n"
        )
        results = {
            s: score_set(client, sets[s], args.n, args.seed, args.fraction, args.batch, model)
            for s in args.sets
        }
        load_after = os.getloadavg()[0]
        score = next(iter(results.values())).score_name
        print(f"ROC-AUC with {score} (the model's default score), +- 1 s.e. (Hanley-McNeil)\n")
        print("| set | images, upload | AUC sub | AUC sphere | AUC vort | median no_sub score "
              "| flagged no_sub / sub | ms / image |")  # fmt: skip
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        table: dict[str, dict[str, float]] = {}
        for s, r in results.items():
            a = aucs(r)
            table[s] = a
            error = auc_standard_error(a["sub"], 2 * args.n, args.n)
            fp = float(np.mean(r.flagged["no_sub"]))
            tp = float(np.mean(r.flagged["sphere"] + r.flagged["vort"]))
            print(
                f"| {s} | {sets[s].describe()} | {a['sub']:.3f} +- {error:.3f} | "
                f"{a['sphere']:.3f} | {a['vort']:.3f} | "
                f"{statistics.median(r.scores['no_sub']):.3f} | {fp:.2f} / {tp:.2f} | "
                f"{1000 * r.seconds / (3 * args.n):.0f} |"
            )
        print("\nWhat the service used (first file of each set):")
        for s, r in results.items():
            print(f"- {s}: {used(r.instrument)}" + "".join(f"; warning: {w}" for w in r.warnings))
        goals(table)
        if "card" in results and "card_no_err" in results:
            se = paired_difference(results["card"].scores, results["card_no_err"].scores)
            print(f"  (card - card_no_err: paired bootstrap s.e. of the difference {se:.3f})")
        print(f"\nload average {load_after:.1f} after scoring")
        if args.latency_rounds > 0:
            files = latency_files(sets, args.seed, args.fraction)
            ms = latency(client, files, args.latency_rounds, model)
            print(
                f"\nSingle-image POST /score, {args.latency_rounds} round(s), kinds in turn "
                f"(load average {os.getloadavg()[0]:.1f} after):\n"
            )
            print("| upload | bytes | p50 ms | min ms | max ms |")
            print("| --- | --- | --- | --- | --- |")
            for kind, values in ms.items():
                print(f"| {kind} | {len(files[kind])} | {statistics.median(values):.0f} | "
                      f"{min(values):.0f} | {max(values):.0f} |")  # fmt: skip
        if not args.no_oracle:
            diagnose(card, side, args, score, sets)
    return 0


def diagnose(
    card: Instrument, side: int, args: argparse.Namespace, score: str, sets: dict[str, ImagingSet]
) -> None:
    """Print the exact-smooth-lens diagnostic (`oracle`) of the sets drawn at a new PSF."""
    rows = [s for s in ("card", "wide_psf", "euclid") if s in args.sets]
    print(
        f"\nDiagnostic, no network: {score} of each image against its exact noiseless smooth "
        "lens (amplitude and offset fitted), drawn through the image's own PSF or the card's "
        "(LensFit's renderer draws with the card's)\n"
    )
    print(
        "| set | smooth lens drawn with | AUC sub | AUC sphere | AUC vort | median no_sub score |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for s in rows:
        values = oracle(sets[s], card, side, args.n, args.seed, args.fraction, score)
        for template, scores in values.items():
            if s == "card" and template == "card":
                continue  # the same PSF
            r = SetResult(scores, {}, 0.0, score, {}, [])
            a = aucs(r)
            sigma = sets[s].psf_sigma if template == "own" else card.psf_sigma_arcsec
            print(f"| {s} | {template} PSF (sigma {sigma:.3f}\") | {a['sub']:.3f} | "
                  f"{a['sphere']:.3f} | {a['vort']:.3f} | "
                  f"{statistics.median(scores['no_sub']):.3f} |")  # fmt: skip


def default_model(client: TestClient) -> str:
    """The model the service scores with when a request names none."""
    return str(client.get("/models").json()["default"])


def latency_files(sets: dict[str, ImagingSet], seed: int, fraction: float) -> dict[str, bytes]:
    """One no_sub lens as plain .npy (card SCI), as card FITS and as euclid FITS."""
    out: dict[str, bytes] = {}
    for s in ("card", "euclid"):
        cls, _, data = next(lens_files(sets[s], 1, seed, fraction))
        if s == "card":
            with fits.open(io.BytesIO(data)) as hdus:
                out["card .npy (SCI only)"] = npy_bytes(np.asarray(hdus["SCI"].data))
        out[f"{s} FITS (SCI+ERR+PSF)"] = data
    return out


def goals(table: dict[str, dict[str, float]]) -> None:
    """The issue's goals, met or missed, for the sets measured."""
    lines = []
    if "card" in table and "wide_psf" in table:
        d = table["wide_psf"]["sub"] - table["card"]["sub"]
        lines.append(f"wide_psf - card = {d:+.3f} (goal: within 0.02): "
                     + ("met" if abs(d) <= 0.02 else "MISSED"))  # fmt: skip
    if "euclid" in table:
        v = table["euclid"]["sub"]
        lines.append(f"euclid = {v:.3f} (goal: >= 0.85): " + ("met" if v >= 0.85 else "MISSED"))
    if "card" in table and "card_no_err" in table:
        d = table["card"]["sub"] - table["card_no_err"]["sub"]
        lines.append(f"card (ERR supplied) - card_no_err (estimated) = {d:+.3f} (goal: >= 0): "
                     + ("met" if d >= 0 else "MISSED"))  # fmt: skip
    if lines:
        print("\nGoals:\n" + "\n".join(f"- {line}" for line in lines))


if __name__ == "__main__":
    sys.exit(main())

"""Why a study model at the study's reconstruction quality misses the published AUC (issue 18).

Every test image of a simulated set is re-rendered from its parameters.csv row and seed
(`training.simulate`), so its noiseless truth is known on the image's own [0, 1] scale:
truth = (rate - lo) / (hi - lo), where lo, hi are the min and max of the noisy exposure that
the min-max scaling used, and the regenerated noisy image is checked against the stored one.
For sphere and vort images the same lens without its subhalos (`smooth`) is rendered too;
for no_sub images smooth = truth. Per image, in the scaled units of the data:

- noise: mean of sigma^2 (Poisson, (rate + sky) / exposure, scaled), and the realised
  mean((x - truth)^2);
- signal: mean((truth - smooth)^2), the substructure's noiseless change;
- per model: its score mse = mean((x - x_hat)^2), its error against the noiseless truth
  mean((x_hat - truth)^2), the noise it copies (cross = mean((x - truth)(x_hat - truth)):
  mse = noise + error - 2 cross), and the share of the substructure it reproduces
  (<x_hat - smooth, truth - smooth> / <truth - smooth, truth - smooth>: 0 for a model that
  draws the smooth lens, 1 for one that draws the subhalos too);
- the same with 8-bit input (round(255 x) / 255), the study's PNGs.

Then the ROC-AUC (sub, sphere, vort against no_sub) of the model's mse and of ideal scores:
(a) its error against the noiseless truth (the noise taken out of the score), (b) its mse
divided by each image's own noise variance, (c) chi2 with the true per-pixel sigma, the exact
smooth lens as the reconstruction (no model error; `training.bounds`' exact bound), and
what the study's spread (9% of 1.27e-4) or the model's own no_sub spread would give if the
whole signal reached the score. Deterministic: it reads the checkpoints and the data.

    .venv/bin/python bench/study_gap.py data/model_a_study_test --checkpoints runs/issue18/model_a \
        --model aae --model dcae [--n 500] [--save per_image.npz]

About 2 minutes for 500 images per class and two models on the busy 2-core CPU.
"""

import argparse
import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import brentq
from scipy.stats import norm, spearmanr

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from deeplense.metrics import roc_auc  # noqa: E402
from deeplense.vocabulary import CLASSES, NORMAL, read_manifest  # noqa: E402
from models.checkpoint import find_checkpoints, load_checkpoint  # noqa: E402
from training.evaluate import COMPARISONS  # noqa: E402
from training.lensing.noise import min_max_scale, noise_sigma, poisson_observation  # noqa: E402
from training.lensing.render import SimConfig, render_components  # noqa: E402
from training.simulate import image_rngs, read_split_parameters  # noqa: E402

# Per-image parameters the model error is compared with: name -> value of a LensParams.
PARAMETERS = {
    "shear magnitude": lambda p: float(np.hypot(p.gamma1, p.gamma2)),
    "source radius (arcsec)": lambda p: float(np.hypot(p.source_x, p.source_y)),
    "source intensity": lambda p: p.source_intensity,
    "source axis ratio": lambda p: p.source_q,
    "lens axis ratio": lambda p: p.lens_q,
}
STUDY_MSE, STUDY_SPREAD = 1.27e-4, 0.09  # the study's AAE on no_sub: mean, std / mean
LEVELS = 255.0  # 8-bit PNG


@dataclass
class Truth:
    """One class's first n test images and their truths, each (n, H, W) float32."""

    x: np.ndarray  # the stored images
    truth: np.ndarray  # noiseless, on the image's scale
    smooth: np.ndarray  # noiseless without subhalos, on the image's scale
    sigma2: np.ndarray  # per-pixel Poisson variance, scaled
    mismatch: float  # max |regenerated - stored|
    params: dict[str, np.ndarray]  # name -> (n,) lens and source parameters (PARAMETERS)


def render_truths(directory: Path, cls: str, n: int) -> Truth:
    """Re-render the first n test images of `cls` with and without noise and subhalos."""
    manifest = read_manifest(directory)
    config = SimConfig(**manifest["config"])
    params = read_split_parameters(directory, "test")
    x = np.load(directory / "test" / f"{cls}.npy", mmap_mode="r", allow_pickle=False)[:n, 0]
    out = {k: np.empty(x.shape, dtype=np.float32) for k in ("truth", "smooth", "sigma2")}
    mismatch = 0.0
    values = {name: np.empty(len(x)) for name in PARAMETERS}
    for i in range(len(x)):
        p = params[(cls, i)]
        for name, get in PARAMETERS.items():
            values[name][i] = get(p)
        rate = render_components(p, config).rate  # (H, W) counts/s, float64
        noisy = poisson_observation(
            rate, p.exposure, config.sky, image_rngs(int(manifest["seed"]), "test", cls, i)[1]
        )
        mismatch = max(mismatch, float(np.abs(min_max_scale(noisy) - x[i]).max()))
        lo, span = noisy.min(), noisy.max() - noisy.min()
        out["truth"][i] = (rate - lo) / span
        out["sigma2"][i] = (noise_sigma(rate, p.exposure, config.sky) / span) ** 2
        if p.subhalos:
            smooth = dataclasses.replace(p, theta_sub=0.0, subhalos=(), subhalo_theta=())
            out["smooth"][i] = (render_components(smooth, config).rate - lo) / span
        else:
            out["smooth"][i] = out["truth"][i]
    return Truth(x=np.array(x), mismatch=mismatch, params=values, **out)


@torch.inference_mode()
def reconstruct(model: torch.nn.Module, images: np.ndarray, batch: int = 50) -> np.ndarray:
    """(n, H, W) float32 -> the model's reconstructions (n, H, W) float32, in eval mode."""
    model.eval()
    parts = []
    for start in range(0, len(images), batch):
        x = torch.from_numpy(np.ascontiguousarray(images[start : start + batch]))[:, None]
        parts.append(model.reconstruct(x)[:, 0].numpy())  # type: ignore[operator]
    return np.concatenate(parts)


def per_image(a: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """(n,) mean over pixels of a * b (a^2 without b), in float64."""
    a64 = a.astype(np.float64)
    return (a64 * (a64 if b is None else b.astype(np.float64))).mean(axis=(1, 2))


def chi2(residual: np.ndarray, sigma2: np.ndarray) -> np.ndarray:
    """(n,) mean over pixels of residual^2 / sigma^2, in float64."""
    return (residual.astype(np.float64) ** 2 / sigma2).mean(axis=(1, 2))


def image_stats(t: Truth) -> dict[str, np.ndarray]:
    """The model-free per-image numbers of one class."""
    x8 = np.round(t.x * LEVELS) / LEVELS
    return {
        "noise_var": t.sigma2.astype(np.float64).mean(axis=(1, 2)),
        "noise_mse": per_image(t.x - t.truth),
        "noise_mse_8bit": per_image(x8 - t.truth),
        "signal": per_image(t.truth - t.smooth),
        "exact_mse": per_image(t.x - t.smooth),
        "exact_mse_8bit": per_image(x8 - t.smooth),
        "exact_chi2": chi2(t.x - t.smooth, t.sigma2),
        **{f"param.{name}": v for name, v in t.params.items()},
    }


def model_stats(model: torch.nn.Module, t: Truth) -> dict[str, np.ndarray]:
    """One model's per-image numbers on one class."""
    x_hat = reconstruct(model, t.x)
    x8 = (np.round(t.x * LEVELS) / LEVELS).astype(np.float32)
    change = (t.truth - t.smooth).astype(np.float64)
    drawn = ((x_hat - t.smooth).astype(np.float64) * change).sum(axis=(1, 2))
    power = (change**2).sum(axis=(1, 2))
    return {
        "mse": per_image(t.x - x_hat),
        "error": per_image(x_hat - t.truth),
        "error_smooth": per_image(x_hat - t.smooth),
        "cross": per_image(t.x - t.truth, x_hat - t.truth),
        "captured": np.divide(drawn, power, out=np.full_like(power, np.nan), where=power > 0),
        "chi2": chi2(t.x - x_hat, t.sigma2),
        "mse_8bit": per_image(x8 - reconstruct(model, x8)),
    }


def aucs(values: dict[str, np.ndarray]) -> str:
    """'sub / sphere / vort' AUCs of one score's per-class values."""
    return " / ".join(
        f"{roc_auc(values[NORMAL], np.concatenate([values[c] for c in classes])):.3f}"
        for classes in COMPARISONS.values()
    )


def gaussian_auc(signal: np.ndarray, std: float) -> float:
    """AUC when both classes share a normal spread `std` and each sub image adds its signal."""
    return float(np.mean(norm.cdf(signal / (np.sqrt(2.0) * std))))


def spread_for_auc(signal: np.ndarray, auc: float) -> float:
    """The normal spread at which `gaussian_auc` equals `auc` (0.5 < auc < its limit)."""
    return float(brentq(lambda std: gaussian_auc(signal, std) - auc, 1e-9, 1.0))


def spread(v: np.ndarray) -> str:
    return f"{v.mean():.3g}; {v.std() / v.mean():.0%}"


def report(stats: dict[str, dict[str, np.ndarray]], models: list[str], published: float) -> None:
    """Print the tables (markdown) from class -> name -> (n,) values."""
    normal = stats[NORMAL]
    print("\n### no_sub: mean; std/mean across images (scaled units)\n")
    print("| quantity | value |\n| --- | --- |")
    for name, label in [
        ("noise_var", "noise variance, mean of sigma^2"),
        ("noise_mse", "realised noise, mean (x - truth)^2"),
        ("noise_mse_8bit", "realised noise of the 8-bit image"),
    ]:
        print(f"| {label} | {spread(normal[name])} |")
    for m in models:
        mse, err, cross = normal[f"{m}.mse"], normal[f"{m}.error"], normal[f"{m}.cross"]
        print(f"| {m}: mse (the score) | {spread(mse)} |")
        print(f"| {m}: error vs noiseless truth | {spread(err)} |")
        print(f"| {m}: noise copied, 2 cross (mean; std) | {2 * cross.mean():.2g}; "
              f"{2 * cross.std():.2g} |")  # fmt: skip
        rho = spearmanr(mse, normal["noise_var"]).statistic
        rho_e = spearmanr(mse, err).statistic
        explained = 1.0 - np.var(mse - err) / np.var(mse)
        print(
            f"| {m}: Spearman(mse, noise var) / Spearman(mse, error); variance of mse "
            f"explained by the error | {rho:.2f} / {rho_e:.2f}; {explained:.0%} |"
        )

    print("\n### no_sub: Spearman correlation of each model's error vs truth with the lens\n")
    print("| parameter | " + " | ".join(models) + " |")
    print("|" + " --- |" * (len(models) + 1))
    for name in PARAMETERS:
        cells = [f"{spearmanr(normal[f'{m}.error'], normal[f'param.{name}']).statistic:+.2f}"
                 for m in models]  # fmt: skip
        print(f"| {name} | " + " | ".join(cells) + " |")
    design = np.stack([normal[f"param.{name}"] for name in PARAMETERS], axis=1)
    design = np.concatenate([design, design**2, np.ones((len(design), 1))], axis=1)
    cells = []
    for m in models:
        err = normal[f"{m}.error"]
        fit = design @ np.linalg.lstsq(design, err, rcond=None)[0]
        cells.append(f"{1.0 - np.var(err - fit) / np.var(err):.0%}")
    print(
        "| variance of the error explained by the parameters (least squares, linear and "
        "squared terms) | " + " | ".join(cells) + " |"
    )
    for a, b in zip(models, models[1:], strict=False):
        rho = spearmanr(normal[f"{a}.error"], normal[f"{b}.error"]).statistic
        print(f"| {b}'s error (the same images hard for both?) | {rho:+.2f} with {a} |")

    print("\n### The substructure: mean (median) per class\n")
    header = ["signal, mean (truth - smooth)^2"] + [
        f"{m}: {q}" for m in models for q in ("mse rise over no_sub", "share of signal drawn")
    ]
    print("| class | " + " | ".join(header) + " |")
    print("|" + " --- |" * (len(header) + 1))
    for cls in (c for c in CLASSES if c != NORMAL):
        s = stats[cls]
        cells = [f"{s['signal'].mean():.3g} ({np.median(s['signal']):.3g})"]
        for m in models:
            rise = s[f"{m}.mse"].mean() - normal[f"{m}.mse"].mean()
            cells += [f"{rise:.3g}", f"{np.nanmean(s[f'{m}.captured']):.2f} "
                      f"({np.nanmedian(s[f'{m}.captured']):.2f})"]  # fmt: skip
        print(f"| {cls} | " + " | ".join(cells) + " |")

    def per_class(key: str, scale: str | None = None) -> dict[str, np.ndarray]:
        return {c: stats[c][key] / (stats[c][scale] if scale else 1.0) for c in CLASSES}

    print("\n### ROC-AUC sub / sphere / vort against no_sub\n")
    print("| score | AUC |\n| --- | --- |")
    for m in models:
        print(f"| {m}: mse (the study's score) | {aucs(per_class(f'{m}.mse'))} |")
        print(f"| {m}: mse on 8-bit input | {aucs(per_class(f'{m}.mse_8bit'))} |")
        print(f"| {m}: (a) error vs noiseless truth | {aucs(per_class(f'{m}.error'))} |")
        print(f"| {m}: (b) mse / own noise variance | {aucs(per_class(f'{m}.mse', 'noise_var'))} |")
        print(f"| {m}: chi2, true sigma | {aucs(per_class(f'{m}.chi2'))} |")
        signal = np.concatenate([stats[c]["signal"] for c in CLASSES if c != NORMAL])
        own = normal[f"{m}.mse"].std()
        print(f"| {m}: its no_sub spread ({own:.2g}) + the whole signal, normal approx. | "
              f"{gaussian_auc(signal, own):.3f} (sub) |")  # fmt: skip
    print(f"| exact smooth lens: mse | {aucs(per_class('exact_mse'))} |")
    print(f"| exact smooth lens: mse, 8-bit input | {aucs(per_class('exact_mse_8bit'))} |")
    print(f"| exact smooth lens: mse / noise variance | "
          f"{aucs(per_class('exact_mse', 'noise_var'))} |")  # fmt: skip
    print(f"| exact smooth lens: chi2, true sigma | {aucs(per_class('exact_chi2'))} |")
    signal = np.concatenate([stats[c]["signal"] for c in CLASSES if c != NORMAL])
    study = STUDY_MSE * STUDY_SPREAD
    print(f"| the study's spread ({study:.2g}) + the whole signal, normal approx. | "
          f"{gaussian_auc(signal, study):.3f} (sub) |")  # fmt: skip
    print(f"| the no_sub spread at which the whole signal gives the published {published} "
          f"(normal approx.) | {spread_for_auc(signal, published):.2g} |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path, nargs="?", default=Path("data/model_a_study_test"))
    parser.add_argument("--checkpoints", type=Path, default=Path("runs/issue18/model_a"))
    parser.add_argument("--model", action="append", help="(default: every one in --checkpoints)")
    parser.add_argument("--n", type=int, default=500, help="test images per class (500)")
    parser.add_argument(
        "--published", type=float, default=0.932, help="published AUC to compare (Model A AAE's)"
    )
    parser.add_argument("--save", type=Path, help="also write every per-image number (.npz)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # deterministic, and polite on the shared CPU
    found = find_checkpoints(args.checkpoints)
    names = args.model or sorted(found)
    loaded = {m: load_checkpoint(found[m]).model for m in names}
    start = time.perf_counter()
    stats: dict[str, dict[str, np.ndarray]] = {}
    for cls in CLASSES:
        t = render_truths(args.data, cls, args.n)
        stats[cls] = image_stats(t)
        for m, model in loaded.items():
            stats[cls].update({f"{m}.{k}": v for k, v in model_stats(model, t).items()})
        print(f"{cls}: {len(t.x)} images, regenerated vs stored max |diff| {t.mismatch:.1e} "
              f"({time.perf_counter() - start:.0f} s)", flush=True)  # fmt: skip
    print(f"\n{args.data} ({read_manifest(args.data)['dataset']}), checkpoints {args.checkpoints}: "
          f"{', '.join(names)}; first {args.n} test images per class")  # fmt: skip
    report(stats, names, args.published)
    if args.save:
        flat = {f"{c}/{k}": v for c, values in stats.items() for k, v in values.items()}
        np.savez(args.save, **flat)  # type: ignore[arg-type]


if __name__ == "__main__":
    main()

"""Where a refined model loses the signal: its encoder's start, or the refinement.

For the first N test images per class of a simulated set (each image's true PSF kernel,
noise estimated from the image), LensFit 2's flexible lens is refitted under the
checkpoint's prior from several starts: the encoder's guess, the true lens
(`training.flexible_bound.truth_theta`), and the true lens moved by eps times each
parameter's range (a standard normal draw per image). Each start is run for K
Levenberg-Marquardt steps. It prints, per start, the median chi2 per pixel of the normal
lenses (1: a fit to the noise) and the AUC of sphere and vortex against them by the
checkpoint's default score (chi2_psf_light where that is drawn by the fit, as imaging_gain
is); then the encoder's median error per parameter.

    .venv/bin/python bench/start_gap.py data/bound/model_r \
        --checkpoint checkpoints/model_r/lensfit2 --n 10 --starts encoder:4 truth:6 eps0.1:6
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deeplense.lensing.flexible import NAMES  # noqa: E402
from deeplense.lensing.flexible_fit import fit_flexible  # noqa: E402
from deeplense.metrics import roc_auc  # noqa: E402
from deeplense.noise import estimate_noise  # noqa: E402
from deeplense.scores import compute_scores, drawn_from_image  # noqa: E402
from deeplense.vocabulary import dataset_instrument  # noqa: E402
from models.checkpoint import load_checkpoint  # noqa: E402
from training.flexible_bound import read_rows, truth_theta  # noqa: E402
from training.image_psfs import psf_kernel  # noqa: E402

CLASSES = ("no_sub", "sphere", "vort")


def parse_start(text: str) -> tuple[str, int]:
    """'encoder:4', 'truth:6' or 'eps0.1:6' -> (start, steps)."""
    name, _, steps = text.partition(":")
    valid = name in ("encoder", "truth") or (name.startswith("eps") and _is_float(name[3:]))
    if not valid or not steps.isdigit():
        raise argparse.ArgumentTypeError(
            f"{text!r}: give START:STEPS, START one of encoder, truth, eps<FRACTION>"
        )
    return name, int(steps)


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def start_gap(
    directory: Path, checkpoint: Path, n: int, starts: list[tuple[str, int]], seed: int = 0
) -> dict:
    """Per start: chi2 per pixel and default score (class -> (n,)); the encoder's and the
    truth's parameters of each class (n, 13); seconds per fit."""
    loaded = load_checkpoint(checkpoint)
    model = loaded.model
    if not hasattr(model, "encoder_start") or not hasattr(model, "lens_on"):
        raise SystemExit(f"error: {loaded.config.architecture} is not a flexible refined model")
    score = drawn_from_image(loaded.config.default_score)  # the fit's own scores: not here
    instrument = dataset_instrument(directory)
    scale = model.config.pixel_scale if instrument is None else instrument.pixel_scale
    nominal = model.config.psf_sigma if instrument is None else instrument.psf_sigma
    rows = read_rows(directory, "test", n)
    prior = model.prior()  # fit_flexible casts it to the images' float64
    generator = torch.Generator().manual_seed(seed)
    out: dict = {"chi2": {}, "score": {}, "seconds": {}, "encoder": {}, "truth": {}}
    for cls in CLASSES:
        images = np.load(Path(directory) / "test" / f"{cls}.npy", allow_pickle=False)[:n]
        x_all = torch.from_numpy(np.asarray(images, dtype=np.float64))
        side = x_all.shape[-1]
        lens = model.lens_on(side, scale)
        encoder = model.encoder_start(x_all.float(), scale).double()  # (n, 13)
        truth = torch.from_numpy(np.stack([truth_theta(rows[(cls, i)]) for i in range(len(x_all))]))
        out["encoder"][cls], out["truth"][cls] = encoder.numpy(), truth.numpy()
        sigmas = [estimate_noise(x_all[i : i + 1], nominal / scale) for i in range(len(x_all))]
        psfs = [psf_kernel(rows[(cls, i)], scale, nominal) for i in range(len(x_all))]
        for name, steps in starts:
            key = f"{name}:{steps}"
            chi2, values, seconds = [], [], []
            for i in range(len(x_all)):
                x, sigma, psf = x_all[i : i + 1], sigmas[i], psfs[i]
                if name == "encoder":
                    theta = encoder[i : i + 1]
                elif name == "truth":
                    theta = truth[i : i + 1]
                else:
                    z = torch.randn((1, len(NAMES)), generator=generator, dtype=torch.float64)
                    theta = truth[i : i + 1] + float(name[3:]) * model.span.double() * z
                started = time.perf_counter()
                fit = fit_flexible(lens, x, sigma, psf, theta, steps, prior)
                seconds.append(time.perf_counter() - started)
                chi2.append(float(((x - fit.model) / sigma).pow(2).mean()))
                x_hat = fit.model.clamp(0.0, 1.0).float()
                scored = compute_scores(
                    x.float(), x_hat, [score], nominal / scale, sigma=sigma.float()
                )
                values.append(float(scored.values[score][0]))
            out["chi2"].setdefault(key, {})[cls] = np.array(chi2)
            out["score"].setdefault(key, {})[cls] = np.array(values)
            out["seconds"].setdefault(key, []).extend(seconds)
    out["default_score"] = score
    return out


def table(result: dict) -> str:
    score = result["default_score"]
    lines = [
        f"| start:steps | median chi2/pixel, no_sub | AUC sphere ({score}) | AUC vort | s/fit |",
        "| --- | --- | --- | --- | --- |",
    ]
    for key, chi2 in result["chi2"].items():
        s = result["score"][key]
        lines.append(
            f"| {key} | {np.median(chi2['no_sub']):.3f} | {roc_auc(s['no_sub'], s['sphere']):.3f} "
            f"| {roc_auc(s['no_sub'], s['vort']):.3f} | {np.mean(result['seconds'][key]):.1f} |"
        )
    enc, truth = result["encoder"]["no_sub"], result["truth"]["no_sub"]
    lines += ["", "| parameter | encoder's median abs error (no_sub) |", "| --- | --- |"]
    lines += [
        f"| {p} | {np.median(np.abs(enc[:, j] - truth[:, j])):.3g} |" for j, p in enumerate(NAMES)
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data", type=Path, help="simulated set with test/ and parameters.csv")
    p.add_argument("--checkpoint", type=Path, required=True, help="a lensfit2 checkpoint folder")
    p.add_argument("--n", type=int, default=10, help="test images per class (10)")
    p.add_argument(
        "--starts", type=parse_start, nargs="+", default=[("encoder", 4), ("truth", 6)],
        help="START:STEPS, START one of encoder, truth, eps<FRACTION> (encoder:4 truth:6)",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seed of the eps draws (0)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    started = time.perf_counter()
    print(table(start_gap(args.data, args.checkpoint, args.n, args.starts, args.seed)))
    print(f"\n{time.perf_counter() - started:.0f} s on one thread")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Sensitivity: the detection rate at 5% false positives against the subhalo mass fraction and
against the arcs' S/N (`training.sensitivity` has the rules).

Each checkpoint under every --checkpoints root is judged by its default score at its own
calibrated threshold (5% false positives on the validation split's normal lenses: what the
service flags); the exact bound (the noiseless smooth lens, `training.bounds`, by
chi2_psf_light) at the 95th percentile of the same set's normal lenses. The test sets at
the other mass fractions are simulated into --work (same dataset and seed as DATA_DIR, so
the same lenses; reused on the next run). The S/N table bins DATA_DIR's own lenses with
substructure (parameters.csv's snr_median) into --snr-bins bins of equal counts.

    .venv/bin/python bench/sensitivity.py DATA_DIR --checkpoints checkpoints/model_a \
        [--n 100] [--fractions 0.0025 0.005 0.01 0.02 0.04] [--plot PNG]
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from deeplense.scores import compute_scores  # noqa: E402
from deeplense.vocabulary import read_manifest  # noqa: E402
from models.checkpoint import find_checkpoints, load_checkpoint  # noqa: E402
from training.bounds import bound_reconstructions, fraction_test_set, sim_config  # noqa: E402
from training.sensitivity import (  # noqa: E402
    Rate,
    calibrated_threshold,
    default_scores,
    detection_rate,
    empirical_threshold,
    rate_by_snr,
    snr_bins,
    split_snr,
)

FRACTIONS = (0.0025, 0.005, 0.01, 0.02, 0.04)
BOUND_SCORE = "chi2_psf_light"
SUB = ("sphere", "vort")


def bound_scores(directory: Path, n: int, classes: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Class -> (n,) the exact bound's chi2_psf_light, for each of `classes`."""
    config = sim_config(directory)
    psf = config.psf_sigma / config.pixel_scale  # pixels
    out = {}
    for cls in classes:
        bounds = bound_reconstructions(directory, cls, n, False)
        values = compute_scores(
            torch.from_numpy(bounds.images), torch.from_numpy(bounds.exact), [BOUND_SCORE], psf
        ).values
        out[cls] = values[BOUND_SCORE].numpy()
    return out


def detectors(roots: list[Path]) -> dict[str, Path]:
    """'root/model' -> checkpoint folder, for every checkpoint under every root."""
    return {f"{r.name}/{name}": path for r in roots for name, path in find_checkpoints(r).items()}


def fmt(rate: Rate) -> str:
    return "—" if not np.isfinite(rate.rate) else f"{rate.rate:.2f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path, help="a simulated dataset folder (its test split)")
    parser.add_argument("--checkpoints", type=Path, action="append", default=[],
                        help="a checkpoint root (repeatable)")  # fmt: skip
    parser.add_argument("--n", type=int, default=100, help="test images per class")
    parser.add_argument("--fractions", type=float, nargs="+", default=list(FRACTIONS))
    parser.add_argument("--snr-bins", type=int, default=4)
    parser.add_argument("--fpr", type=float, default=0.05, help="the bound's false positives")
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "sensitivity")
    parser.add_argument("--plot", type=Path, default=None, help="PNG of both panels")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --plot")
    args = parser.parse_args()
    if args.plot is not None and args.plot.exists() and not args.overwrite:
        print(f"error: {args.plot} exists; pass --overwrite to replace it", file=sys.stderr)
        return 2
    if not (args.data / "manifest.json").is_file():
        print(f"error: {args.data}: not a simulated dataset (no manifest.json)", file=sys.stderr)
        return 2
    start = time.perf_counter()
    found = detectors(args.checkpoints)
    loaded = {name: load_checkpoint(path) for name, path in found.items()}
    base = float(read_manifest(args.data).get("subhalo_mass_fraction", 0.01))
    fractions = sorted(set(args.fractions) | {base})
    # name -> (threshold, how it was set, fraction -> TPR, base set's sub scores)
    by_mass: dict[str, list[Rate]] = {}  # detector -> its rate at each fraction
    base_sub: dict[str, np.ndarray] = {}  # detector -> DATA_DIR's sphere + vort scores
    # The normal lenses do not depend on the mass fraction (same seed): scored once, on
    # DATA_DIR, and each detector's threshold set there.
    normal = {"exact bound": bound_scores(args.data, args.n, ("no_sub",))["no_sub"]} | {
        name: default_scores(ckpt, args.data, args.n, ("no_sub",))["no_sub"]
        for name, ckpt in loaded.items()
    }
    thresholds: dict[str, tuple[float, str, Rate]] = {}  # threshold, how set, FPR there
    for name, scores in normal.items():
        calibrated = None if name == "exact bound" else calibrated_threshold(loaded[name])
        if calibrated is None:
            t = empirical_threshold(scores, args.fpr)
            how = f"the normal lenses' {100 * (1 - args.fpr):g}th percentile"
        else:
            t, how = calibrated, "calibrated on validation"
        thresholds[name] = (t, how, detection_rate(scores, t))
    for fraction in fractions:
        data = fraction_test_set(args.data, args.work, fraction, args.n)
        per = {"exact bound": bound_scores(data, args.n, SUB)} | {
            name: default_scores(ckpt, data, args.n, SUB) for name, ckpt in loaded.items()
        }
        for name, scores in per.items():
            sub = np.concatenate([scores[c] for c in SUB])
            by_mass.setdefault(name, []).append(detection_rate(sub, thresholds[name][0]))
            if fraction == base:
                base_sub[name] = sub
        print(f"  fraction {fraction:g} done", file=sys.stderr)
    n_sub = len(next(iter(base_sub.values())))
    snr = np.concatenate([split_snr(args.data, c, args.n) for c in SUB])[:n_sub]
    edges = snr_bins(snr, args.snr_bins)
    print(f"dataset {read_manifest(args.data)['dataset']}, first {args.n} test images per class,"
          f" {time.perf_counter() - start:.0f} s\n")  # fmt: skip
    print("Detection rate (sphere + vort flagged) against the subhalo mass fraction\n")
    print("| detector | threshold | FPR on these normal lenses | "
          + " | ".join(f"{100 * f:g}%" for f in fractions) + " |")  # fmt: skip
    print("| --- | --- | --- |" + " --- |" * len(fractions))
    for name, rates in by_mass.items():
        _, how, fpr = thresholds[name]
        print(f"| {name} | {how} | {fmt(fpr)} | " + " | ".join(fmt(r) for r in rates) + " |")
    print(f"\nDetection rate against the arcs' S/N (snr_median), at {100 * base:g}% subhalo mass\n")
    bins = [f"{lo:.1f}-{hi:.1f}" for lo, hi in zip(edges[:-1], edges[1:], strict=True)]
    print("| detector | " + " | ".join(bins) + " |")
    print("| --- |" + " --- |" * len(bins))
    by_snr = {}
    for name, sub in base_sub.items():
        by_snr[name] = rate_by_snr(sub, snr, thresholds[name][0], edges)
        print(f"| {name} | " + " | ".join(f"{fmt(r)} ({r.n})" for _, _, r in by_snr[name]) + " |")
    if args.plot is not None:
        from matplotlib.figure import Figure

        fig = Figure(figsize=(11, 4.5), layout="constrained")
        mass_ax, snr_ax = fig.subplots(1, 2)
        centres = [0.5 * (lo + hi) for lo, hi in zip(edges[:-1], edges[1:], strict=True)]
        for name in by_mass:
            style = "--" if name == "exact bound" else "-"
            mass_ax.plot([100 * f for f in fractions], [r.rate for r in by_mass[name]], style,
                         marker="o", label=name)  # fmt: skip
            snr_ax.plot(centres, [r.rate for _, _, r in by_snr[name]], style, marker="o",
                        label=name)  # fmt: skip
        mass_ax.set(xscale="log", xlabel="subhalo mass fraction (%)", ylim=(-0.02, 1.02),
                    ylabel=f"detected at {100 * args.fpr:g}% false positives")  # fmt: skip
        mass_ax.minorticks_off()
        mass_ax.set_xticks([100 * f for f in fractions], [f"{100 * f:g}" for f in fractions])
        snr_ax.set(xlabel=f"arcs' median S/N (bins of equal counts, {100 * base:g}% mass)",
                   ylim=(-0.02, 1.02))  # fmt: skip
        for ax in (mass_ax, snr_ax):
            ax.axhline(args.fpr, color="grey", linewidth=0.7)
        mass_ax.legend(fontsize=7, loc="upper left")
        fig.suptitle(f"Sensitivity ({read_manifest(args.data)['dataset']})")
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.plot, dpi=110)
        print(f"\nwrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A detection curve from `bench/oracle_auc.py` tables: AUC against the subhalo mass fraction.

Each `--point FRACTION FILE` is one oracle_auc output (its markdown table) on a set simulated
with that `--subhalo-mass-fraction`; the script prints, for one score, every bound's AUC (sub,
sphere, vort) at each fraction, and with `--plot` draws them.

    .venv/bin/python bench/bound_curve.py --point 0.01 runs/flexible_bound/tuned_model_r.txt \
        --point 0.03 runs/flexible_bound/curve_model_r_f0.03.txt \
        --point 0.1 runs/flexible_bound/curve_model_r_f0.1.txt \
        --score chi2_psf_light --plot docs/results/model_r_bound_curve.png
"""

import argparse
import sys
from pathlib import Path

COMPARISONS = ("sub", "sphere", "vort")


def read_table(path: Path) -> dict[tuple[str, str], tuple[float, float, float]]:
    """oracle_auc's rows: (score, bound) -> AUC (sub, sphere, vort)."""
    rows = {}
    for line in path.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 5 or cells[0] in ("score", "---"):
            continue
        try:
            aucs = tuple(float(c) for c in cells[2:])
        except ValueError:
            continue
        rows[cells[0], cells[1]] = (aucs[0], aucs[1], aucs[2])
    if not rows:
        raise ValueError(f"{path}: no oracle_auc table found")
    return rows


def curve(
    points: list[tuple[float, Path]], score: str
) -> dict[str, list[tuple[float, tuple[float, float, float]]]]:
    """bound -> [(fraction, AUC (sub, sphere, vort))] sorted by fraction, for `score`."""
    out: dict[str, list[tuple[float, tuple[float, float, float]]]] = {}
    for fraction, path in sorted(points):
        table = read_table(path)
        found = {bound: aucs for (s, bound), aucs in table.items() if s == score}
        if not found:
            raise ValueError(f"{path}: no rows for score {score!r}")
        for bound, aucs in found.items():
            out.setdefault(bound, []).append((fraction, aucs))
    return out


def markdown(curves: dict[str, list[tuple[float, tuple[float, float, float]]]]) -> str:
    lines = ["| bound | mass fraction | AUC sub | AUC sphere | AUC vort |", "|---|---|---|---|---|"]
    for bound, points in curves.items():
        for fraction, aucs in points:
            lines.append(
                f"| {bound} | {fraction:g} | " + " | ".join(f"{a:.3f}" for a in aucs) + " |"
            )
    return "\n".join(lines)


def plot(
    curves: dict[str, list[tuple[float, tuple[float, float, float]]]], score: str, out: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), sharey=True)
    for k, (ax, name) in enumerate(zip(axes, COMPARISONS, strict=True)):
        for bound, points in curves.items():
            ax.plot([100 * f for f, _ in points], [a[k] for _, a in points], "o-", label=bound)
        ax.axhline(0.5, color="grey", lw=0.8, ls=":")
        ax.set_xscale("log")
        ax.set_xlabel("subhalo mass, % of the lens")
        ax.set_title(f"{name} vs no_sub")
    axes[0].set_ylabel(f"ROC-AUC ({score})")
    axes[0].set_ylim(0.3, 1.02)
    axes[-1].legend(loc="lower right")
    fig.tight_layout()
    tmp = out.with_name(out.name + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--point", nargs=2, action="append", required=True, metavar=("FRACTION", "FILE"))
    p.add_argument("--score", default="chi2_psf_light")
    p.add_argument("--plot", type=Path, default=None, help="PNG to draw (replaced atomically)")
    args = p.parse_args(argv)
    try:
        points = [(float(f), Path(path)) for f, path in args.point]
        curves = curve(points, args.score)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(markdown(curves))
    if args.plot is not None:
        plot(curves, args.score, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())

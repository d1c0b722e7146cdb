"""The study's sampler and its two controls, side by side (docs/study_sampler.md).

    python scripts/sampler_controls.py REPORT_DIR REPORT_DIR-shared REPORT_DIR-nosignal

Each argument is a `deeplense evaluate` report folder (its metrics.json): the test split of
a --parameter-grid set with every class on its own grid (the study's sampler), the same with
every class on the no_sub grid (--shared-grid: only the substructure differs), and own grids
without substructure (a millionth of the lens mass: only the grids differ). Prints, per
model, the ROC-AUC (sub / sphere / vort vs no_sub) by the model's default score on each, and
the mean MSE per class. If the AUC without substructure is close to the study sampler's, the
models detect the classes' parameter grids, not the subhalos.
"""

import json
import sys
from pathlib import Path

COLUMNS = (
    "own grids (the study's sampler)",
    "one grid: substructure only",
    "own grids, no substructure",
)


def read_metrics(report: Path) -> dict[str, dict[str, float]]:
    """model -> its metrics, from REPORT/metrics.json."""
    doc = json.loads((report / "metrics.json").read_text())
    return {name: entry["metrics"] for name, entry in doc["models"].items()}


def table(reports: list[Path]) -> str:
    runs = [read_metrics(r) for r in reports]
    models = [m for m in runs[0] if all(m in run for run in runs[1:])]
    head = (
        "| model | "
        + " | ".join(f"AUC sub / sphere / vort, {c}" for c in COLUMNS)
        + " | MSE no_sub / sphere / vort (own grids) |"
    )
    lines = [head, "|---" * (len(COLUMNS) + 2) + "|"]
    for model in models:
        cells = [
            " / ".join(f"{run[model][f'auc_{cmp}']:.3f}" for cmp in ("sub", "sphere", "vort"))
            for run in runs
        ]
        mse = " / ".join(f"{runs[0][model][f'mse_{c}']:.3g}" for c in ("no_sub", "sphere", "vort"))
        lines.append(f"| {model} | " + " | ".join(cells) + f" | {mse} |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: sampler_controls.py REPORT REPORT-shared REPORT-nosignal", file=sys.stderr)
        return 2
    try:
        print(table([Path(a) for a in argv]))
    except (OSError, KeyError, ValueError) as exc:
        print(f"error: cannot read the reports: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

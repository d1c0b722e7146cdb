"""A refit's score judged against what the refit leaves on normal lenses of the same S/N.

What a smooth model fails to fit grows with the image's S/N, so a bright normal lens can
outscore a faint one with subhalos. This fits the normal lenses' expectation on one split,
log score = a + b log S/N (S/N: `snr_median` or `snr_peak` of parameters.csv), and scores
another split by the excess, log score - (a + b log S/N): the fit uses the first split's
no_sub images only, never the split it is reported on. Inputs: two per-image tables of
`bench/pixel_residuals.py` (val, then test) and their datasets.

    .venv/bin/python bench/snr_judged_auc.py VAL_TABLE VAL_DATA TEST_TABLE TEST_DATA
"""

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from deeplense.metrics import roc_auc  # noqa: E402

SCORES = ("chi2_psf_light", "chi2_psf")
SNR = ("snr_median", "snr_peak")
Key = tuple[str, int]  # (class, image index)


def read_table(path: Path) -> dict[Key, dict[str, float]]:
    """A pixel_residuals.py table: (class, image) -> each of SCORES."""
    rows: dict[Key, dict[str, float]] = {}
    header: list[str] = []
    for line in Path(path).read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] == "class":
            header = cells
        elif header and len(cells) == len(header) and cells[0] in ("no_sub", "sphere", "vort"):
            row = dict(zip(header, cells, strict=True))
            rows[(row["class"], int(row["image"]))] = {s: float(row[s]) for s in SCORES}
    return rows


def read_snr(data: Path, split: str) -> dict[Key, dict[str, float]]:
    """parameters.csv of `data`: (class, index) -> each of SNR, for one split."""
    with (Path(data) / "parameters.csv").open(newline="") as f:
        return {
            (r["class"], int(r["index"])): {s: float(r[s]) for s in SNR}
            for r in csv.DictReader(f)
            if r["split"] == split
        }


def expectation(scores: list[float], snr: list[float]) -> tuple[float, float]:
    """(a, b) of log score = a + b log snr, least squares."""
    b, a = np.polyfit(np.log(snr), np.log(scores), 1)
    return float(a), float(b)


def aucs(excess: dict[Key, float]) -> tuple[float, float, float]:
    """AUC sub / sphere / vort against no_sub of per-image values."""
    by = {c: [v for k, v in excess.items() if k[0] == c] for c in ("no_sub", "sphere", "vort")}
    normal = by["no_sub"]
    return (roc_auc(normal, by["sphere"] + by["vort"]), roc_auc(normal, by["sphere"]),
            roc_auc(normal, by["vort"]))  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("val_table", type=Path)
    parser.add_argument("val_data", type=Path)
    parser.add_argument("test_table", type=Path)
    parser.add_argument("test_data", type=Path)
    args = parser.parse_args()
    val, test = read_table(args.val_table), read_table(args.test_table)
    val_snr, test_snr = read_snr(args.val_data, "val"), read_snr(args.test_data, "test")
    print("| score | S/N | fit on val no_sub | test AUC sub / sphere / vort, raw | judged |")
    print("|---|---|---|---|---|")
    for score in SCORES:
        raw = aucs({k: row[score] for k, row in test.items()})
        for which in SNR:
            normal = [k for k in val if k[0] == "no_sub"]
            a, b = expectation([val[k][score] for k in normal], [val_snr[k][which] for k in normal])
            excess = {
                k: float(np.log(row[score]) - (a + b * np.log(test_snr[k][which])))
                for k, row in test.items()
            }
            judged = aucs(excess)
            print(f"| {score} | {which} | log s = {a:.2f} + {b:.2f} log snr | "
                  f"{' / '.join(f'{v:.3f}' for v in raw)} | "
                  f"{' / '.join(f'{v:.3f}' for v in judged)} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

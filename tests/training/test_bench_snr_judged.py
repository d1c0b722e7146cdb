"""bench/snr_judged_auc.py: the S/N expectation is fitted on one split and judges another."""

import math
from pathlib import Path

import pytest

from tests.bench_scripts import load_bench

HEADER = "| class | image | source | chi2_psf_light | chi2_psf |\n|---|---|---|---|---|\n"


def write(
    tmp: Path, name: str, rows: list[tuple[str, int, float]], split: str
) -> tuple[Path, Path]:
    """A per-image table (score = chi2) and a dataset whose parameters.csv holds each S/N."""
    table = tmp / f"{name}.txt"
    lines = [f"| {c} | {i} | disc | {score:.4f} | {score:.4f} |\n" for c, i, score in rows]
    table.write_text(HEADER + "".join(lines))
    data = tmp / name
    data.mkdir()
    csv_lines = ["split,class,index,snr_median,snr_peak"]
    csv_lines += [f"{split},{c},{i},{10.0 * (1 + i)},{30.0 * (1 + i)}" for c, i, _ in rows]
    (data / "parameters.csv").write_text("\n".join(csv_lines) + "\n")
    return table, data


def test_an_excess_over_the_snr_expectation_separates_what_the_raw_score_cannot(
    tmp_path: Path,
) -> None:
    bench = load_bench("snr_judged_auc")
    # Normal lenses: score = 0.1 * snr exactly. Subhalo lenses: 1.5x that, but fainter.
    val = [("no_sub", i, 0.1 * 10 * (1 + i)) for i in range(6)]
    test = [("no_sub", i, 0.1 * 10 * (1 + i)) for i in range(3, 6)]
    test += [("sphere", i, 1.5 * 0.1 * 10 * (1 + i)) for i in range(3)]
    test += [("vort", i, 1.5 * 0.1 * 10 * (1 + i)) for i in range(3)]
    val_table, val_data = write(tmp_path, "val", val, "val")
    test_table, test_data = write(tmp_path, "test", test, "test")
    rows = bench.read_table(val_table)
    snr = bench.read_snr(val_data, "val")
    normal = [k for k in rows if k[0] == "no_sub"]
    a, b = bench.expectation([rows[k]["chi2_psf"] for k in normal],
                             [snr[k]["snr_median"] for k in normal])  # fmt: skip
    assert b == pytest.approx(1.0) and a == pytest.approx(math.log(0.1))
    t_rows, t_snr = bench.read_table(test_table), bench.read_snr(test_data, "test")
    raw = bench.aucs({k: r["chi2_psf"] for k, r in t_rows.items()})
    excess = {
        k: math.log(r["chi2_psf"]) - (a + b * math.log(t_snr[k]["snr_median"]))
        for k, r in t_rows.items()
    }
    assert raw[0] < 0.5 and bench.aucs(excess) == pytest.approx((1.0, 1.0, 1.0))

"""bench/bound_curve.py: oracle_auc tables read back into a detection curve."""

from pathlib import Path

import pytest

from tests.bench_scripts import load_bench

bound_curve = load_bench("bound_curve")


def table(path: Path, flexible: tuple[float, float, float]) -> Path:
    rows = [
        "dataset model_r, subhalo mass fraction x, first 20 test images per class (1 s)",
        "",
        "| score | bound | AUC sub | AUC sphere | AUC vort |",
        "| --- | --- | --- | --- | --- |",
        "| chi2 | exact | 0.900 | 0.800 | 1.000 |",
        "| chi2_psf_light | exact | 1.000 | 1.000 | 1.000 |",
        "| chi2_psf_light | flexible | " + " | ".join(f"{a:.3f}" for a in flexible) + " |",
        "",
        "| class | median | quartiles |",
        "| --- | --- | --- |",
        "| sphere | 601 | 352-1197 |",
    ]
    path.write_text("\n".join(rows) + "\n")
    return path


def test_the_curve_is_read_per_bound_and_sorted_by_fraction(tmp_path: Path) -> None:
    big = table(tmp_path / "f10.txt", (0.7, 0.6, 0.8))
    small = table(tmp_path / "f1.txt", (0.5, 0.4, 0.6))
    curves = bound_curve.curve([(0.1, big), (0.01, small)], "chi2_psf_light")
    assert curves["flexible"] == [(0.01, (0.5, 0.4, 0.6)), (0.1, (0.7, 0.6, 0.8))]
    assert curves["exact"][0] == (0.01, (1.0, 1.0, 1.0))
    assert "| flexible | 0.1 | 0.700 | 0.600 | 0.800 |" in bound_curve.markdown(curves)


def test_the_plot_is_written(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = table(tmp_path / "a.txt", (0.5, 0.4, 0.6)), table(tmp_path / "b.txt", (0.7, 0.6, 0.8))
    out = tmp_path / "curve.png"
    argv = ["--point", "0.01", str(a), "--point", "0.03", str(b), "--plot", str(out)]
    assert bound_curve.main(argv) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| exact | 0.03 |" in capsys.readouterr().out


def test_a_file_without_the_score_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = table(tmp_path / "a.txt", (0.5, 0.4, 0.6))
    assert bound_curve.main(["--point", "0.01", str(a), "--score", "mse"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no rows for score 'mse'" in err
    (tmp_path / "empty.txt").write_text("nothing here\n")
    assert bound_curve.main(["--point", "0.01", str(tmp_path / "empty.txt")]) == 2
    assert "no oracle_auc table" in capsys.readouterr().err

"""scripts/sampler_controls.py: the study's sampler beside its two controls, per model."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "sampler_controls.py"


def report(folder: Path, auc: float) -> Path:
    metrics = {f"auc_{c}": auc for c in ("sub", "sphere", "vort")}
    metrics |= {"mse_no_sub": 1e-4, "mse_sphere": 2e-4, "mse_vort": 3e-4}
    folder.mkdir()
    doc = {"models": {"aae": {"metrics": metrics}, "dcae": {"metrics": metrics}}}
    (folder / "metrics.json").write_text(json.dumps(doc))
    return folder


def run(*args: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True
    )


def test_one_row_per_model_with_the_three_aucs(tmp_path: Path) -> None:
    own, shared, none = (report(tmp_path / n, a) for n, a in (("o", 0.9), ("s", 0.6), ("n", 0.88)))
    result = run(own, shared, none)
    assert result.returncode == 0, result.stderr
    row = next(line for line in result.stdout.splitlines() if line.startswith("| aae |"))
    assert "0.900 / 0.900 / 0.900 | 0.600 / 0.600 / 0.600 | 0.880 / 0.880 / 0.880" in row
    assert "0.0001 / 0.0002 / 0.0003" in row


def test_a_missing_report_is_one_line(tmp_path: Path) -> None:
    own = report(tmp_path / "o", 0.9)
    result = run(own, own, tmp_path / "absent")
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "cannot read" in result.stderr
    assert run(own).returncode == 2

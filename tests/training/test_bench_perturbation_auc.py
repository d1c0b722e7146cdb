"""bench/perturbation_auc.py: gravitational imaging's tests against LensFit 2's image score."""

import shutil
from pathlib import Path

import pytest

from models.checkpoint import read_config, write_config
from tests.bench_scripts import load_bench, tiny_split
from tests.conftest import threads_kept


def test_a_card_defaulting_to_imaging_gain_is_compared_with_its_image_score(
    tiny_checkpoints: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    card = tmp_path / "lensfit2"
    shutil.copytree(tiny_checkpoints / "lensfit2", card)
    # imaging_gain the default, as on Model A's and Model B's shipped cards
    write_config(read_config(card).model_copy(update={"default_score": "imaging_gain"}), card)
    split = tiny_split(tmp_path)
    per_image = tmp_path / "rows.csv"
    bench = load_bench("perturbation_auc")
    with threads_kept():
        argv = [str(card), str(split), "--n", "2", "--no-joint", "--per-image", str(per_image)]
        assert bench.main(argv) == 0
        with pytest.raises(SystemExit, match="exists"):
            bench.main(argv)  # never overwrites
        assert bench.main([*argv[:-2], "--tension-of", "all"]) == 0  # 13 parameters' pull
    out = capsys.readouterr().out
    assert "tension_of=('theta_e', 'slope'" in out and "'light_e2')" in out  # MASS, then NAMES
    assert "image score chi2_psf_light (the card's default imaging_gain)" in out
    assert "| image_score |" in out and "imaging_gain - image_score:" in out
    header, *rows = per_image.read_text().splitlines()
    assert header.startswith("class,index,image_score,") and len(rows) == 4

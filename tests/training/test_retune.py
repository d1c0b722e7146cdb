"""`python -m training retune`: new inference settings, re-learned prior, new calibration."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from models.checkpoint import load_checkpoint, read_config, write_config
from tests.conftest import tiny_images
from training.__main__ import main


@pytest.fixture
def data(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    for split in ("train", "val"):
        (root / split).mkdir(parents=True)
    np.save(root / "train" / "no_sub.npy", tiny_images(12, seed=1)[:, 0])
    np.save(root / "val" / "no_sub.npy", tiny_images(10, seed=2)[:, 0])
    np.save(root / "val" / "sphere.npy", tiny_images(5, seed=3)[:, 0])
    (root / "manifest.json").write_text(json.dumps({"dataset": "tiny"}))
    return root


@pytest.fixture
def lensfit(tiny_checkpoints: Path, tmp_path: Path) -> Path:
    folder = Path(shutil.copytree(tiny_checkpoints / "lensfit", tmp_path / "ckpt" / "lensfit"))
    config = read_config(folder)
    write_config(config.model_copy(update={"metrics": {"auc_sub": 0.5}}), folder)
    return folder


def test_retune_writes_a_new_recalibrated_checkpoint_and_leaves_the_old_one(
    lensfit: Path, data: Path, tmp_path: Path
) -> None:
    before = (lensfit / "model.safetensors").read_bytes(), (lensfit / "config.json").read_text()
    out = tmp_path / "retuned"
    argv = ["retune", "--checkpoint", str(lensfit), "--data", str(data), "--out", str(out),
            "--arch-arg", "refine_steps=1", "--arch-arg", "prior_deconvolve=true",
            "--device", "cpu"]  # fmt: skip
    assert main(argv) == 0
    after = (lensfit / "model.safetensors").read_bytes(), (lensfit / "config.json").read_text()
    assert after == before
    old, new = load_checkpoint(lensfit), load_checkpoint(out)
    assert new.config.arguments["refine_steps"] == 1
    assert new.config.arguments["prior_deconvolve"] is True
    assert new.config.metrics == {}  # the old test metrics no longer apply
    assert new.config.calibrations["chi2_psf"].validation_auc is not None  # val has sphere
    assert new.config.training.extra["retuned"][0]["changes"] == {
        "refine_steps": 1, "prior_deconvolve": True
    }  # fmt: skip
    # Same network weights; the prior was re-learned from DIR/train.
    for name, tensor in old.model.state_dict().items():
        if not name.startswith("prior_"):
            assert torch.equal(new.model.state_dict()[name], tensor), name
    assert not torch.equal(new.model.prior_var, old.model.prior_var)
    assert "less their photon noise" in new.config.training.extra["model_card"]["prior_note"]


def test_retune_refuses_unknown_arguments_shape_changes_and_existing_output(
    lensfit: Path, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["retune", "--checkpoint", str(lensfit), "--data", str(data), "--device", "cpu"]
    assert main([*base, "--out", str(tmp_path / "a"), "--arch-arg", "beta=0.5"]) == 2
    assert "lensfit has no argument beta; valid:" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "b"), "--arch-arg", "hidden=7"]) == 2
    assert "changes the weights' shapes" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "c")]) == 2
    assert "nothing to change" in capsys.readouterr().err
    (tmp_path / "d").mkdir()
    assert main([*base, "--out", str(tmp_path / "d"), "--arch-arg", "refine_steps=1"]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert not any((tmp_path / n).exists() for n in "abc")


def test_retune_converts_a_float32_checkpoint_to_float16_and_recalibrates(
    data: Path, tmp_path: Path
) -> None:
    from models.card import config_for
    from models.checkpoint import save_checkpoint
    from tests.conftest import tiny_model

    model = tiny_model("dcae")
    source = save_checkpoint(model, config_for(model), tmp_path / "f32" / "dcae")
    out = tmp_path / "f16"
    argv = ["retune", "--checkpoint", str(source), "--data", str(data), "--out", str(out),
            "--weights-dtype", "float16", "--device", "cpu"]  # fmt: skip
    assert main(argv) == 0
    assert (out / "model.safetensors").stat().st_size < (
        source / "model.safetensors"
    ).stat().st_size
    converted = load_checkpoint(out)
    assert converted.config.training.extra["weights_dtype"] == "float16"
    assert converted.config.calibrations  # recalibrated on the rounded weights


def test_retune_can_keep_the_prior_and_needs_no_train_split(
    tiny_checkpoints: Path, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A new LensFit 2 refinement schedule, its prior kept as shipped: no DIR/train read, the
    prior and weights bit for bit the old ones, the card saying so."""
    shutil.rmtree(data / "train")
    folder = tiny_checkpoints / "lensfit2"
    out = tmp_path / "coarse"
    argv = ["retune", "--checkpoint", str(folder), "--data", str(data), "--out", str(out),
            "--arch-arg", "coarse_steps=2", "--arch-arg", "refine_steps=0", "--keep-prior",
            "--device", "cpu"]  # fmt: skip
    assert main(argv) == 0
    old, new = load_checkpoint(folder), load_checkpoint(out)
    assert (new.config.arguments["coarse_steps"], new.config.arguments["refine_steps"]) == (2, 0)
    for name, tensor in old.model.state_dict().items():
        assert torch.equal(new.model.state_dict()[name], tensor), name
    record = new.config.training.extra["retuned"][-1]
    assert record["after_training"] == "not re-run: the prior kept"
    assert new.config.training.extra["model_card"]["refinement"]["coarse_steps"] == 2
    assert new.config.calibrations["chi2_psf"].validation_auc is not None
    # without --keep-prior the missing train split is an error, not a silent skip
    capsys.readouterr()
    assert main([*argv[:-3], "--overwrite", "--device", "cpu"]) == 2
    assert "no 'train' folder" in capsys.readouterr().err

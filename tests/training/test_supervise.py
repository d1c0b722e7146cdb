"""`python -m training supervise`: LensFit 2's encoder fitted to a simulated set's true lenses."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from deeplense.instrument import Instrument
from models.card import config_for
from models.checkpoint import load_checkpoint, save_checkpoint
from models.lensfit2 import RANGES, LensFit2, LensFit2Config
from tests.conftest import tiny_config, tiny_model
from tests.lenses import SMALL
from training.__main__ import main
from training.datasets import load_split
from training.flexible_bound import truth_theta
from training.simulate import read_rows, simulate_dataset
from training.supervise import fit_encoder, training_targets


@pytest.fixture(scope="module")
def model_r(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Model R set: 16 training lenses, 3 per class in val (48 px of 0.1")."""
    return simulate_dataset(
        "model_r", tmp_path_factory.mktemp("sup") / "r", n_train=16, n_val=3, n_test=0,
        seed=3, workers=1, progress=False, config=SMALL, n_val_sub=3,
    )  # fmt: skip


def small_lensfit2(seed: int = 0) -> LensFit2:
    """A tiny LensFit 2 on SMALL's grid (48 px of 0.1")."""
    torch.manual_seed(seed)
    tiny = LensFit2Config.tiny()
    config = LensFit2Config(
        **{**tiny.__dict__, "image_size": 48, "pixel_scale": 0.1, "refine_steps": 1,
           "prior_fit_images": 4, "prior_fit_steps": 1},
    )  # fmt: skip
    return LensFit2(config).eval()


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    model = small_lensfit2()
    # Uncalibrated: supervise calibrates what it writes.
    save_checkpoint(model, config_for(model, Instrument(0.1, 0.1)), tmp_path / "lf2")
    return tmp_path / "lf2"


def test_targets_are_the_true_lenses_of_the_train_split_in_order(model_r: Path) -> None:
    targets = training_targets(model_r, 16)
    rows = read_rows(model_r, "train", 16)
    assert targets.shape == (16, 13)
    np.testing.assert_array_equal(targets[5], truth_theta(rows[("no_sub", 5)]))
    with pytest.raises(Exception, match="no train row for no_sub image 16"):
        training_targets(model_r, 17)


def test_parameter_loss_is_zero_at_the_target_and_holds_the_target_in_range() -> None:
    model = small_lensfit2()
    x = torch.rand(3, 1, 48, 48)
    with torch.no_grad():
        guess = model.guess(x)  # (3, 13), the images are on the model's grid
        assert float(model.parameter_loss(x, guess)["loss"]) < 1e-12
    beyond = guess.clone()
    beyond[:, 0] = RANGES["theta_e"][1] + 5.0  # far above the range: counts as its top
    at_top = guess.clone()
    at_top[:, 0] = RANGES["theta_e"][1]
    with torch.no_grad():
        a, b = model.parameter_loss(x, beyond), model.parameter_loss(x, at_top)
    assert float(a["theta_e"]) == pytest.approx(float(b["theta_e"])) and float(a["theta_e"]) > 0


def test_fitting_the_encoder_lowers_its_parameter_error(model_r: Path) -> None:
    images = load_split(model_r, "train", classes=["no_sub"])["no_sub"]
    targets = training_targets(model_r, len(images))
    model = small_lensfit2(seed=1)
    x, t = torch.tensor(np.array(images)), torch.from_numpy(targets)
    with torch.no_grad():
        before = model.parameter_loss(x, t)
    history = fit_encoder(model, images, targets, 0.1, epochs=12, batch_size=8, lr=3e-3, seed=0)
    with torch.no_grad():
        after = model.parameter_loss(x, t)
    assert len(history) == 12
    assert float(after["loss"]) < float(before["loss"])
    # Model R's Einstein radius is one value (1.2"): even a tiny encoder learns it.
    assert float(after["theta_e"]) < 0.1 * float(before["theta_e"]), (before, after)


def test_supervise_writes_a_new_recalibrated_checkpoint_and_leaves_the_old_one(
    checkpoint: Path, model_r: Path, tmp_path: Path
) -> None:
    before = (checkpoint / "model.safetensors").read_bytes()
    out = tmp_path / "supervised"
    argv = ["supervise", "--checkpoint", str(checkpoint), "--data", str(model_r),
            "--out", str(out), "--epochs", "2", "--batch-size", "8", "--device", "cpu"]  # fmt: skip
    assert main(argv) == 0
    assert (checkpoint / "model.safetensors").read_bytes() == before
    old, new = load_checkpoint(checkpoint), load_checkpoint(out)
    record = new.config.training.extra["retuned"][-1]
    assert record["supervised"]["images"] == 16
    losses = record["supervised"]["parameter_loss"]
    assert len(losses) == 2 and set(losses[0]) == {"train", "val"}  # val: the no_sub lenses
    assert new.config.metrics == {}
    assert new.config.calibrations["chi2"].validation_auc is not None  # val has substructure
    # The card names the set the encoder was last fitted on; the old facts go to the history.
    assert old.config.training.dataset is None  # a test checkpoint made without a dataset
    assert new.config.training.dataset == "model_r"
    assert new.config.calibrations["chi2"].dataset == "model_r"
    assert new.config.training.n_train == 16 and new.config.training.epochs == 2
    assert set(new.config.training.final_losses) == {"train_parameter_loss", "val_parameter_loss"}
    assert record["previous_training"]["dataset"] is None
    changed = [
        name for name, t in old.model.state_dict().items()
        if name.startswith("encoder") and not torch.equal(new.model.state_dict()[name], t)
    ]  # fmt: skip
    assert changed  # the encoder learnt


def test_supervise_refuses_other_models_sets_without_parameters_and_existing_output(
    checkpoint: Path, model_r: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    def run(ckpt: Path, data: Path, out: str) -> int:
        argv = ["supervise", "--checkpoint", str(ckpt), "--data", str(data),
                "--out", str(tmp_path / out), "--epochs", "1", "--device", "cpu"]  # fmt: skip
        return main(argv)

    aae = tiny_model("aae")
    save_checkpoint(aae, tiny_config(aae), tmp_path / "aae")
    assert run(tmp_path / "aae", model_r, "a") == 2
    assert "aae has no parameter loss: only lensfit2" in capsys.readouterr().err
    bare = Path(shutil.copytree(model_r, tmp_path / "bare"))
    (bare / "parameters.csv").unlink()
    assert run(checkpoint, bare, "b") == 2
    assert "parameters.csv: not found" in capsys.readouterr().err
    (tmp_path / "c").mkdir()
    assert run(checkpoint, model_r, "c") == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()

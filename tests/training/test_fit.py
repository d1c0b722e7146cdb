"""`python -m training fit`: checkpoints, reproducibility, resume, refusals (tiny 32x32 data)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import models
import training.fit as fit_module
from models.checkpoint import WEIGHTS_FILE, load_checkpoint
from tests.conftest import TINY_GEOMETRY, tiny_images, tiny_model
from training.__main__ import main
from training.commands.fit import arch_arg
from training.fit import STATE_DIR
from training.steps import Precision, make_step

TINY_ARCH = ["--tiny"]  # every model at its Config.tiny()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """DIR/train/no_sub.npy (24 images), DIR/val/no_sub.npy (12) and a manifest."""
    root = tmp_path_factory.mktemp("data")
    for split, n, seed in [("train", 24, 1), ("val", 12, 2)]:
        (root / split).mkdir()
        np.save(root / split / "no_sub.npy", tiny_images(n, seed=seed)[:, 0])  # (n, 32, 32)
    (root / "manifest.json").write_text(json.dumps({"dataset": "tiny_rings"}))
    return root


def _fit(data: Path, out: Path, *extra: str, model: str = "dcae", epochs: int = 1) -> int:
    argv = ["fit", "--model", model, "--data", str(data), "--out", str(out)]
    argv += ["--epochs", str(epochs), "--batch-size", "8", "--device", "cpu", *TINY_ARCH]
    return main([*argv, *extra])


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / WEIGHTS_FILE))


def test_fit_all_writes_a_valid_calibrated_checkpoint_per_model(
    data_dir: Path, tmp_path: Path
) -> None:
    assert _fit(data_dir, tmp_path, "--seed", "3", "--fpr", "0.1", model="all") == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == models.list_models()
    for name in models.list_models():
        loaded = load_checkpoint(tmp_path / name)
        assert loaded.config.architecture == name
        assert loaded.model.image_size == 32
        calibration = loaded.config.calibration
        assert calibration is not None
        assert calibration.fpr == 0.1
        assert calibration.n_images == 12
        assert calibration.dataset == "tiny_rings"
        facts = loaded.config.training
        assert facts.dataset == "tiny_rings"
        assert (
            facts.dataset_manifest_sha256 is not None and len(facts.dataset_manifest_sha256) == 64
        )
        assert (facts.n_train, facts.epochs, facts.batch_size, facts.seed) == (24, 1, 8, 3)
        assert facts.device == "cpu"
        assert facts.torch_version == torch.__version__
        assert facts.wall_time_s is not None and facts.wall_time_s > 0
        assert {"train_loss", "val_loss", "val_mse"} <= set(facts.final_losses)
        assert len(facts.extra["history"]) == 1
        assert facts.budget is not None
        assert facts.budget.startswith("1 epochs over 24 images (batch 8) on cpu (")
    assert not (tmp_path / STATE_DIR).exists()


def test_the_export_calibrates_without_tf32(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Training may run float32 products in TF32 on a GPU ("high"); the export's calibration
    runs at the service's "highest", and the training's setting comes back after."""
    seen: list[str] = []
    export = fit_module.export_checkpoint

    def recording(*args: object, **kwargs: object) -> object:
        seen.append(torch.get_float32_matmul_precision())
        return export(*args, **kwargs)

    monkeypatch.setattr(fit_module, "export_checkpoint", recording)
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")  # as `run` sets it on a GPU
    try:
        assert _fit(data_dir, tmp_path) == 0
        assert seen == ["highest"]
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision(before)


def test_the_same_seed_gives_identical_weights(data_dir: Path, tmp_path: Path) -> None:
    for run in ("a", "b"):
        assert _fit(data_dir, tmp_path / run, "--seed", "7", model="all") == 0
    for name in models.list_models():
        a, b = _weights(tmp_path / "a" / name), _weights(tmp_path / "b" / name)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{name}.{key}"


def test_another_seed_gives_other_weights(data_dir: Path, tmp_path: Path) -> None:
    assert _fit(data_dir, tmp_path / "a", "--seed", "1") == 0
    assert _fit(data_dir, tmp_path / "b", "--seed", "2") == 0
    a, b = _weights(tmp_path / "a" / "dcae"), _weights(tmp_path / "b" / "dcae")
    assert not torch.equal(a["decoder.net.0.weight"], b["decoder.net.0.weight"])


def test_training_lowers_the_validation_loss(data_dir: Path, tmp_path: Path) -> None:
    assert _fit(data_dir, tmp_path, "--lr", "5e-3", model="vae", epochs=4) == 0
    history = load_checkpoint(tmp_path / "vae").config.training.extra["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert history[-1]["val_mse"] < history[0]["val_mse"]


def test_existing_checkpoint_is_refused_before_training(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "rbm").mkdir()
    (tmp_path / "rbm" / "keep.txt").write_text("mine")
    assert _fit(data_dir, tmp_path, model="all") == 2
    err = capsys.readouterr().err
    assert "rbm exists" in err and "--overwrite" in err
    # Refused before any training: nothing else written, the folder untouched.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rbm"]
    assert (tmp_path / "rbm" / "keep.txt").read_text() == "mine"
    assert _fit(data_dir, tmp_path, "--overwrite", model="rbm") == 0
    assert load_checkpoint(tmp_path / "rbm").config.architecture == "rbm"
    assert not (tmp_path / "rbm" / "keep.txt").exists()


def test_resume_continues_to_the_same_weights(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert _fit(data_dir, tmp_path / "straight", model="vae", epochs=2) == 0

    real_save = fit_module._save_state

    def save_then_crash(*args: object, **kwargs: object) -> None:
        real_save(*args, **kwargs)  # type: ignore[arg-type]
        raise KeyboardInterrupt  # the run dies right after epoch 1's state is saved

    monkeypatch.setattr(fit_module, "_save_state", save_then_crash)
    assert _fit(data_dir, tmp_path / "resumed", model="vae", epochs=2) == 130
    state = tmp_path / "resumed" / STATE_DIR / "vae.pt"
    assert state.is_file()
    assert not (tmp_path / "resumed" / "vae").exists()
    monkeypatch.setattr(fit_module, "_save_state", real_save)

    assert _fit(data_dir, tmp_path / "resumed", "--resume", model="vae", epochs=2) == 0
    a, b = _weights(tmp_path / "straight" / "vae"), _weights(tmp_path / "resumed" / "vae")
    for key in a:
        assert torch.equal(a[key], b[key]), key
    history = load_checkpoint(tmp_path / "resumed" / "vae").config.training.extra["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    assert not state.exists()


def test_resume_refuses_a_state_made_with_other_settings(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    real_save = fit_module._save_state

    def save_then_crash(*args: object, **kwargs: object) -> None:
        real_save(*args, **kwargs)  # type: ignore[arg-type]
        raise KeyboardInterrupt

    monkeypatch.setattr(fit_module, "_save_state", save_then_crash)
    assert _fit(data_dir, tmp_path, model="rbm", epochs=2) == 130
    monkeypatch.setattr(fit_module, "_save_state", real_save)
    assert _fit(data_dir, tmp_path, "--resume", model="rbm", epochs=3) == 2
    err = capsys.readouterr().err
    assert "rbm.pt" in err and "epochs 2" in err


def test_unknown_arch_arg_is_a_usage_error(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        _fit(data_dir, tmp_path, "--arch-arg", "depth=3")
    assert info.value.code == 2
    assert "depth" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _fit(data_dir, tmp_path, "--arch-arg", "latent_dim=0.5x")  # text, refused by config
    assert list(tmp_path.iterdir()) == []


def test_missing_data_is_one_line_error(tmp_path: Path, capsys) -> None:
    assert _fit(tmp_path / "nowhere", tmp_path / "out") == 2
    assert "nowhere" in capsys.readouterr().err


def test_arch_arg_values_are_read_as_json_when_they_parse() -> None:
    assert arch_arg("channels=[4,8,8]") == ("channels", [4, 8, 8])
    assert arch_arg("beta=0.01") == ("beta", 0.01)
    assert arch_arg("name=abc") == ("name", "abc")


def test_aae_step_uses_the_config_learning_rates() -> None:
    model = models.create_model("aae", **TINY_GEOMETRY, lr_generator=3e-5)
    step = make_step(model, 2e-3, 1e-5, total_steps=10, precision=Precision("cpu"))
    max_lrs = {p: o.optimizer.param_groups[0]["max_lr"] for p, o in step.phases.items()}  # type: ignore[attr-defined]
    assert max_lrs == {"autoencoder": 1e-3, "discriminator": 1e-3, "generator": 3e-5}


def test_aae_step_updates_encoder_decoder_and_discriminator() -> None:
    model = tiny_model("aae").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    step = make_step(model, 2e-3, 0.0, total_steps=5, precision=Precision("cpu"))
    parts = step(torch.from_numpy(tiny_images(8)))
    assert {"loss", "mse", "d_loss", "g_loss"} <= set(parts)
    assert all(torch.isfinite(v) for v in parts.values())
    after = model.state_dict()
    for key in ("encoder.net.0.weight", "decoder.net.0.weight", "discriminator.0.weight"):
        assert not torch.equal(before[key], after[key]), key


def test_cpu_trains_in_float32_without_a_loss_scaler() -> None:
    precision = Precision.for_device(torch.device("cpu"))
    assert precision.dtype is None and precision.name == "fp32"
    assert not precision.grad_scaler().is_enabled()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_every_step_trains_under_mixed_precision(model_name: str, dtype: torch.dtype) -> None:
    """The CUDA code path (autocast, fp16 loss scaling), exercised with CPU autocast."""
    model = tiny_model(model_name).train()
    before = [p.detach().clone() for p in model.parameters()]
    precision = Precision("cpu", dtype)
    step = make_step(model, 2e-3, 1e-5, total_steps=4, precision=precision)
    for _ in range(2):
        parts = step(torch.from_numpy(tiny_images(8)))
    assert all(torch.isfinite(v) for v in parts.values())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_resume_refuses_a_corrupt_state_file(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / STATE_DIR / "dcae.pt"
    state.parent.mkdir(parents=True)
    state.write_bytes(b"not a torch file")
    assert _fit(data_dir, tmp_path, "--resume") == 2
    err = capsys.readouterr().err
    assert str(state) in err and "unreadable training state" in err


def test_float16_weights_halve_the_checkpoint_and_calibrate_the_stored_model(
    data_dir: Path, tmp_path: Path
) -> None:
    assert _fit(data_dir, tmp_path / "f32", model="vae") == 0
    assert _fit(data_dir, tmp_path / "f16", "--weights-dtype", "float16", model="vae") == 0
    f32 = (tmp_path / "f32" / "vae" / WEIGHTS_FILE).stat().st_size
    f16 = (tmp_path / "f16" / "vae" / WEIGHTS_FILE).stat().st_size
    assert f16 < 0.8 * f32  # the tiny model: only its dense matrices reach the size rule
    loaded = load_checkpoint(tmp_path / "f16" / "vae")
    assert loaded.config.training.extra["weights_dtype"] == "float16"
    # The calibration is that of the stored weights: re-scoring the val images with the
    # loaded model reproduces the calibration's largest no_sub score.
    from training.calibrate import calibrate_model

    val = {"no_sub": np.load(data_dir / "val" / "no_sub.npy")[:, None]}
    again = calibrate_model(loaded.model, val, 2.0, fpr=0.05, dataset="tiny", device="cpu")
    for score, calibration in loaded.config.calibrations.items():
        assert again.calibrations[score].threshold == pytest.approx(calibration.threshold)


def test_bf16_precision_on_cpu_trains_and_is_recorded(data_dir: Path, tmp_path: Path) -> None:
    assert _fit(data_dir, tmp_path, "--precision", "bf16", model="dcae") == 0
    loaded = load_checkpoint(tmp_path / "dcae")
    assert loaded.config.training.extra["precision"] == "bf16"
    assert all(torch.isfinite(p).all() for p in loaded.model.parameters())


@pytest.mark.parametrize("name", ["dcae", "vae", "aae", "lensfit"])
def test_channels_last_changes_the_layout_not_the_arithmetic(name: str) -> None:
    """The same model and batch in NCHW and in channels_last give the same loss and
    gradients to float32 rounding (what `fit` does by default: a layout, not a new model)."""
    x = torch.from_numpy(tiny_images(6, seed=7))
    losses, grads = [], []
    for layout in (torch.contiguous_format, torch.channels_last):
        model = tiny_model(name).train().to(memory_format=layout)
        loss = model.loss(x.contiguous(memory_format=layout))["loss"]
        loss.backward()
        losses.append(loss.detach())
        grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-7)
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_unknown_precision_is_refused(data_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as info:
        _fit(data_dir, tmp_path, "--precision", "fp8")
    assert info.value.code == 2

"""float16 weight storage: large tensors halved, small ones and non-finite casts kept float32."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import models
from deeplense.errors import CheckpointError
from models.card import config_for
from models.checkpoint import WEIGHTS_FILE, load_checkpoint, save_checkpoint
from models.registry import model_class
from models.storage import HALF_MIN_ELEMENTS, round_to_storage, storage_state, stored_bytes
from tests.conftest import tiny_model


class _Mixed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.big = nn.Parameter(torch.randn(HALF_MIN_ELEMENTS))  # halved
        self.small = nn.Parameter(torch.randn(8))  # kept: below the size rule
        self.register_buffer("tiny_var", torch.full((HALF_MIN_ELEMENTS,), 1e-9))  # underflows
        self.register_buffer("huge", torch.full((HALF_MIN_ELEMENTS,), 1e6))  # overflows
        self.register_buffer("count", torch.zeros(HALF_MIN_ELEMENTS, dtype=torch.int64))


def test_only_large_finite_float_tensors_are_halved() -> None:
    state = storage_state(_Mixed(), "float16")
    assert state["big"].dtype == torch.float16
    assert state["small"].dtype == torch.float32
    assert state["huge"].dtype == torch.float32  # 1e6 is beyond float16's 65504
    assert state["count"].dtype == torch.int64
    assert stored_bytes(state) < stored_bytes(storage_state(_Mixed(), "float32"))


def test_a_tensor_whose_values_would_flush_to_zero_stays_float32() -> None:
    assert storage_state(_Mixed(), "float16")["tiny_var"].dtype == torch.float32  # 1e-9 -> 0


def test_a_few_negligible_values_do_not_keep_a_weight_matrix_in_float32() -> None:
    # Trained weights hold some values below float16's range beside typical ones of 1e-2.
    layer = nn.Linear(64, 64, bias=False)
    with torch.no_grad():
        layer.weight[0, :4] = torch.tensor([1e-9, -3e-10, 2e-12, 0.0])
    state = storage_state(layer, "float16")
    assert state["weight"].dtype == torch.float16
    error = (state["weight"].float() - layer.weight.detach()).abs().max()
    assert error <= 1e-3 * layer.weight.detach().abs().max()


def test_rounding_in_memory_equals_what_is_loaded(tmp_path: Path) -> None:
    model = tiny_model("dcae")
    rounded = round_to_storage(model, "float16")
    assert rounded > 0
    save_checkpoint(model, config_for(model), tmp_path / "dcae", weights_dtype="float16")
    stored = load_file(str(tmp_path / "dcae" / WEIGHTS_FILE))
    assert any(t.dtype == torch.float16 for t in stored.values())
    loaded = load_checkpoint(tmp_path / "dcae").model
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    assert all(p.dtype == torch.float32 for p in loaded.parameters())


def test_float32_storage_changes_nothing() -> None:
    model = tiny_model("vae")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert round_to_storage(model, "float32") == 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_unknown_dtype_is_refused() -> None:
    with pytest.raises(ValueError, match="valid"):
        storage_state(tiny_model("rbm"), "int8")  # type: ignore[arg-type]


def test_training_only_tensors_are_not_stored_and_the_model_still_scores_exactly(
    tmp_path: Path,
) -> None:
    x = torch.rand(3, 1, 32, 32)
    declaring = [n for n in models.list_models() if model_class(n).training_only]
    assert declaring  # the AAE's discriminator and the VAE's log-variance head, at least
    for name in declaring:
        model = tiny_model(name).eval()
        prefixes = model_class(name).training_only
        save_checkpoint(model, config_for(model), tmp_path / name)
        stored = load_file(str(tmp_path / name / WEIGHTS_FILE))
        assert stored and not any(k.startswith(prefixes) for k in stored), name
        assert any(k.startswith(prefixes) for k in model.state_dict()), name
        loaded = load_checkpoint(tmp_path / name).model
        with torch.no_grad():
            torch.testing.assert_close(loaded.reconstruct(x), model.reconstruct(x), rtol=0, atol=0)


def test_a_missing_tensor_that_scoring_needs_is_still_refused(tmp_path: Path) -> None:
    model = tiny_model("vae")
    save_checkpoint(model, config_for(model), tmp_path / "vae")
    path = tmp_path / "vae" / WEIGHTS_FILE
    stored = load_file(str(path))
    del stored[next(k for k in stored if k.startswith("to_mu."))]
    save_file(stored, str(path))
    with pytest.raises(CheckpointError, match="missing: to_mu"):
        load_checkpoint(tmp_path / "vae")

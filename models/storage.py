"""How a checkpoint stores its weights: float32, or float16 for the large tensors.

float16 halves a checkpoint (the five models of one dataset: 67 MB in float32, 34 MB in
float16), which keeps the shipped folder small enough to clone and copy quickly. Only tensors
of at least `HALF_MIN_ELEMENTS` values are halved: conv kernels and dense matrices hold
nearly all the bytes, while small tensors (biases, norms, a model's prior) stay float32,
since they cost nothing and can hold values float16 cannot (a prior variance of 1e-8
underflows it). A tensor whose values do not survive the cast (beyond float16's 65504, or
rounded by more than 1e-3 of the tensor's largest magnitude, e.g. a tensor of values below
float16's 6e-8) stays float32 too. Loading needs nothing
special: `load_state_dict` casts back to the model's float32.

A model is rounded in memory (`round_to_storage`) before it is calibrated, so that its
calibration and its health check are those of the weights that are served.
"""

from typing import Literal, cast, get_args

import torch
from torch import Tensor, nn

from models.base import is_training_only

WeightsDtype = Literal["float32", "float16"]
WEIGHTS_DTYPES: tuple[str, ...] = get_args(WeightsDtype)
HALF_MIN_ELEMENTS = 1024
HALF_MAX_ERROR = 1e-3  # of a tensor's largest magnitude; float16 rounds to 2^-11 = 4.9e-4


def _halvable(tensor: Tensor) -> bool:
    """A large float32 tensor that float16 holds to its own precision: nothing overflows,
    and no value moves by more than `HALF_MAX_ERROR` of the tensor's largest magnitude (a
    weight of 1e-9 beside weights of 0.1 may flush to zero; a tensor of 1e-9s may not)."""
    if tensor.dtype != torch.float32 or tensor.numel() < HALF_MIN_ELEMENTS:
        return False
    half = tensor.half()
    if not bool(torch.isfinite(half).all()):
        return False
    scale = float(tensor.abs().max())
    return scale == 0.0 or float((half.float() - tensor).abs().max()) <= HALF_MAX_ERROR * scale


def check_weights_dtype(value: str) -> WeightsDtype:
    """`value` as a WeightsDtype; ValueError naming the valid ones otherwise."""
    if value not in WEIGHTS_DTYPES:
        raise ValueError(f"unknown weights dtype {value!r}; valid: {', '.join(WEIGHTS_DTYPES)}")
    return cast(WeightsDtype, value)


def storage_state(model: nn.Module, weights_dtype: WeightsDtype) -> dict[str, Tensor]:
    """The state dict as it is written: CPU, contiguous, large tensors in `weights_dtype`,
    without the model's training-only tensors (`AnomalyModel.training_only`)."""
    check_weights_dtype(weights_dtype)
    state = {
        k: v.detach().cpu().contiguous()
        for k, v in model.state_dict().items()
        if not is_training_only(model, k)
    }
    if weights_dtype == "float16":
        state = {k: v.half() if _halvable(v) else v for k, v in state.items()}
    return state


@torch.no_grad()
def round_to_storage(model: nn.Module, weights_dtype: WeightsDtype) -> int:
    """Round `model`'s weights in place to what `storage_state` writes; returns how many
    tensors were rounded (0 for float32)."""
    check_weights_dtype(weights_dtype)
    if weights_dtype == "float32":
        return 0
    rounded = 0
    for tensor in model.state_dict().values():
        if _halvable(tensor):
            tensor.copy_(tensor.half().float())
            rounded += 1
    return rounded


def stored_bytes(state: dict[str, Tensor]) -> int:
    """Bytes of tensor data in a state dict (the safetensors file, less its small header)."""
    return sum(t.numel() * t.element_size() for t in state.values())

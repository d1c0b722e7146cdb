"""Choosing the torch device, the same way for the service and every CLI."""

import torch

from deeplense.errors import DeviceError


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda when available else cpu; otherwise the named device, checked.

    Raises DeviceError for an unknown name or a CUDA device on a machine without one.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError(f"device {name!r} requested but torch sees no CUDA device")
    try:
        return torch.device(name)
    except RuntimeError:
        raise DeviceError(f"unknown device {name!r}; use auto, cpu or cuda[:N]") from None

"""Choosing the torch device, the same way for the service and every CLI."""

import logging

import torch

from deeplense.errors import DeviceError

logger = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda when available else cpu; otherwise the named device, checked.

    Raises DeviceError for an unknown name or a CUDA device on a machine without one.
    """
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.version.cuda is not None:  # a CUDA build of torch, but no usable GPU
            logger.warning(
                "device auto: torch %s is built for CUDA %s but sees no GPU (driver, "
                "CUDA_VISIBLE_DEVICES or container --gpus?); RUNNING ON THE CPU",
                torch.__version__,
                torch.version.cuda,
            )
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError(f"device {name!r} requested but torch sees no CUDA device")
    try:
        return torch.device(name)
    except RuntimeError:
        raise DeviceError(f"unknown device {name!r}; use auto, cpu or cuda[:N]") from None

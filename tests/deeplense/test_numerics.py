"""Subnormal floats are flushed to zero once the project's numerics are set."""

import platform

import torch

from deeplense.numerics import flush_denormals


def test_flush_denormals_turns_subnormal_results_into_zero() -> None:
    try:
        supported = flush_denormals()
        if platform.machine() in {"x86_64", "AMD64"}:
            assert supported  # every x86-64 CPU has the flush-to-zero flag
        tiny = torch.tensor([1e-30], dtype=torch.float32) * torch.tensor([1e-10])
        assert (tiny.item() == 0.0) == supported  # 1e-40 is subnormal in float32
    finally:
        torch.set_flush_denormal(False)

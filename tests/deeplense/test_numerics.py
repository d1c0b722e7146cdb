"""The project's process numerics: subnormal floats flushed to zero, freed blocks reused."""

import platform

import pytest
import torch

from deeplense import numerics
from deeplense.numerics import flush_denormals, keep_freed_memory


def test_flush_denormals_turns_subnormal_results_into_zero() -> None:
    try:
        supported = flush_denormals()
        if platform.machine() in {"x86_64", "AMD64"}:
            assert supported  # every x86-64 CPU has the flush-to-zero flag
        tiny = torch.tensor([1e-30], dtype=torch.float32) * torch.tensor([1e-10])
        assert (tiny.item() == 0.0) == supported  # 1e-40 is subnormal in float32
    finally:
        torch.set_flush_denormal(False)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_glibc_takes_the_freed_memory_settings() -> None:
    # mallopt answers 0 for a setting it refuses. (The page faults this saves depend on the
    # heap's history: measured on LensFit 2's refinement, docs/results.md.)
    assert keep_freed_memory()


def test_set_process_numerics_sets_both(monkeypatch: pytest.MonkeyPatch) -> None:
    called: list[str] = []
    monkeypatch.setattr(numerics, "flush_denormals", lambda: called.append("denormals") or True)
    monkeypatch.setattr(numerics, "keep_freed_memory", lambda: called.append("memory") or True)
    numerics.set_process_numerics()
    assert called == ["denormals", "memory"]

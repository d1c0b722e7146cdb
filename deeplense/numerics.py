"""Process-wide numeric settings shared by the service and every CLI (`set_process_numerics`)."""

import ctypes
import ctypes.util

import torch

# glibc's mallopt parameters (malloc.h) and the values set by `keep_freed_memory`.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 64 << 20  # blocks up to this come from the heap (200 px design: 47 MB)
TRIM_THRESHOLD_BYTES = 256 << 20  # freed memory kept for reuse, at most


def set_process_numerics() -> None:
    """Everything below, once per process: the service, each CLI and each scoring worker."""
    flush_denormals()
    keep_freed_memory()


def flush_denormals() -> bool:
    """Flush subnormal floats to zero on the CPU (x86 with SSE3; a no-op elsewhere).

    Arithmetic on subnormals (|x| < 1.2e-38 in float32) is many times slower on x86 CPUs,
    and RBM training produces them: a 150x150 RBM training step, measured on the project's
    2-core CPU after three epochs, took 2.0 s with subnormals and 0.22 s flushed (its epochs
    had slowed from 105 s to 350 s). Flushing changes values below 1e-38 only. Returns
    whether the CPU supports it.
    """
    return bool(torch.set_flush_denormal(True))


def keep_freed_memory() -> bool:
    """Let glibc's malloc reuse freed blocks of up to MMAP_THRESHOLD_BYTES instead of handing
    them back to the system, keeping at most TRIM_THRESHOLD_BYTES freed (a no-op without
    glibc).

    LensFit 2 allocates a 26 MB float64 design and its whitened copy (150 px, 146 columns)
    several times an image. By default glibc maps such blocks fresh and unmaps them on free,
    so every one is page-faulted and zeroed again: 28,000-46,000 page faults an image, 4-5 ms
    per allocation (one thread, the project's 2-core CPU); with these settings 5-200 faults
    and less time an image (docs/results.md). Values are unchanged. Returns whether glibc took
    both settings.
    """
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt if name else None
    except (OSError, AttributeError):
        mallopt = None
    if mallopt is None:
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    mapped = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
    trimmed = mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1
    return mapped and trimmed


__all__ = ["flush_denormals", "keep_freed_memory", "set_process_numerics"]

"""Process-wide numeric settings (`set_process_numerics`), shared by the service, the
`deeplense` CLI and its scoring workers."""

import ctypes
import logging

import torch

log = logging.getLogger(__name__)

# glibc's mallopt parameters (malloc.h) and the values set by `keep_freed_memory`.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
MMAP_THRESHOLD_BYTES = 32 << 20  # blocks up to this come from the heap (glibc's upper limit)
TRIM_THRESHOLD_BYTES = 256 << 20  # free memory at the heap's top beyond this goes back
# One heap for every thread: a thread's own heap is at most 64 MiB, so the service's scoring
# threads kept mapping designs fresh (8,700-49,000 page faults an image in a thread).
ARENAS = 1


def set_process_numerics() -> None:
    """Everything below, once per process: the service, each CLI and each scoring worker."""
    flush_denormals()
    if not keep_freed_memory():
        log.debug("malloc settings not taken (not glibc?): LensFit 2 will page-fault more")


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
    """Let glibc's malloc serve blocks of up to MMAP_THRESHOLD_BYTES from its heap and reuse
    them once freed, instead of mapping each one fresh from the system and unmapping it on
    free; free memory at the top of the heap goes back to the system only beyond
    TRIM_THRESHOLD_BYTES; every thread allocates from that one heap (ARENAS). A no-op without
    glibc (musl, macOS, Windows).

    LensFit 2 allocates a 26 MB float64 design and its whitened copy (150 px, 146 columns)
    several times an image. glibc's own threshold adapts to freed blocks, but not for this
    mix of sizes: the refinement of one Model R image page-faulted 28,000-46,000 times (every
    page zeroed again; 4-5 ms an allocation; one thread, the project's 2-core CPU), and 5-300
    times with these settings, 13% less time an image (docs/results.md, "A design stored by
    columns"); in a thread other than the main one (the service scores in worker threads)
    28,000 times, 8,700-49,000 with a heap of its own, 6-300 with the one heap. Values are
    unchanged. Returns whether glibc took every setting (an older one refuses a threshold
    above 32 MiB).
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own C library
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    settings = (
        (M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES),
        (M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES),
        (M_ARENA_MAX, ARENAS),
    )
    return all([mallopt(option, value) == 1 for option, value in settings])


__all__ = ["flush_denormals", "keep_freed_memory", "set_process_numerics"]

"""Process tuning: glibc keeps freed memory for reuse."""

import platform

from app.runtime import keep_freed_memory


def test_keep_freed_memory_applies_on_glibc() -> None:
    assert keep_freed_memory() is (platform.libc_ver()[0] == "glibc")

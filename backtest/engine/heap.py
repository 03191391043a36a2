"""Handing freed heap memory back to the operating system, where the C allocator would keep it.

glibc's malloc serves arrays below its mmap threshold (which rises to 32 MB as large blocks are freed) from
heaps that only shrink from the top: freed blocks in the middle stay resident. When a long-lived set of
arrays (the chunks' out-of-sample rows) is released piece by piece while its replacement is built, the
process's RSS would otherwise hold both. ``malloc_trim`` returns every free page of every arena.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(None)  # the C library this process already runs on
    except OSError:
        return None
    trim = getattr(libc, "malloc_trim", None)  # glibc only (not musl, macOS or Windows)
    if trim is not None:
        trim.argtypes = [ctypes.c_size_t]
        trim.restype = ctypes.c_int
    return trim


def release_free_memory() -> bool:
    """Return the C heap's free pages to the OS (a few milliseconds); False where that is not possible."""
    trim = _malloc_trim()
    return bool(trim is not None and trim(0))

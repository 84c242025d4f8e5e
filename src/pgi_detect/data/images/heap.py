"""Bounded heap retention for the processes that run the dataset (DataLoader workers, or the main process).

Why: glibc raises its thresholds as large blocks are freed, so a worker first keeps every freed image buffer
(its private memory crept up by ~200 MB within 2,000 samples), while calling `malloc_trim` to give that memory
back makes the next samples fault every page in again (~0.3 ms a sample, 6 % of a close-mosaic sample). Fixed
thresholds keep both in check: blocks below MMAP_THRESHOLD_BYTES (images, mosaic canvases, batches) are served
from the heap and reused, and at most TRIM_THRESHOLD_BYTES of free memory is kept at its top. Figures in
docs/benchmarks.md ("Worker memory and speed").
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
from functools import cache

# mallopt parameters from glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 32 * 2**20  # glibc's own ceiling for the threshold it adjusts by itself
TRIM_THRESHOLD_BYTES = 64 * 2**20

_bounded_in_pid: int | None = None


@cache
def _mallopt():
    """glibc's mallopt, or None (other C libraries manage their heaps differently and offer no such call)."""
    name = ctypes.util.find_library("c")
    library = ctypes.CDLL(name) if name else None
    return getattr(library, "mallopt", None)


def bound_heap_retention() -> bool:
    """Set the fixed thresholds once per process (workers started by fork inherit them, spawned ones set their
    own on their first sample); True when they are in effect."""
    global _bounded_in_pid
    pid = os.getpid()
    if _bounded_in_pid == pid:
        return True
    mallopt = _mallopt()
    if mallopt is None:
        return False
    mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
    mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    _bounded_in_pid = pid
    return True

"""Keep a training step's large buffers in the heap instead of fresh mappings.

glibc serves every allocation above ``M_MMAP_THRESHOLD`` with its own ``mmap``
and unmaps it on free. A GNN step allocates and frees tens of activation and
gradient tensors of a few MiB each, so every step page-faults all of them in
again: about 4,800 minor faults per batch on the demo dataset, several
milliseconds of kernel time per step and contention on the process's memory
map for the pipeline threads. Raising the mmap threshold and the trim
threshold lets freed blocks be reused: after the first step a step takes no
page faults at all.

Memory stays bounded: blocks above :data:`MMAP_THRESHOLD` are still mapped and
unmapped, and freed heap memory above :data:`TRIM_THRESHOLD` is returned to
the system, so the process holds at most its peak working set plus that much.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

MMAP_THRESHOLD = 32 << 20
"""Allocations up to this size come from the heap (glibc's maximum on 64-bit)."""

TRIM_THRESHOLD = 256 << 20
"""Free heap memory kept for reuse before glibc returns it to the system."""

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


@functools.cache
def retain_large_allocations() -> str | None:
    """Apply the thresholds once per process; what was set, or ``None`` where not glibc."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018 - glibc only: musl and others lack it
    except (OSError, AttributeError):
        return None
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    if not (mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)):
        return None
    return f"glibc mmap_threshold={MMAP_THRESHOLD >> 20}MiB trim_threshold={TRIM_THRESHOLD >> 20}MiB"

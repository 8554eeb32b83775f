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
unmapped, and free memory at the top of a heap beyond :data:`TRIM_THRESHOLD`
is returned to the system. glibc keeps one heap (arena) per thread that
allocates concurrently, so the process holds at most its peak working set plus
that much per arena, less fragmentation; in practice the training thread's
arena holds the step's tensors and the feeding threads allocate little.
"""

from __future__ import annotations

import ctypes
import functools
import os

MMAP_THRESHOLD = 32 << 20
"""Allocations up to this size come from the heap (glibc's maximum on 64-bit)."""

TRIM_THRESHOLD = 256 << 20
"""Free heap memory kept for reuse before glibc returns it to the system."""

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def trim_threshold(memory_budget: int) -> int:
    """The trim threshold for a memory budget: :data:`TRIM_THRESHOLD`, at most a sixteenth of it."""
    return min(TRIM_THRESHOLD, max(1 << 20, memory_budget // 16))


@functools.cache
def retain_large_allocations(trim: int = TRIM_THRESHOLD) -> str | None:
    """Apply the thresholds (once per value); what was set, or ``None`` where not glibc."""
    try:
        version = os.confstr("CS_GNU_LIBC_VERSION")  # "glibc 2.36"; musl and others: no such name
    except (ValueError, OSError):
        return None
    if not version or not version.startswith("glibc"):
        return None
    mallopt = ctypes.CDLL(None).mallopt  # glibc is already loaded in this process
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    done = [
        f"{name}={value >> 20}MiB"
        for name, param, value in (
            ("mmap_threshold", _M_MMAP_THRESHOLD, MMAP_THRESHOLD),
            ("trim_threshold", _M_TRIM_THRESHOLD, trim),
        )
        if mallopt(param, value)
    ]
    return f"{version} " + " ".join(done) if done else None

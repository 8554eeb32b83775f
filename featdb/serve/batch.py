"""A served batch: its rows in serving order, the map back to the sample's order, and its release."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..sampling.sampleset import SampleSet
from ..traces import Trace


@dataclass
class BatchRows:
    """One served batch. ``rows`` is a view into a pooled buffer: call :meth:`release` when done."""

    batch_id: int
    rows: NDArray[Any]  # [n_host, dim]: L4, L3, L2 rows, and L1 rows unless they live on a device
    order: NDArray[Any]  # positions into the sample's input ids, in row order
    device_rows: Any = None  # L1 rows as a device tensor (torch, CUDA), appended after ``rows``
    _release: Any = None
    _sample_set: SampleSet | Trace | None = None

    @property
    def input_ids(self) -> NDArray[Any]:
        """Node (row) ids in row order (read from the attached sample set or trace on first use)."""
        if self._sample_set is None:
            return np.zeros(0, dtype=np.int64)
        ids: NDArray[Any] = self._sample_set.input_ids(self.batch_id)[self.order]
        return ids

    def release(self) -> None:
        if self._release is not None:
            self._release()
            self._release = None

    def __enter__(self) -> BatchRows:
        return self

    def __exit__(self, *_: object) -> None:
        self.release()


class Once:
    """Calls ``fn(arg)`` once, however often it is invoked."""

    def __init__(self, fn: Any, arg: Any) -> None:
        self._fn, self._arg = fn, arg
        self._lock = threading.Lock()

    def __call__(self) -> None:
        with self._lock:
            if self._fn is not None:
                self._fn(self._arg)
                self._fn = None


def read_map(
    pread: Callable[[int, int], bytes], off: int, counts: tuple[int, int, int, int], id_dt: np.dtype[Any]
) -> tuple[NDArray[Any], ...]:
    """One batch's map record (``pread(n, off)`` reads ``map.bin``): serving order, L3 rows, L2 slots,
    L1 slots (each as int64)."""
    n4, n3, n2, n1 = counts
    n = n4 + n3 + n2 + n1
    sizes = [4 * n, id_dt.itemsize * n3, 4 * n2, 4 * n1]
    raw = pread(sum(sizes), off)
    parts, pos = [], 0
    i4 = np.dtype("<i4")
    for size, dt in zip(sizes, (i4, id_dt, i4, i4), strict=True):
        parts.append(np.frombuffer(raw, dtype=dt, count=size // dt.itemsize, offset=pos).astype(np.int64))
        pos += size
    return tuple(parts)

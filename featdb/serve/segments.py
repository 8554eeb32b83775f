"""The L3 segment cache: whole shared extents of the segments being served, within a byte budget."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import cachetools
from numpy.typing import NDArray


class _Extents(cachetools.FIFOCache[int, NDArray[Any]]):
    """FIFO by bytes (segments are served one after another, so the oldest is done), counting evictions."""

    def __init__(self, capacity: int) -> None:
        super().__init__(maxsize=max(1, capacity), getsizeof=lambda a: int(a.nbytes))
        self.evictions = 0

    def popitem(self) -> tuple[int, NDArray[Any]]:
        self.evictions += 1
        return super().popitem()


class SegmentCache:
    """Whole L3 extents of the segments being served, within a byte budget.

    Batches of one segment are served consecutively (see
    :meth:`LayoutReader.epoch_order`), so each shared extent is read once, in
    one sequential read, instead of once per batch page by page. An extent
    larger than the budget is never cached: its batches read only their pages
    (counted as ``too_large``). Two batches of one segment asking at once wait
    for one read.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._lock = threading.Lock()
        self._loading: dict[int, threading.Lock] = {}
        self._held = _Extents(capacity)
        self.hits = self.misses = self.too_large = 0

    def get(self, seg: int, nbytes: int, load: Callable[[int], NDArray[Any]]) -> tuple[NDArray[Any] | None, int]:
        """The extent (and the bytes read to get it: 0 on a hit), or (None, 0) if it cannot fit."""
        if nbytes > self.capacity:
            with self._lock:
                self.too_large += 1
            return None, 0
        with self._lock:
            held = self._held.get(seg)
            if held is not None:
                self.hits += 1
                return held, 0
            gate = self._loading.setdefault(seg, threading.Lock())
        with gate:
            with self._lock:
                held = self._held.get(seg)
                if held is not None:
                    self.hits += 1
                    return held, 0
            extent = load(seg)
            with self._lock:
                self.misses += 1
                self._held[seg] = extent
                self._loading.pop(seg, None)
            return extent, nbytes

    def as_dict(self) -> dict[str, Any]:
        with self._lock:
            return {
                "hits": self.hits,
                "misses": self.misses,
                "evictions": self._held.evictions,
                "too_large": self.too_large,
                "bytes": int(self._held.currsize),
                "capacity": self.capacity,
            }

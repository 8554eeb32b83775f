"""The segment cache: whole segments (shared L3 extents, blocks of base-table rows) held in memory
within a byte budget, the next one read ahead while the current one is served."""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any

import cachetools
from numpy.typing import NDArray

from ..memory import MemoryBudget
from ..runs import WINDOW
from ..units import format_size

Load = Callable[[int], NDArray[Any]]


def segment_cache_for(memory: MemoryBudget, largest: int, want: int) -> SegmentCache:
    """Memory for whole segments: what the layout was planned for (two of its largest, one
    served and one read ahead), as far as the budget allows; a warning when the budget leaves
    less than the largest segment (its batches then read page by page)."""
    if not largest:
        return SegmentCache(0)
    memory.charge("segment read scratch", 2 * WINDOW)
    got = memory.fit("segment cache", min(want, 2 * largest))
    if got < largest <= want:  # the budget, not the caller, is what makes it page by page
        warnings.warn(
            f"featdb: the layout's largest segment needs {format_size(largest)} of memory but the budget "
            f"leaves {format_size(got)}: its batches will read page by page (slower); raise the memory "
            f"budget or repack with --segment-cache {format_size(got)}",
            stacklevel=4,
        )
    return SegmentCache(got)


class _Extents(cachetools.FIFOCache[int, NDArray[Any]]):
    """FIFO by bytes (segments are served one after another, so the oldest is done), counting evictions."""

    def __init__(self, capacity: int) -> None:
        super().__init__(maxsize=max(1, capacity), getsizeof=lambda a: int(a.nbytes))
        self.evictions = 0

    def popitem(self) -> tuple[int, NDArray[Any]]:
        self.evictions += 1
        return super().popitem()


class SegmentCache:
    """Whole segments of the layout, within a byte budget.

    Batches of one segment are served consecutively (see
    :meth:`LayoutReader.epoch_order`), so each segment is read once, in large
    reads, instead of once per batch page by page. A segment larger than the
    budget is never cached: its batches read only their pages (counted as
    ``too_large``). Two batches of one segment asking at once wait for one read;
    :meth:`prefetch` reads the next segment on another thread, after making room
    for it without evicting the one being served.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._lock = threading.Lock()
        self._loading: dict[int, Future[NDArray[Any]]] = {}
        self._held = _Extents(capacity)
        self.hits = self.misses = self.too_large = self.prefetched = self.waited = 0

    def get(self, seg: int, nbytes: int, load: Load) -> NDArray[Any] | None:
        """The segment's rows (read now if neither held nor being read), or None if it cannot fit."""
        if nbytes > self.capacity:
            with self._lock:
                self.too_large += 1
            return None
        with self._lock:
            held = self._held.get(seg)
            if held is not None:
                self.hits += 1
                return held
            fut = self._loading.get(seg)
            mine = fut is None
            if fut is None:
                fut = self._loading[seg] = Future()
                self.misses += 1
            else:
                self.waited += 1
        if mine:
            self._fill(seg, nbytes, load, fut, keep=None)
        return fut.result()

    def prefetch(self, seg: int, nbytes: int, load: Load, pool: Executor, keep: int) -> bool:
        """Start reading ``seg`` on ``pool`` if it fits beside ``keep`` (the segment being served)."""
        with self._lock:
            if seg in self._held or seg in self._loading or nbytes > self.capacity:
                return False
            beside = self._held.get(keep)
            if nbytes + (0 if beside is None else int(beside.nbytes)) > self.capacity:
                return False
            fut: Future[NDArray[Any]] = Future()
            fut.set_running_or_notify_cancel()
            self._loading[seg] = fut
            self.prefetched += 1
        pool.submit(self._fill, seg, nbytes, load, fut, keep)
        return True

    def _fill(self, seg: int, nbytes: int, load: Load, fut: Future[NDArray[Any]], keep: int | None) -> None:
        try:
            with self._lock:  # make room first (oldest first, never ``keep``): memory stays within the budget
                for old in list(self._held):
                    if self._held.currsize + nbytes <= self.capacity:
                        break
                    if old != keep:
                        self._held.pop(old)
                        self._held.evictions += 1
            extent = load(seg)
        except BaseException as exc:
            with self._lock:
                self._loading.pop(seg, None)
            fut.set_exception(exc)
            return
        with self._lock:
            self._held[seg] = extent
            self._loading.pop(seg, None)
        fut.set_result(extent)

    def as_dict(self) -> dict[str, Any]:
        with self._lock:
            return {
                "hits": self.hits,
                "misses": self.misses,
                "prefetched": self.prefetched,
                "waited_for_prefetch": self.waited,
                "evictions": self._held.evictions,
                "too_large": self.too_large,
                "bytes": int(self._held.currsize),
                "capacity": self.capacity,
            }

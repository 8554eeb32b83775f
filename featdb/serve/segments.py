"""The segment cache: whole segments (shared L3 extents, blocks of base-table rows) held in memory
within a byte budget, the next one read ahead while the current one is served."""

from __future__ import annotations

import collections
import contextlib
import mmap
import threading
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future
from typing import Any

import cachetools
import numpy as np
from numpy.typing import NDArray

from ..errors import CorruptDataError
from ..io import PAGE, aligned_buffer
from ..memory import MemoryBudget
from ..rowcopy import gather_rows, take_rows
from ..runs import WINDOW
from ..units import format_size

GRANULE = 1 << 20  # large segment buffers are whole MiBs, so one freed by a segment fits the next of about its size


def buffer_size(nbytes: Any) -> Any:
    """The buffer a segment of ``nbytes`` gets: whole pages, and whole GRANULEs from 8 of them
    (works on arrays too)."""
    pages = -(-np.maximum(nbytes, 1) // PAGE) * PAGE
    return np.where(pages >= 8 * GRANULE, -(-pages // GRANULE) * GRANULE, pages)


def compact_rows(buf: Any, n: int, rb: int) -> NDArray[Any]:
    """The first ``n`` rows of ``rb`` bytes of ``buf`` as an (n, rb) uint8 array."""
    return np.frombuffer(buf, dtype=np.uint8, count=n * rb).reshape(n, rb)


class Held:
    """A segment in memory: ``n`` rows of ``rb`` bytes in ``buf``, row i at byte ``pos[i]`` (or at
    ``i * rb`` when ``pos`` is None: rows compact). Rows read straight from their page runs keep
    the runs' layout (``pos``), which saves copying the whole segment once more."""

    __slots__ = ("buf", "n", "nbytes", "pos", "rb", "retired", "users")

    def __init__(self, buf: Any, n: int, rb: int, pos: NDArray[Any] | None = None) -> None:
        self.buf, self.n, self.rb, self.pos = buf, n, rb, pos
        self.nbytes = len(buf) + (0 if pos is None else int(pos.nbytes))
        self.users = 0  # batches gathering from it: its buffer is reused only when none are
        self.retired = False

    def take(self, rows: NDArray[Any], out: NDArray[Any]) -> None:
        """``out[i]`` = the segment's row ``rows[i]``; ``CorruptDataError`` for a row out of range."""
        if self.pos is None:
            take_rows(compact_rows(self.buf, self.n, self.rb), rows, out)
            return
        if len(rows) and (int(rows.min()) < 0 or int(rows.max()) >= self.n):
            raise CorruptDataError(f"segment row outside [0, {self.n}): {int(rows.min())}..{int(rows.max())}")
        gather_rows(self.buf, self.pos[rows], self.rb, out)


Load = Callable[[int, Callable[[int], Any]], Held]


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
    elif got < 2 * largest <= want:
        warnings.warn(
            f"featdb: the layout's segments are read ahead in pairs of up to {format_size(2 * largest)} but the "
            f"budget leaves {format_size(got)}: the largest wait to be read rather than being read ahead "
            f"(slower); raise the memory budget by {format_size(2 * largest - got)} or repack with "
            f"--segment-cache {format_size(got)}",
            stacklevel=4,
        )
    return SegmentCache(got)


class _Extents(cachetools.FIFOCache[int, Held]):
    """FIFO by bytes (segments are served one after another, so the oldest is done); what leaves is
    handed to ``retire``."""

    def __init__(self, capacity: int, retire: Callable[[Held], None]) -> None:
        super().__init__(maxsize=max(1, capacity), getsizeof=lambda h: h.nbytes)
        self.evictions = 0
        self._retire = retire

    def popitem(self) -> tuple[int, Held]:
        key, held = super().popitem()
        self.evictions += 1
        self._retire(held)
        return key, held


class SegmentCache:
    """Whole segments of the layout, within a byte budget.

    Batches of one segment are served consecutively (see
    :meth:`LayoutReader.epoch_order`), so each segment is read once, in large
    reads, instead of once per batch page by page. A segment larger than the
    budget is never cached: its batches read only their pages (counted as
    ``too_large``). Two batches of one segment asking at once wait for one read;
    :meth:`prefetch` reads the next segment on another thread, after making room
    for it without evicting the one being served. The buffer of a segment that
    has left, once no batch gathers from it any more, is reused for the next
    segment loaded (a fresh mapping costs a page fault per page: about 0.45 ms
    per MiB here, over 2 s of CPU per epoch on the 2 M-node graph).
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._lock = threading.Lock()
        self._loading: dict[int, Future[Held]] = {}
        self._held = _Extents(capacity, self._retire)
        self._free: list[mmap.mmap] = []
        self._loading_bytes = 0  # buffers being filled: neither held nor free, but memory all the same
        self._wanted: collections.Counter[int] = collections.Counter()  # batches asked for, not yet served
        self._declined: dict[int, int] = {}  # segments read ahead that did not fit beside the one served
        self.hits = self.misses = self.too_large = self.prefetched = self.waited = self.reused = 0

    @contextlib.contextmanager
    def use(self, seg: int, nbytes: int, load: Load) -> Iterator[Held | None]:
        """The segment (read now if neither held nor being read), or None if it cannot fit; its
        buffer is not reused while the block runs."""
        held = self._get(seg, nbytes, load)
        try:
            yield held
        finally:
            if held is not None:
                with self._lock:
                    held.users -= 1
                    self._retire(held)

    def _get(self, seg: int, nbytes: int, load: Load) -> Held | None:
        if nbytes > self.capacity:
            with self._lock:
                self.too_large += 1
            return None
        while True:
            with self._lock:
                held = self._held.get(seg)
                if held is not None:
                    self.hits += 1
                    held.users += 1
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
            held = fut.result()
            with self._lock:
                if not held.retired:  # else it left (and its buffer went on) before this batch got to it
                    held.users += 1
                    return held

    def prefetch(self, seg: int, nbytes: int, load: Load, pool: Executor, keep: int) -> bool:
        """Start reading ``seg`` on ``pool`` if it fits beside ``keep`` (the segment being served), the
        segments batches still want, and the loads under way."""
        with self._lock:
            if seg in self._held or seg in self._loading or nbytes > self.capacity or self._declined.get(seg) == keep:
                return False
            # beside the segment being served and every one a batch still asks for or gathers from: a read
            # ahead that evicted one of those would have it read again (asked again once they are done)
            busy = sum(h.nbytes for k, h in self._held.items() if k == keep or k in self._wanted or h.users)
            if nbytes + busy + self._loading_bytes > self.capacity:
                return False
            fut: Future[Held] = Future()
            fut.set_running_or_notify_cancel()
            self._loading[seg] = fut
            self.prefetched += 1
        pool.submit(self._fill, seg, nbytes, load, fut, keep)
        return True

    def _fill(self, seg: int, nbytes: int, load: Load, fut: Future[Held], keep: int | None) -> None:
        try:
            with self._lock:  # make room first: memory stays within the budget
                self._make_room(nbytes, keep)
                self._loading_bytes += nbytes
            try:
                extent = load(seg, self._buffer)
            finally:
                with self._lock:
                    self._loading_bytes -= nbytes
        except BaseException as exc:
            with self._lock:
                self._loading.pop(seg, None)
            fut.set_exception(exc)
            return
        with self._lock:
            self._make_room(extent.nbytes, keep, loaded=True)  # it may be a little larger than asked
            if keep is not None and keep in self._held and self._held.currsize + extent.nbytes > self.capacity:
                # read ahead, it does not fit beside the segment being served: that one stays (else it would
                # be read again for its next batch, and this one again after it); not read ahead again
                self._declined[seg] = keep
            else:
                self._held[seg] = extent
            self._loading.pop(seg, None)
        fut.set_result(extent)

    def want(self, seg: int, n: int = 1) -> None:
        """A batch of ``seg`` was asked for (``n`` = 1) or served (-1): while any is outstanding the
        segment is evicted only when nothing else can go (it would be read again)."""
        with self._lock:
            self._wanted[seg] += n
            if self._wanted[seg] <= 0:
                del self._wanted[seg]

    def _make_room(self, nbytes: int, keep: int | None, loaded: bool = False) -> None:
        """Evict segments, oldest first, never ``keep``, until ``nbytes`` more fit beside what is held
        and kept free: first those no batch waits for, then any (under the lock). Free buffers count,
        unless the load will take one (then it only moves)."""
        if self._over(nbytes, loaded):
            self._free = self._reusable(nbytes)[:1] if not loaded else []
        for spare_wanted in (True, False):
            for old in list(self._held):
                if not self._over(nbytes, loaded):
                    return
                if old != keep and not (spare_wanted and (old in self._wanted or self._held[old].users)):
                    self._held.evictions += 1
                    self._retire(self._held.pop(old))

    def _over(self, nbytes: int, loaded: bool) -> bool:
        """Would ``nbytes`` more exceed the capacity? A free buffer the load will take only moves."""
        free = sum(len(b) for b in self._free)
        fits = [] if loaded else self._reusable(nbytes)
        if fits:
            free -= len(fits[0])  # the one it takes
        return bool(self._held.currsize + self._loading_bytes + free + nbytes > self.capacity)

    def _reusable(self, nbytes: int) -> list[mmap.mmap]:
        """Free buffers a load of ``nbytes`` may take, closest in size first: from 0.8 to 1.25 times
        its size (a smaller one grows; segments of one layout differ by a few MiB)."""
        size = int(buffer_size(nbytes))
        return sorted((b for b in self._free if size * 0.8 <= len(b) <= size * 1.25), key=lambda b: abs(len(b) - size))

    def _buffer(self, nbytes: int) -> Any:
        """A page-aligned buffer of exactly ``buffer_size(nbytes)``: a freed one of about that size,
        shrunk (its tail's pages go back to the system) or grown to it, else a new one. Exact sizes
        keep two segments that fit the cache on paper fitting it in fact (a freed buffer a little larger
        than the segment, kept whole, pushed the segment being served out when a read ahead came in);
        growing one keeps all but the new pages mapped (taking a new buffer instead for a segment 1 MiB
        larger than the free one cost a page fault for each of its pages)."""
        size = int(buffer_size(nbytes))
        with self._lock:
            fits = self._reusable(nbytes)
            buf = fits[0] if fits else None
            if buf is not None:
                self._free.remove(buf)
            else:
                self._free.clear()  # none fits: let them go rather than hold them beside a new one
        if buf is not None:
            try:
                if len(buf) != size:
                    buf.resize(size)  # a private map: mremap, page-aligned wherever it lands
                with self._lock:
                    self.reused += 1
                return buf
            except (BufferError, OSError, ValueError, SystemError):  # a view still holds it: a new one
                pass
        return aligned_buffer(size, populate=True)

    def _retire(self, held: Held) -> None:
        """Called under the lock when a segment leaves or a batch is done with one: once both, its
        buffer is kept for the next load if memory allows (what is held and kept stays within the
        capacity), else let go."""
        if held.users or held.retired or any(h is held for h in self._held.values()):
            return
        held.retired = True
        if isinstance(held.buf, mmap.mmap):
            kept = self._held.currsize + self._loading_bytes + sum(len(b) for b in self._free) + len(held.buf)
            if kept <= self.capacity:
                self._free.append(held.buf)

    def as_dict(self) -> dict[str, Any]:
        with self._lock:
            return {
                "hits": self.hits,
                "misses": self.misses,
                "prefetched": self.prefetched,
                "waited_for_prefetch": self.waited,
                "evictions": self._held.evictions,
                "too_large": self.too_large,
                "buffers_reused": self.reused,
                "bytes": int(self._held.currsize),
                "capacity": self.capacity,
            }

"""Reading whole segments: a packed shared (L3) extent in one sequential read, or a blocks
segment's rows from the base table in large coalesced reads."""

from __future__ import annotations

import concurrent.futures
import contextlib
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any

import cachetools
import numpy as np
from numpy.typing import NDArray

from ..errors import CorruptDataError
from ..io import (
    PAGE,
    PageFile,
    ScratchBuffers,
    aligned_buffer,
    read_pieces,
    read_scattered,
)
from ..layout.document import SEG_COLS
from ..pagesums import PageChecksums
from ..rowcopy import gather_rows
from ..runs import QUEUE_DEPTH, Window, windows
from ..tables import HEADER_BYTES, TableReader
from .checks import ReadChecks
from .segments import Held, buffer_size, compact_rows
from .stats import ServeStats

PIECE = 16 << 20  # a sequential read larger than this is split into parallel pieces


def segment_index(raw: NDArray[Any], cols: int) -> NDArray[Any]:
    """The segments index as SEG_COLS columns (layouts without blocks have 5)."""
    if raw.size % cols:
        raise CorruptDataError(f"segments index: {raw.size} entries is not a multiple of {cols}")
    segs = raw.reshape(-1, cols)
    if cols < SEG_COLS:  # no blocks (5 columns) or no copies (7): pad, copy offset -1
        pad = np.zeros((len(segs), SEG_COLS - cols), dtype=segs.dtype)
        pad[:, -1] = -1
        segs = np.hstack([segs, pad])
    return segs


def _gather(buf: Any, pos: NDArray[Any], rb: int, out: NDArray[Any]) -> None:
    """Rows at byte positions ``pos`` of ``buf`` into ``out``: rows that lie back to back (a copy's
    runs) are copied as whole blocks, scattered ones through :func:`gather_rows`."""
    cuts = np.flatnonzero(np.diff(pos) != rb) + 1
    if len(cuts) * 8 > len(pos):  # mostly scattered: one vectorised gather
        gather_rows(buf, pos, rb, out)
        return
    src = np.frombuffer(buf, dtype=np.uint8)
    flat = out.reshape(-1)
    for lo, hi in zip([0, *cuts.tolist()], [*cuts.tolist(), len(pos)], strict=True):
        p = int(pos[lo])
        flat[lo * rb : hi * rb] = src[p : p + (hi - lo) * rb]


def segment_bytes(segs: NDArray[Any], row_bytes: int, base_row_bytes: int = 0) -> NDArray[Any]:
    """Memory each whole segment takes compact (a blocks segment's rows, a packed extent's pages),
    as :func:`buffer_size` rounds it; a blocks segment read in place may take more (see ``limit``).
    Rows read from the base table are ``base_row_bytes`` each (when the layout stores them narrower)."""
    blocks_rb = np.where(segs[:, 7] < 0, base_row_bytes or row_bytes, row_bytes)
    raw = np.where(segs[:, 6] > 0, segs[:, 6] * blocks_rb, segs[:, 3] * row_bytes)
    out: NDArray[Any] = np.where(raw > 0, buffer_size(raw), 0)  # a segment with no rows holds nothing
    return out


def largest_segment(segs: NDArray[Any], row_bytes: int, base_row_bytes: int = 0) -> int:
    """The memory the largest segment takes compact, as the segment cache plans for it."""
    return int(segment_bytes(segs, row_bytes, base_row_bytes).max(initial=0))


def _in_place_bytes(wins: list[Window], n: int) -> int:
    """Memory a blocks segment of ``n`` rows read in place takes: its runs (whole GRANULEs) and positions."""
    return int(buffer_size(sum(int(w.nbytes.sum()) for w in wins))) + 8 * n


def _read_list(
    src: PageFile, pages: PageChecksums | None, mv: memoryview, offsets: list[int], at: list[int], sizes: list[int]
) -> int:
    """Reads (file offset, buffer offset, length) in turn; each checked against ``pages`` when given."""
    done = sum(src.read_into(mv[b : b + n], f) for f, b, n in zip(offsets, at, sizes, strict=True))
    if pages is not None:
        pages.check_reads(mv, offsets, at, sizes)
    return done


class SegmentReader:
    """Loads segment ``s`` whole, or reads just some of its rows when it is too large to hold.

    Rows of a packed extent or a copy are ``row_bytes`` each (the layout's row format); rows
    read from the base table ``base_row_bytes`` (the table's, when that differs)."""

    def __init__(
        self,
        segs: NDArray[Any],
        row_bytes: int,
        l3: PageFile,
        base: TableReader,
        checks: ReadChecks,
        copies: PageFile | None,
        io: Executor,
        threads: int,
        stats: ServeStats,
        base_row_bytes: int = 0,
    ) -> None:
        self.segs, self.rb, self.l3, self.base, self.copies = segs, row_bytes, l3, base, copies
        self.brb = base_row_bytes or row_bytes
        self.io, self.threads, self.stats = io, threads, stats
        self.pool = ThreadPoolExecutor(max_workers=QUEUE_DEPTH, thread_name_prefix="featdb-segment-io")
        self.scratch = ScratchBuffers()
        self._windows: list[Any] = []  # the two window buffers compact loads share, one load at a time
        self._windows_lock = threading.Lock()
        self.checks, self._blocks = checks, checks.blocks("blocks.i64")
        self._pages = {  # what each source's pages are checked against (None: not checked)
            id(l3): checks.pages("l3.dat", l3.size),
            id(base.file): base.pages,
            **({id(copies): checks.pages("copies.dat", copies.size)} if copies is not None else {}),
        }
        self.sizes = segment_bytes(segs, row_bytes, self.brb)
        # a blocks segment is kept as read (runs and all) when that fits in ``limit`` (the reader sets it
        # to half its segment cache, so one fits beside another): serving it then costs no whole-segment copy
        self.limit = int(self.sizes.max(initial=0))
        # planned reads (rows, windows, in place?) of the segments served and read ahead: ~8 B a row
        self._plans: cachetools.LRUCache[int, tuple[int, list[Window], bool]] = cachetools.LRUCache(2)
        self._plan_lock = threading.Lock()

    def is_blocks(self, seg: int) -> bool:
        return bool(self.segs[seg, 6])

    def row_bytes_of(self, seg: int) -> int:
        """The bytes of one of the segment's rows as it is held: the base table's or the layout's."""
        return self.brb if self.is_blocks(seg) and self.segs[seg, 7] < 0 else self.rb

    def tier(self, seg: int) -> str:
        """Where the segment's rows count: "base" when read from the base table, else "l3"."""
        return "base" if self.is_blocks(seg) and self.segs[seg, 7] < 0 else "l3"

    def nbytes(self, seg: int) -> int:
        """Memory the whole segment will take when loaded (see :meth:`load`): exact once its read is
        planned; until then, for a blocks segment that may be kept as read, the most that may take
        (planning costs tens of ms, which belong on the thread that reads it, not on a batch's)."""
        size = int(self.sizes[seg])
        if not self.is_blocks(seg):
            return size
        with self._plan_lock:
            plan = self._plans.get(seg)
        if plan is None:
            return max(size, self.limit) if size <= self.limit else size
        n, wins, in_place = plan
        return _in_place_bytes(wins, n) if in_place else size

    def _plan(self, seg: int) -> tuple[int, list[Window], bool]:
        """A blocks segment's rows, the windows that read them, and whether to keep it as read."""
        with self._plan_lock:  # held while planning: threads that need one plan make it once
            got = self._plans.get(seg)
            if got is None:
                ids = self.ids(seg)
                first = self._source(seg)[1]
                rb = self.row_bytes_of(seg)
                wins = windows(first + ids * rb, rb) if len(ids) else []
                n = len(ids)
                got = self._plans[seg] = (n, wins, bool(n) and _in_place_bytes(wins, n) <= self.limit)
        return got

    def ids(self, seg: int) -> NDArray[Any]:
        """A blocks segment's rows, ascending: node ids, or positions in its copy."""
        off, n = int(self.segs[seg, 5]), int(self.segs[seg, 6])
        raw = self._blocks.pread(8 * n, 8 * off)
        ids = np.frombuffer(raw, dtype="<i8")
        if n and (ids[0] < 0 or ids[-1] >= self.base.schema.rows or np.any(np.diff(ids) <= 0)):
            raise CorruptDataError(f"blocks.i64: segment {seg}'s rows are not ascending rows of the table")
        return ids

    def _source(self, seg: int) -> tuple[PageFile, int]:
        """The file a blocks segment reads and the byte offset of its row 0."""
        at = int(self.segs[seg, 7])
        if at < 0:
            return self.base.file, HEADER_BYTES
        if self.copies is None:
            raise CorruptDataError(f"segment {seg} reads a copy, but the layout has no copies.dat")
        return self.copies, at

    def load(self, seg: int, alloc: Callable[[int], Any] = aligned_buffer) -> Held:
        """The whole segment, in a buffer from ``alloc``; counts the bytes read.

        A blocks segment whose page runs take little more memory than its rows is
        kept as read, rows where they landed; otherwise its rows are gathered compact
        window by window. A packed (L3) extent is one sequential read."""
        t = time.perf_counter()
        if self.is_blocks(seg):
            n, wins, in_place = self._plan(seg)
            rb = self.row_bytes_of(seg)
            if in_place:
                held, nbytes = self._read_in_place(seg, wins, n, alloc)
            else:
                held = Held(alloc(n * rb), n, rb)
                nbytes = self._read_windows(self._source(seg)[0], wins, compact_rows(held.buf, n, rb), rb)
            self.stats.add(self.tier(seg), 0, nbytes, time.perf_counter() - t)
            return held
        n, size = int(self.segs[seg, 3]), -(-int(self.segs[seg, 3]) * self.rb // PAGE) * PAGE
        buf = alloc(size)
        nbytes = read_pieces(self.l3, self.io, memoryview(buf)[:size], int(self.segs[seg, 2]), PIECE)
        self.checks.extent(memoryview(buf)[:size], int(self.segs[seg, 4]), f"l3.dat: segment {seg}'s extent")
        self.stats.add("l3", 0, nbytes, time.perf_counter() - t)
        return Held(buf, n, self.rb)

    def _read_in_place(self, seg: int, wins: list[Window], n: int, alloc: Callable[[int], Any]) -> tuple[Held, int]:
        """Every window's runs into one buffer, back to back; rows are served from where they landed."""
        at = np.cumsum([0] + [int(w.nbytes.sum()) for w in wins])[:-1]
        buf = alloc(_in_place_bytes(wins, 0))
        pos = np.concatenate([w.pos + a for w, a in zip(wins, at, strict=True)])
        reads = [
            np.concatenate(parts)
            for parts in zip(
                *((w.file_off, w.buf_off + a, w.nbytes) for w, a in zip(wins, at, strict=True)), strict=True
            )
        ]
        src, _ = self._source(seg)
        nbytes = self._start(src, reads[0], reads[1], reads[2], buf)()
        return Held(buf, n, self.row_bytes_of(seg), pos), nbytes

    def read_rows(self, seg: int, rows: NDArray[Any], out: NDArray[Any]) -> None:
        """Only ``rows`` (positions in the segment) into ``out`` (rows of :meth:`row_bytes_of`),
        reading just their pages."""
        t = time.perf_counter()
        uniq, inv = np.unique(rows, return_inverse=True)
        if self.is_blocks(seg):
            got = np.empty((len(uniq), self.row_bytes_of(seg)), dtype=np.uint8)
            nbytes = self._read_base(seg, self.ids(seg)[uniq], got)
            out[...] = got[inv]
            self.stats.add(self.tier(seg), len(rows), nbytes, time.perf_counter() - t)
            return
        starts = int(self.segs[seg, 2]) + uniq * self.rb
        pages = self._pages[id(self.l3)]
        nbytes = read_scattered(
            self.l3, self.io, self.threads, self.scratch, starts, self.rb, out, inv, pages.check_runs if pages else None
        )
        self.stats.add("l3", len(rows), nbytes, time.perf_counter() - t)

    def _read_base(self, seg: int, ids: NDArray[Any], out: NDArray[Any]) -> int:
        """Sorted ids' rows (of a segment too large to hold) from its source, in temporary windows."""
        if not len(ids):
            return 0
        src, first = self._source(seg)
        rb = self.row_bytes_of(seg)
        return self._read_windows(src, windows(first + ids * rb, rb), out, rb, shared=False)

    def _read_windows(self, src: PageFile, wins: list[Window], out: NDArray[Any], rb: int, shared: bool = True) -> int:
        """Rows into ``out`` window by window: each window's page runs (reading through gaps of up
        to GAP_PAGES, cheaper than another request) read as parallel pieces while the previous
        window is gathered."""
        if not wins:
            return 0
        size = max(int(w.nbytes.sum()) for w in wins)
        with self._windows_lock if shared else contextlib.nullcontext():  # the scratch charged is one pair
            bufs = self._window_buffers(size) if shared else [aligned_buffer(size), aligned_buffer(size)]
            nbytes = 0
            pending = self._start(src, wins[0].file_off, wins[0].buf_off, wins[0].nbytes, bufs[0])
            for i, w in enumerate(wins):
                nbytes += pending()
                if i + 1 < len(wins):
                    nxt = wins[i + 1]
                    pending = self._start(src, nxt.file_off, nxt.buf_off, nxt.nbytes, bufs[(i + 1) % 2])
                _gather(bufs[i % 2], w.pos, rb, out[w.lo : w.hi])
        return nbytes

    def _window_buffers(self, size: int) -> list[Any]:
        """The two window buffers, grown when too small (reused: a fresh mapping costs a page fault
        per page). Called under ``_windows_lock``."""
        if not self._windows or len(self._windows[0]) < size:
            self._windows = [aligned_buffer(size), aligned_buffer(size)]
        return self._windows

    def _start(
        self, src: PageFile, file_off: NDArray[Any], buf_off: NDArray[Any], sizes: NDArray[Any], buf: Any
    ) -> Callable[[], int]:
        """Start the reads (file offset, buffer offset, length) on QUEUE_DEPTH workers, each a share
        of them in order (one task per read would cost a future, a lock and a thread hand-off per
        read of a few tens of KiB); returns the function that waits for them."""
        mv = memoryview(buf)
        cuts = np.searchsorted(np.cumsum(sizes), np.arange(1, QUEUE_DEPTH) * (int(sizes.sum()) / QUEUE_DEPTH))
        futures = [
            self.pool.submit(_read_list, src, self._pages.get(id(src)), mv, f.tolist(), b.tolist(), n.tolist())
            for f, b, n in zip(np.split(file_off, cuts), np.split(buf_off, cuts), np.split(sizes, cuts), strict=True)
            if len(n)
        ]

        def wait() -> int:
            concurrent.futures.wait(futures)
            return sum(fut.result() for fut in futures)

        return wait

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        self._blocks.close()


__all__ = ["SegmentReader", "largest_segment", "segment_index"]

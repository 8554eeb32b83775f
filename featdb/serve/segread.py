"""Reading whole segments: a packed shared (L3) extent in one sequential read, or a blocks
segment's rows from the base table in large coalesced reads."""

from __future__ import annotations

import concurrent.futures
import os
import time
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import CorruptDataError
from ..io import (
    PAGE,
    PageFile,
    ScratchBuffers,
    aligned_buffer,
    gather_rows,
    read_pieces,
    read_scattered,
)
from ..layout.document import SEG_COLS
from ..runs import QUEUE_DEPTH, Window, windows
from ..tables import HEADER_BYTES, TableReader
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


def segment_bytes(segs: NDArray[Any], row_bytes: int) -> NDArray[Any]:
    """Memory each whole segment takes: a blocks segment's rows compact, a packed extent page-aligned."""
    packed = -(-segs[:, 3] * row_bytes // PAGE) * PAGE
    out: NDArray[Any] = np.where(segs[:, 6] > 0, segs[:, 6] * row_bytes, packed)
    return out


class SegmentReader:
    """Loads segment ``s`` whole, or reads just some of its rows when it is too large to hold."""

    def __init__(
        self,
        segs: NDArray[Any],
        row_bytes: int,
        l3: PageFile,
        base: TableReader,
        blocks_path: Any,
        copies: PageFile | None,
        io: Executor,
        threads: int,
        stats: ServeStats,
    ) -> None:
        self.segs, self.rb, self.l3, self.base, self.copies = segs, row_bytes, l3, base, copies
        self.io, self.threads, self.stats = io, threads, stats
        self.pool = ThreadPoolExecutor(max_workers=QUEUE_DEPTH, thread_name_prefix="featdb-segment-io")
        self.scratch = ScratchBuffers()
        self._fd = os.open(blocks_path, os.O_RDONLY) if os.path.exists(blocks_path) else -1
        self.sizes = segment_bytes(segs, row_bytes)

    def is_blocks(self, seg: int) -> bool:
        return bool(self.segs[seg, 6])

    def tier(self, seg: int) -> str:
        """Where the segment's rows count: "base" when read from the base table, else "l3"."""
        return "base" if self.is_blocks(seg) and self.segs[seg, 7] < 0 else "l3"

    def nbytes(self, seg: int) -> int:
        """Memory the whole segment takes (see :func:`segment_bytes`)."""
        return int(self.sizes[seg])

    def ids(self, seg: int) -> NDArray[Any]:
        """A blocks segment's rows, ascending: node ids, or positions in its copy."""
        off, n = int(self.segs[seg, 5]), int(self.segs[seg, 6])
        raw = os.pread(self._fd, 8 * n, 8 * off)
        if len(raw) != 8 * n:
            raise CorruptDataError(f"blocks.i64: short read for segment {seg}")
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

    def load(self, seg: int) -> NDArray[Any]:
        """The whole segment as a (rows, row_bytes) uint8 array; counts the bytes read."""
        t = time.perf_counter()
        if self.is_blocks(seg):
            ids = self.ids(seg)
            rows = np.empty((len(ids), self.rb), dtype=np.uint8)
            nbytes = self._read_base(seg, ids, rows)
            self.stats.add(self.tier(seg), 0, nbytes, time.perf_counter() - t)
            return rows
        buf = aligned_buffer(self.nbytes(seg))
        nbytes = read_pieces(self.l3, self.io, memoryview(buf), int(self.segs[seg, 2]), PIECE)
        n = int(self.segs[seg, 3])
        self.stats.add("l3", 0, nbytes, time.perf_counter() - t)
        return np.frombuffer(buf, dtype=np.uint8, count=n * self.rb).reshape(n, self.rb)

    def read_rows(self, seg: int, rows: NDArray[Any], out: NDArray[Any]) -> None:
        """Only ``rows`` (positions in the segment) into ``out``, reading just their pages."""
        t = time.perf_counter()
        uniq, inv = np.unique(rows, return_inverse=True)
        if self.is_blocks(seg):
            got = np.empty((len(uniq), self.rb), dtype=np.uint8)
            nbytes = self._read_base(seg, self.ids(seg)[uniq], got)
            out[...] = got[inv]
            self.stats.add(self.tier(seg), len(rows), nbytes, time.perf_counter() - t)
            return
        starts = int(self.segs[seg, 2]) + uniq * self.rb
        nbytes = read_scattered(self.l3, self.io, self.threads, self.scratch, starts, self.rb, out, order=inv)
        self.stats.add("l3", len(rows), nbytes, time.perf_counter() - t)

    def _read_base(self, seg: int, ids: NDArray[Any], out: NDArray[Any]) -> int:
        """Sorted ids' rows from the base table: their pages coalesced into runs (reading
        through gaps of up to GAP_PAGES, cheaper than another request), in windows of at most
        WINDOW bytes whose runs are read as parallel pieces while the previous window is gathered."""
        if not len(ids):
            return 0
        src, first = self._source(seg)
        wins = windows(first + ids * self.rb, self.rb)
        size = max(int(w.nbytes.sum()) for w in wins)
        bufs = [aligned_buffer(size), aligned_buffer(size)]
        nbytes = 0
        pending = self._start(src, wins[0], bufs[0])
        for i, w in enumerate(wins):
            nbytes += pending()
            if i + 1 < len(wins):
                pending = self._start(src, wins[i + 1], bufs[(i + 1) % 2])
            _gather(bufs[i % 2], w.pos, self.rb, out[w.lo : w.hi])
        return nbytes

    def _start(self, src: PageFile, w: Window, buf: Any) -> Callable[[], int]:
        mv = memoryview(buf)
        futures = [
            self.pool.submit(src.read_into, mv[b : b + n], f)
            for f, b, n in zip(w.file_off.tolist(), w.buf_off.tolist(), w.nbytes.tolist(), strict=True)
        ]

        def wait() -> int:
            concurrent.futures.wait(futures)
            return sum(fut.result() for fut in futures)

        return wait

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


__all__ = ["SegmentReader", "segment_index"]

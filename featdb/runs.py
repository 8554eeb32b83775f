"""Page runs for reading a sorted set of rows from a file: coalesced (reading through short
gaps, which costs less than another request), cut into windows of bounded memory, each run
read as parallel pieces. The planner predicts with the same cuts the reader makes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .io import PAGE

WINDOW = 16 << 20  # a window's runs take at most this much memory
READ_PIECE = 2 << 20  # each run is read as parallel reads of at most this size
GAP_PAGES = 8  # pages between two needed ones that are read through rather than skipped
QUEUE_DEPTH = 16  # reads in flight: runs are often tens of KiB, which one or four at a time cannot stream
# (measured here on a copy's segment, ~52 KiB per request: 4 in flight 0.48-0.64 GB/s, 16 in flight 0.9-1.0 GB/s;
# gaps of 0 pages are request-bound at ~0.43 GB/s, 2-8 pages the fastest)


@dataclass(frozen=True, slots=True)
class Window:
    """Rows [lo, hi) of the set and the reads that bring them into one buffer."""

    lo: int  # rows [lo, hi) of the segment
    hi: int
    pos: NDArray[Any]  # each row's byte position in the window's buffer
    file_off: NDArray[Any]  # the reads: file offset, buffer offset, length
    buf_off: NDArray[Any]
    nbytes: NDArray[Any]


def windows(starts: NDArray[Any], row_bytes: int) -> list[Window]:
    """Cut sorted row offsets into windows of whole rows whose page runs take at most WINDOW
    bytes (a run also spans gaps of up to GAP_PAGES pages); each run read in READ_PIECE pieces."""
    first, last = starts // PAGE, (starts + row_bytes - 1) // PAGE
    reach = np.maximum.accumulate(last)
    new_run = np.ones(len(starts), dtype=bool)
    new_run[1:] = first[1:] > reach[:-1] + 1 + GAP_PAGES
    prev_end = np.empty_like(first)
    prev_end[0] = first[0] - 1
    prev_end[1:] = np.where(new_run[1:], first[1:] - 1, reach[:-1])
    cost = np.cumsum(np.maximum(0, last - prev_end))  # pages read up to and including each row
    limit = WINDOW // PAGE
    out: list[Window] = []
    lo = 0
    while lo < len(starts):
        done = int(cost[lo - 1]) if lo else 0
        hi = max(lo + 1, int(np.searchsorted(cost, done + limit, side="right")))
        heads = np.flatnonzero(new_run[lo:hi]) + lo
        if not len(heads) or heads[0] != lo:
            heads = np.concatenate([[lo], heads])
        ends = np.append(heads[1:], hi)
        run_first = first[heads]
        run_pages = np.maximum.reduceat(last[lo:hi], heads - lo) - run_first + 1
        buf_off = np.zeros(len(heads), dtype=np.int64)
        np.cumsum(run_pages[:-1] * PAGE, out=buf_off[1:])
        owner = np.repeat(np.arange(len(heads)), ends - heads)
        pos = buf_off[owner] + starts[lo:hi] - run_first[owner] * PAGE
        pieces = -(-run_pages * PAGE // READ_PIECE)
        k = np.arange(int(pieces.sum())) - np.repeat(np.cumsum(pieces) - pieces, pieces)
        r = np.repeat(np.arange(len(heads)), pieces)
        size = np.minimum(READ_PIECE, run_pages[r] * PAGE - k * READ_PIECE)
        out.append(Window(lo, hi, pos, run_first[r] * PAGE + k * READ_PIECE, buf_off[r] + k * READ_PIECE, size))
        lo = hi
    return out


def bytes_read(starts: NDArray[Any], row_bytes: int) -> int:
    """What reading the rows at these sorted offsets costs, window by window."""
    return sum(int(w.nbytes.sum()) for w in windows(starts, row_bytes)) if len(starts) else 0

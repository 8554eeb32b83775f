"""Streaming the base table in and extents out: chunks read ahead on a thread, rows written to
their extents on another, and the crc (CRC-32C) of extents whose rows were written out of order."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..io import PAGE, aligned_buffer, round_up, write_all
from ..pagesums import DEFAULT as EXTENT_CHECKSUM
from ..pagesums import PageCrcs, crc_function
from ..tables import TableReader

EXTENT_CRC = crc_function(EXTENT_CHECKSUM)  # what a layout's extents and pages are checked with


def base_chunks(reader: TableReader, chunk_rows: int) -> Iterator[tuple[int, int, NDArray[Any]]]:
    """Base-table chunks in order, the next one read ahead on a thread."""
    rows = reader.schema.rows
    spans = [(lo, min(rows, lo + chunk_rows)) for lo in range(0, rows, chunk_rows)]
    nbytes = chunk_rows * reader.schema.row_bytes + 2 * PAGE
    bufs = [aligned_buffer(nbytes), aligned_buffer(nbytes)]
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="featdb-pack-read") as pool:
        ahead = [pool.submit(reader.read_range_into, bufs[0], *spans[0])] if spans else []
        for i, (lo, hi) in enumerate(spans):
            chunk = ahead.pop().result()
            if i + 1 < len(spans):
                ahead.append(pool.submit(reader.read_range_into, bufs[(i + 1) % 2], *spans[i + 1]))
            yield lo, hi, chunk


class ExtentWriter:
    """Writes a chunk's rows to their batch extents on a thread, while the next slice is gathered.

    A chunk's targets (sorted by source row) are cut into slices of at most
    ``slice_rows`` rows, so the gathered copy stays bounded however many
    extents a row goes to. Slices are written in order, one ``pwrite`` per
    contiguous piece, so each extent's crc32 is carried over its pieces in
    offset order (an extent's rows are sorted by node id, as the slices are).
    At most two slices are in flight.
    """

    def __init__(self, fd: int, crc: dict[int, int], slice_rows: int, rb: int, name: str = "l4.dat") -> None:
        self.fd, self.crc, self.slice_rows, self.rb, self.name = fd, crc, slice_rows, rb, name
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="featdb-pack-write")
        self._inflight: list[Future[None]] = []

    def scatter(self, chunk: NDArray[Any], rows: NDArray[Any], dst: NDArray[Any], ext: NDArray[Any]) -> None:
        for i in range(0, len(rows), self.slice_rows):
            j = i + self.slice_rows
            o = np.argsort(dst[i:j], kind="stable")
            d, e = dst[i:j][o], ext[i:j][o]
            gathered = chunk[rows[i:j][o]]
            while len(self._inflight) >= 2:
                self._inflight.pop(0).result()
            self._inflight.append(self._pool.submit(self._write, gathered, d, e))

    def _write(self, gathered: NDArray[Any], d: NDArray[Any], e: NDArray[Any]) -> None:
        rb = self.rb
        cut = np.flatnonzero((d[1:] != d[:-1] + rb) | (e[1:] != e[:-1])) + 1
        bounds = np.concatenate([[0], cut, [len(d)]]).tolist()
        mv = gathered.data.cast("B")
        for i, j in itertools.pairwise(bounds):
            piece = mv[i * rb : j * rb]
            write_all(self.fd, piece, int(d[i]), name=self.name)
            self.crc[int(e[i])] = EXTENT_CRC(piece, self.crc[int(e[i])])

    def drain(self) -> None:
        while self._inflight:
            self._inflight.pop(0).result()

    def __enter__(self) -> ExtentWriter:
        return self

    def __exit__(self, *_: object) -> None:
        try:
            self.drain()
        finally:
            self._pool.shutdown(wait=True)


def extent_crcs(fd: int, index: list[tuple[int, int, int]], rb: int) -> tuple[list[tuple[int, int, int]], bytes]:
    """Each copy's crc over its page-padded extent, read back once it is whole, and the crc of every
    page of the file (the copies lie back to back from offset 0, as the index lists them)."""
    out = []
    pages = PageCrcs(EXTENT_CHECKSUM)
    for off, rows, _ in index:
        crc, pos, end = 0, off, off + round_up(rows * rb)
        while pos < end:
            data = os.pread(fd, min(64 << 20, end - pos), pos)
            data += bytes(min(64 << 20, end - pos) - len(data))  # the zero padding past the last row
            crc = EXTENT_CRC(data, crc)
            pages.update(memoryview(data))
            pos += len(data)
        out.append((off, rows, crc))
    return out, pages.finish()

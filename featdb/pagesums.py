"""Per-page checksums of a base table: a crc32 for every 4 KiB page of ``rows.tbl``, kept beside it in
``rows.crc`` (little-endian uint32, 0.1 % of the table), so every read checks exactly the pages it
read, however few. The sidecar itself is covered by the catalog's block checksums (``verify``)."""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CorruptDataError
from .io import PAGE, PageRuns


class PageCrcs:
    """crc32 of every page of a stream written in pieces of any size (the stream is page-padded)."""

    def __init__(self) -> None:
        self.pending = bytearray()
        self.crcs: list[int] = []

    def update(self, mv: memoryview) -> None:
        pos = 0
        if self.pending:
            pos = min(len(mv), PAGE - len(self.pending))
            self.pending += mv[:pos]
            if len(self.pending) == PAGE:
                self.crcs.append(zlib.crc32(self.pending))
                self.pending.clear()
        whole = pos + (len(mv) - pos) // PAGE * PAGE
        self.crcs += [zlib.crc32(mv[p : p + PAGE]) for p in range(pos, whole, PAGE)]
        self.pending += mv[whole:]

    def finish(self) -> bytes:
        if self.pending:
            self.crcs.append(zlib.crc32(self.pending))
            self.pending.clear()
        return np.asarray(self.crcs, dtype="<u4").tobytes()


class PageChecksums:
    """Checks pages read from ``table`` against its ``rows.crc`` (memory-mapped: only what is read)."""

    def __init__(self, sidecar: Path, table: Path, table_bytes: int) -> None:
        self.table = table
        self.crcs: Any = np.memmap(sidecar, dtype="<u4", mode="r")
        if len(self.crcs) * PAGE != table_bytes:
            raise CorruptDataError(f"{sidecar}: {len(self.crcs)} page checksums for {table_bytes} bytes of {table}")

    def check(self, mv: memoryview, first_page: int) -> None:
        """``mv`` holds whole pages of the table from ``first_page`` on."""
        self._check(mv, np.arange(first_page, first_page + len(mv) // PAGE))

    def check_runs(self, mv: memoryview, runs: PageRuns) -> None:
        """``mv`` holds the runs' pages back to back (as :func:`~featdb.io.read_scattered` reads them)."""
        total = int(runs.npages.sum())
        before = np.cumsum(runs.npages) - runs.npages
        self._check(mv, np.repeat(runs.start - before, runs.npages) + np.arange(total))

    def _check(self, mv: memoryview, pages: Any) -> None:
        want = self.crcs[pages].tolist()
        got = [zlib.crc32(mv[o : o + PAGE]) for o in range(0, len(want) * PAGE, PAGE)]
        if got != want:
            p = int(pages[next(i for i, (g, w) in enumerate(zip(got, want, strict=True)) if g != w)])
            raise CorruptDataError(
                f"{self.table}: page {p} (bytes {p * PAGE}..{(p + 1) * PAGE}) fails its checksum; run featdb verify"
            )

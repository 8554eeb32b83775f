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
        want = self.crcs[first_page : first_page + len(mv) // PAGE].tolist()
        for i, crc in enumerate(want):
            if zlib.crc32(mv[i * PAGE : (i + 1) * PAGE]) != crc:
                p = first_page + i
                raise CorruptDataError(
                    f"{self.table}: page {p} (bytes {p * PAGE}..{(p + 1) * PAGE}) fails its checksum; run featdb verify"
                )

    def check_runs(self, mv: memoryview, runs: PageRuns) -> None:
        for start, n, off in zip(runs.start.tolist(), runs.npages.tolist(), runs.buf_offset.tolist(), strict=True):
            self.check(mv[off : off + n * PAGE], start)

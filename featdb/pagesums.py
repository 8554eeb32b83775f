"""Read-path checksums: a crc for every 4 KiB page of a data file (a base table's ``rows.tbl``, a
layout's ``copies.dat`` and ``l3.dat``) kept beside it in a ``.crc`` sidecar (little-endian uint32,
0.1 % of the file), so every read checks exactly the pages it read, however few; and the crc of
whole extents read whole. The sidecars are covered by the catalog's block checksums (``verify``).

The crc is CRC-32C (the ``crc32c`` package: the CPU's crc32 instruction, about 18 GB/s whole and
13 GB/s page by page here, against zlib's crc32 at 2.3 and 3.4). Bytes that have just arrived by
O_DIRECT come from memory, not the CPU's cache, so the check reads them once more
(docs/reliability.md has what that costs a training epoch). Files written before it was chosen
name no algorithm and are checked with zlib's crc32."""

from __future__ import annotations

import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import crc32c
import numpy as np
from numpy.typing import NDArray

from .errors import CorruptDataError
from .io import PAGE, PageRuns

Crc = Callable[[Any, int], int]
CRCS: dict[str, Crc] = {"crc32": zlib.crc32, "crc32c": crc32c.crc32c}
DEFAULT = "crc32c"


def crc_function(name: str | None) -> Crc:
    """The crc a document names (``None``: zlib's crc32, what files written before the choice used)."""
    try:
        return CRCS[name or "crc32"]
    except KeyError:
        raise CorruptDataError(f"unknown checksum algorithm {name!r}") from None


class PageCrcs:
    """The crc of every page of a stream written in pieces of any size (the stream is page-padded)."""

    def __init__(self, algorithm: str = DEFAULT) -> None:
        self.algorithm, self.crc = algorithm, crc_function(algorithm)
        self.pending = bytearray()
        self.crcs: list[int] = []

    def update(self, mv: memoryview) -> None:
        pos = 0
        if self.pending:
            pos = min(len(mv), PAGE - len(self.pending))
            self.pending += mv[:pos]
            if len(self.pending) == PAGE:
                self.crcs.append(self.crc(self.pending, 0))
                self.pending.clear()
        whole = pos + (len(mv) - pos) // PAGE * PAGE
        crc = self.crc
        self.crcs += [crc(mv[p : p + PAGE], 0) for p in range(pos, whole, PAGE)]
        self.pending += mv[whole:]

    def finish(self) -> bytes:
        if self.pending:
            self.crcs.append(self.crc(self.pending, 0))
            self.pending.clear()
        return np.asarray(self.crcs, dtype="<u4").tobytes()


class PageChecksums:
    """Checks pages read from ``table`` (any data file) against its sidecar (memory-mapped: only
    what is read)."""

    def __init__(self, sidecar: Path, table: Path, table_bytes: int, algorithm: str | None = None) -> None:
        self.table = table
        self.crc = crc_function(algorithm)
        # a plain view of the mapping: indexing a np.memmap wraps every result in another memmap
        self.crcs: NDArray[Any] = np.memmap(sidecar, dtype="<u4", mode="r").view(np.ndarray)
        if len(self.crcs) * PAGE != table_bytes:
            raise CorruptDataError(f"{sidecar}: {len(self.crcs)} page checksums for {table_bytes} bytes of {table}")

    def check(self, mv: memoryview, first_page: int) -> None:
        """``mv`` holds whole pages of the table from ``first_page`` on."""
        self._check(mv, np.arange(first_page, first_page + len(mv) // PAGE))

    def check_runs(self, mv: memoryview, runs: PageRuns) -> None:
        """``mv`` holds the runs' pages back to back (as :func:`~featdb.io.read_scattered` reads them)."""
        self._check(mv, _run_pages(runs.start, runs.npages))

    def check_reads(self, mv: memoryview, file_off: list[int], buf_off: list[int], sizes: list[int]) -> None:
        """Reads of whole pages (file offset, buffer offset, length; page-aligned) into ``mv``, all
        checked at once (one index lookup and one comparison for the lot, not one per read)."""
        if not sizes:
            return
        n = np.asarray(sizes, dtype=np.int64) // PAGE
        pages = _run_pages(np.asarray(file_off, dtype=np.int64) // PAGE, n)
        at = _run_pages(np.asarray(buf_off, dtype=np.int64) // PAGE, n) * PAGE
        self._check(mv, pages, at.tolist())

    def _check(self, mv: memoryview, pages: NDArray[Any], at: list[int] | None = None) -> None:
        """Pages ``pages`` of the file, at byte ``at[i]`` of ``mv`` (default: back to back)."""
        want = self.crcs[pages]
        crc = self.crc
        offs = range(0, len(want) * PAGE, PAGE) if at is None else at
        got = np.fromiter((crc(mv[o : o + PAGE], 0) for o in offs), dtype=np.uint32, count=len(want))
        bad = np.flatnonzero(got != want)
        if len(bad):
            p = int(pages[bad[0]])
            raise CorruptDataError(
                f"{self.table}: page {p} (bytes {p * PAGE}..{(p + 1) * PAGE}) fails its checksum; run featdb verify"
            )


def _run_pages(start: NDArray[Any], npages: NDArray[Any]) -> NDArray[Any]:
    """The pages of runs (first page, page count) in order, as one array."""
    before = np.cumsum(npages) - npages
    pages: NDArray[Any] = np.repeat(start - before, npages) + np.arange(int(npages.sum()))
    return pages

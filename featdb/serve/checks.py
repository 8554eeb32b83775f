"""What a reader checks as it reads a generation, so that it never serves a flipped byte: its index
files and memory tiers whole when it opens (against the catalog's block checksums), every extent it
reads whole against the extent's crc, every page it reads piecemeal against its file's page
checksums, and ``map.bin`` and ``blocks.i64`` (read a batch or a segment at a time) block by block
the first time any byte of a block is read. ``Store.verify_reads = False`` turns all of it off."""

from __future__ import annotations

import os
import threading
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import CorruptDataError
from ..io import CHECKSUM_BLOCK, PAGE, verify_file
from ..layout import generation
from ..pagesums import PageChecksums, crc_function
from ..store import Store
from ..tables import TableReader


class BlockChecked:
    """A file read in small pieces, each CHECKSUM_BLOCK block of it checked against the catalog's
    crc the first time any byte of it is read (``crcs`` None: nothing checked)."""

    def __init__(self, path: Path, crcs: list[int] | None) -> None:
        self.path, self.crcs = path, crcs
        self.fd = os.open(path, os.O_RDONLY) if path.exists() else -1
        self._ok = np.zeros(len(crcs or ()), dtype=bool)
        self._lock = threading.Lock()

    def pread(self, n: int, off: int) -> bytes:
        if self.crcs is not None and n:
            for b in range(off // CHECKSUM_BLOCK, (off + n - 1) // CHECKSUM_BLOCK + 1):
                if b >= len(self._ok) or not self._ok[b]:
                    self._check(b)
        raw = os.pread(self.fd, n, off)
        if len(raw) != n:
            raise CorruptDataError(f"{self.path}: short read of {n} bytes at {off}")
        return raw

    def _check(self, b: int) -> None:
        data = os.pread(self.fd, CHECKSUM_BLOCK, b * CHECKSUM_BLOCK) if b < len(self._ok) else b""
        if b >= len(self._ok) or zlib.crc32(data) != self.crcs[b]:  # type: ignore[index]
            raise CorruptDataError(
                f"{self.path}: block {b} (bytes {b * CHECKSUM_BLOCK}..{(b + 1) * CHECKSUM_BLOCK}) fails its "
                "checksum; run featdb verify"
            )
        with self._lock:
            self._ok[b] = True

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class ReadChecks:
    """The checks of one generation's files, or none when ``on`` is false."""

    def __init__(self, store: Store, gen_dir: Path, doc: dict[str, Any], on: bool) -> None:
        self.gen_dir, self.on = gen_dir, on
        self.algorithm = doc.get("checksum")  # None: packed before it was named (zlib's crc32)
        self.crc = crc_function(self.algorithm)
        prefix = f"file/{generation.GENS}/{doc['id']}/"
        self.records: dict[str, Any] = {k[len(prefix) :]: v for k, v in store.catalog.scan(prefix)} if on else {}

    def whole(self, name: str) -> None:
        """Check a file read whole at open against the catalog's block checksums."""
        rec = self.records.get(name)
        if rec is None or not (self.gen_dir / name).exists():
            return
        bad = verify_file(self.gen_dir / name, rec["crcs"], rec["size"], rec.get("block", CHECKSUM_BLOCK))
        if bad:
            b = bad[0]
            raise CorruptDataError(
                f"{self.gen_dir / name}: block {b} (bytes {b * CHECKSUM_BLOCK}..{(b + 1) * CHECKSUM_BLOCK}) fails "
                "its checksum; run featdb verify"
            )

    def index(self, name: str, cols: int, rows: int | None = None) -> NDArray[Any]:
        """An index file (int64, ``cols`` a line), checked; ``rows`` lines if given."""
        self.whole(name)
        arr = np.fromfile(self.gen_dir / name, dtype="<i8")
        if arr.size % cols or (rows is not None and arr.size != rows * cols):
            raise CorruptDataError(f"{self.gen_dir / name}: {arr.size} entries do not match the layout")
        return arr.reshape(-1, cols)

    def rows(self, name: str, dim: int, dtype: np.dtype[Any], direct: bool) -> NDArray[Any]:
        """A memory tier's rows (``host.tbl``, ``device.tbl``), checked."""
        self.whole(name)
        r = TableReader(self.gen_dir / name, direct=direct)
        try:
            rows = r.read_range(0, r.schema.rows).copy() if r.schema.rows else np.zeros((0, dim), dtype=dtype)
        finally:
            r.close()
        return rows.reshape(-1, dim)

    def blocks(self, name: str) -> BlockChecked:
        rec = self.records.get(name)
        return BlockChecked(self.gen_dir / name, rec["crcs"] if rec is not None else None)

    def extent(self, mv: Any, want: int, what: str) -> None:
        """Check an extent read whole (page-padded) against its crc."""
        if self.on and self.crc(mv, 0) != want:
            raise CorruptDataError(f"{self.gen_dir}/{what} fails its checksum; run featdb verify")

    def pages(self, name: str, size: int) -> PageChecksums | None:
        """The page checksums of a data file read piecemeal (layouts packed before they were kept: none)."""
        sidecar = self.gen_dir / (name.rsplit(".", 1)[0] + ".crc")
        if not self.on or not sidecar.exists() or not size:
            return None
        return PageChecksums(sidecar, self.gen_dir / name, -(-size // PAGE) * PAGE, self.algorithm)


__all__ = ["BlockChecked", "ReadChecks"]

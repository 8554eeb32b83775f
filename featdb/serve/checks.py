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
from ..io import CHECKSUM_BLOCK, PAGE, crc32_blocks
from ..layout import generation
from ..pagesums import PageChecksums, crc_function
from ..store import Store
from ..tables import HEADER_BYTES, decode_header


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

    def _read(self, name: str) -> NDArray[Any]:
        """A file read whole at open (one read), its bytes checked against the catalog's block crcs."""
        path = self.gen_dir / name
        data = np.fromfile(path, dtype=np.uint8)
        rec = self.records.get(name)
        if rec is None:
            return data
        if len(data) != rec["size"]:
            raise CorruptDataError(f"{path}: size {len(data)} bytes, catalog says {rec['size']}; run featdb verify")
        block = rec.get("block", CHECKSUM_BLOCK)
        got = crc32_blocks(data.data, block)
        bad = next((i for i, (g, w) in enumerate(zip(got, rec["crcs"], strict=False)) if g != w), None)
        if bad is not None or len(got) != len(rec["crcs"]):
            b = len(got) if bad is None else bad
            raise CorruptDataError(
                f"{path}: block {b} (bytes {b * block}..{(b + 1) * block}) fails its checksum; run featdb verify"
            )
        return data

    def index(self, name: str, cols: int, rows: int | None = None) -> NDArray[Any]:
        """An index file (int64, ``cols`` a line), checked; ``rows`` lines if given."""
        data = self._read(name)
        n = len(data) // 8
        if len(data) % 8 or n % cols or (rows is not None and n != rows * cols):
            raise CorruptDataError(f"{self.gen_dir / name}: {len(data)} bytes do not match the layout")
        return data.view("<i8").reshape(-1, cols)

    def rows(self, name: str, dim: int, dtype: np.dtype[Any]) -> NDArray[Any]:
        """A memory tier's rows (``host.tbl``, ``device.tbl``), checked: a view of the file read once."""
        data = self._read(name)
        schema = decode_header(data[:HEADER_BYTES].tobytes(), self.gen_dir / name)
        if schema.dim != dim or np.dtype(schema.dtype) != dtype:
            raise CorruptDataError(f"{self.gen_dir / name}: rows of {schema.dim} {schema.dtype}, not {dim} {dtype}")
        end = HEADER_BYTES + schema.rows * schema.row_bytes
        if len(data) < end:
            raise CorruptDataError(f"{self.gen_dir / name}: {len(data)} bytes hold fewer than {schema.rows} rows")
        return data[HEADER_BYTES:end].view(dtype).reshape(-1, dim)

    def scales(self) -> NDArray[Any] | None:
        """An int8 layout's per-column scales (lo and step, 2 x dim float32), checked; None if it has none."""
        if not (self.gen_dir / "scales.f32").exists():
            return None
        data = self._read("scales.f32")
        if len(data) % 8:
            raise CorruptDataError(f"{self.gen_dir / 'scales.f32'}: {len(data)} bytes are not 2 rows of float32")
        return data.view("<f4").reshape(2, -1)

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

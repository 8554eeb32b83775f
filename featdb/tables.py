"""Base tables: the page-aligned file format, the streaming writer and the row reader.

File layout: one header page (magic, format version, dtype, shape as JSON),
then rows back to back from byte 4096, zero-padded to a page multiple. A crc32
per 1 MiB block of the whole file goes to the catalog, and (for base tables) a
crc32 per page to ``<name>.crc`` beside it (:mod:`featdb.pagesums`), which
every read checks.
"""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .errors import (
    CorruptDataError,
    FormatVersionError,
    IdsOutOfRangeError,
    InvalidIdsError,
    InvalidInputError,
    SchemaMismatchError,
)
from .io import PAGE, ChecksumWriter, PageFile, ScratchBuffers, aligned_buffer, read_scattered, write_atomic
from .pagesums import PageChecksums, PageCrcs
from .rowcopy import take_rows

MAGIC = b"FEATDBT\x01"
FILE_FORMAT = 1
HEADER_BYTES = PAGE
SCRATCH_BYTES = 32 << 20  # per read call: bounds the page buffer of one chunk of ids


@dataclass(frozen=True, slots=True)
class Schema:
    dtype: str
    rows: int
    dim: int

    @property
    def row_bytes(self) -> int:
        return np.dtype(self.dtype).itemsize * self.dim

    @property
    def nbytes(self) -> int:
        return self.row_bytes * self.rows


def encode_header(schema: Schema) -> bytes:
    doc = {
        "format": FILE_FORMAT,
        "dtype": schema.dtype,
        "rows": schema.rows,
        "dim": schema.dim,
        "data_offset": HEADER_BYTES,
    }
    body = MAGIC + json.dumps(doc).encode()
    return body + bytes(HEADER_BYTES - len(body))


def decode_header(raw: bytes, path: Path) -> Schema:
    if raw[: len(MAGIC)] != MAGIC:
        raise CorruptDataError(f"{path}: not a featdb table file (bad magic)")
    try:
        doc = json.loads(raw[len(MAGIC) :].rstrip(b"\x00"))
    except ValueError as exc:
        raise CorruptDataError(f"{path}: unreadable header") from exc
    if doc.get("format", 0) > FILE_FORMAT:
        raise FormatVersionError(f"{path}: file format {doc['format']} is newer than {FILE_FORMAT}")
    return Schema(doc["dtype"], int(doc["rows"]), int(doc["dim"]))


class TableWriter:
    """Streams rows into a new table file; :meth:`commit` publishes it atomically."""

    def __init__(self, path: Path, schema: Schema, page_crcs: bool = False) -> None:
        """``page_crcs``: also write ``<name>.crc``, the crc32 of every page (what readers check)."""
        self.schema = schema
        self.path = path
        self._w = ChecksumWriter(path)
        self._pages = PageCrcs() if page_crcs else None
        self._write(memoryview(encode_header(schema)))
        self.rows_written = 0

    def _write(self, mv: memoryview) -> None:
        self._w.write(mv)
        if self._pages is not None:
            self._pages.update(mv)

    def write(self, rows: NDArray[Any]) -> None:
        rows = np.ascontiguousarray(np.asarray(rows, dtype=self.schema.dtype).reshape(-1, self.schema.dim))
        if self.rows_written + len(rows) > self.schema.rows:
            raise SchemaMismatchError("more rows written than the schema declares")
        if rows.size:
            self._write(rows.data.cast("B"))
        self.rows_written += len(rows)

    def commit(self) -> dict[str, Any]:
        """Publish the file and its page checksums (``<name>.crc`` beside it); returns both records."""
        if self.rows_written != self.schema.rows:
            raise SchemaMismatchError(f"wrote {self.rows_written} rows, schema declares {self.schema.rows}")
        pad = -self._w.size % PAGE
        if pad:
            self._write(memoryview(bytes(pad)))
        rec: dict[str, Any] = {}
        if self._pages is not None:
            size, crcs = write_atomic(self.path.with_suffix(".crc"), self._pages.finish())
            rec["pages"] = {"size": size, "crcs": crcs}
            rec["page_checksum"] = self._pages.algorithm
        self._w.commit()
        return {"size": self._w.size, "crcs": self._w.crcs, **rec}

    def abort(self) -> None:
        self._w.abort()

    def __enter__(self) -> TableWriter:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is not None:
            self.abort()


@dataclass
class ReadStats:
    """Counters of one reader: rows asked for, rows fetched, bytes read from the file."""

    rows_served: int = 0
    rows_fetched: int = 0
    bytes_read: int = 0
    row_bytes: int = 0
    calls: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, served: int, fetched: int, nbytes: int) -> None:
        with self._lock:
            self.rows_served += served
            self.rows_fetched += fetched
            self.bytes_read += nbytes
            self.calls += 1

    @property
    def amplification(self) -> float:
        need = self.rows_fetched * self.row_bytes
        return self.bytes_read / need if need else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows_served": self.rows_served,
            "rows_fetched": self.rows_fetched,
            "bytes_read": self.bytes_read,
            "read_amplification": round(self.amplification, 4),
            "calls": self.calls,
        }


def parse_dtype(text: Any, what: str = "dtype") -> np.dtype[Any]:
    """A fixed-width numeric dtype from a name such as ``float32``; :class:`InvalidInputError` otherwise."""
    try:
        dt = np.dtype(text)
    except (TypeError, ValueError, SyntaxError):
        raise InvalidInputError(f"{what} {text!r} is not a dtype (use float32, float16, int8, ...)") from None
    if dt.kind not in "iufb" or dt.hasobject or dt.shape or dt.names:
        raise InvalidInputError(f"{what} {text!r} is not a fixed-width numeric type (use float32, float16, int8, ...)")
    return dt


def id_dtype(num_nodes: int) -> np.dtype[Any]:
    """How node ids are stored: little-endian int32 below 2**31 nodes, else int64."""
    return np.dtype("<i4") if num_nodes < 2**31 else np.dtype("<i8")


def check_index(i: int, n: int, what: str) -> None:
    """:class:`IdsOutOfRangeError` unless ``0 <= i < n`` (a batch, an epoch, a row)."""
    if not 0 <= i < n:
        raise IdsOutOfRangeError(f"{what} {i} out of range [0, {n})")


def check_ids(ids: Any, rows: int) -> NDArray[Any]:
    """Validate row ids: a 1-D integer array, every id in [0, rows)."""
    arr = np.asarray(ids)
    if arr.ndim != 1 or not (np.issubdtype(arr.dtype, np.integer) or (arr.size == 0 and arr.dtype == np.float64)):
        raise InvalidIdsError(f"ids must be a 1-D integer array, got shape {arr.shape} dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) >= rows):
        bad = arr[(arr < 0) | (arr >= rows)][0]
        raise IdsOutOfRangeError(f"row id {int(bad)} out of range [0, {rows})")
    return arr


class TableReader:
    """Reads rows of one table file: coalesced page runs, O_DIRECT, a small thread pool."""

    def __init__(
        self,
        path: Path,
        direct: bool = True,
        threads: int = 8,
        page_crcs: Path | None = None,
        page_checksum: str | None = None,
    ) -> None:
        """``page_crcs``: the table's ``rows.crc`` (of ``page_checksum``, the table document's
        algorithm); every page read is then checked against it."""
        self.file = PageFile(path, direct=direct)
        self.pages = PageChecksums(page_crcs, path, self.file.size, page_checksum) if page_crcs is not None else None
        head = aligned_buffer(HEADER_BYTES)
        self.file.read_into(memoryview(head), 0)
        if self.pages is not None:
            self.pages.check(memoryview(head)[:HEADER_BYTES], 0)
        self.schema = decode_header(bytes(head[:HEADER_BYTES]), path)
        self.stats = ReadStats(row_bytes=self.schema.row_bytes)
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="featdb-read")
        self._threads = threads
        self._scratch = ScratchBuffers()

    @property
    def mode(self) -> str:
        return self.file.mode

    def read(self, ids: Any, out: NDArray[Any] | None = None) -> NDArray[Any]:
        """Rows in the order of ``ids`` (duplicates allowed), into ``out`` when given."""
        ids = check_ids(ids, self.schema.rows)
        if out is None:
            out = np.empty((len(ids), self.schema.dim), dtype=self.schema.dtype)
        self._read(ids, out)
        return out

    def read_counted(self, ids: Any, out: NDArray[Any]) -> int:
        """Like :meth:`read` into ``out``; returns the bytes read from the file."""
        return self._read(check_ids(ids, self.schema.rows), out)

    def _read(self, ids: NDArray[Any], out: NDArray[Any]) -> int:
        s = self.schema
        if len(ids) == 0:
            return 0
        uniq, inverse = np.unique(ids, return_inverse=True)
        rows = np.empty((len(uniq), s.row_bytes), dtype=np.uint8)
        per_chunk = max(1, SCRATCH_BYTES // ((s.row_bytes // PAGE + 2) * PAGE))
        nbytes = 0
        for lo in range(0, len(uniq), per_chunk):
            nbytes += read_scattered(
                self.file,
                self._pool,
                self._threads,
                self._scratch,
                HEADER_BYTES + uniq[lo : lo + per_chunk] * s.row_bytes,
                s.row_bytes,
                rows[lo : lo + per_chunk],
                check=self.pages.check_runs if self.pages is not None else None,
            )
        take_rows(rows.view(s.dtype).reshape(len(uniq), s.dim), inverse, out)
        self.stats.add(len(ids), len(uniq), nbytes)
        return nbytes

    def read_range_into(self, buf: Any, start: int, stop: int) -> NDArray[Any]:
        """Rows [start, stop) read sequentially into an aligned ``buf``; returns a uint8 view."""
        s = self.schema
        lo = HEADER_BYTES + start * s.row_bytes
        first = lo // PAGE * PAGE
        length = (stop - start) * s.row_bytes
        need = lo - first + length
        n = self.file.read_into(memoryview(buf)[: -(-need // PAGE) * PAGE], first)
        if self.pages is not None:
            self.pages.check(memoryview(buf)[:n], first // PAGE)
        self.stats.add(stop - start, stop - start, n)
        u = np.frombuffer(buf, dtype=np.uint8)[lo - first : lo - first + length]
        return u.reshape(stop - start, s.row_bytes)

    def read_range(self, start: int, stop: int) -> NDArray[Any]:
        """Rows [start, stop) with one sequential read (used by packing and export)."""
        lo = HEADER_BYTES + start * self.schema.row_bytes
        buf = aligned_buffer(lo % PAGE + (stop - start) * self.schema.row_bytes)
        return self.read_range_into(buf, start, stop).view(self.schema.dtype).reshape(stop - start, self.schema.dim)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self.file.close()

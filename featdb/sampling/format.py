"""The sample-set format: batches encoded back to back in a few large segment files.

Each epoch's batches go, in order, to one segment file under
``samples/<name>/`` or to a few (one per sampling process, each a contiguous
run of the epoch). A batch record is a
little-endian int64 header followed by arrays::

    header: MAGIC, n_layers, n_seeds, n_inputs, then per layer (num_src, num_dst, n_edges)
    seeds      id dtype [n_seeds]
    input_ids  id dtype [n_inputs]
    per layer: src int32 [n_edges], dst int32 [n_edges], and in a typed record etype [n_edges]

Layers are stored input side first; every layer's destinations are the first
``num_dst`` of its sources (the DGL block convention), so ``dst_in_src`` is
implicit. ``index.i64`` indexes every record (segment, offset, length, crc32,
input count, crc32 of the head), so any batch is one positioned read. The
head is the header, seeds and input ids: the layout planner reads only that,
and its own checksum lets it do so without reading whole records. Sets
written before the head checksum have five index columns
(``index_columns`` in the catalog document) and their heads are read
unchecked.
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import CorruptDataError, InvalidInputError
from ..graph.csc import etype_dtype
from .mfg import Batch, Layer

MAGIC = 0x46444253414D5031  # "FDBSAMP1"
TYPED_MAGIC: dict[int, np.dtype[Any]] = {0x46444253414D5431: np.dtype("u1"), 0x46444253414D5432: np.dtype("<i2")}
"""Magics of typed records ("FDBSAMT1", "FDBSAMT2") and the dtype of their edge types."""
HEAD_PARTS = 3
"""Parts of :func:`encode_parts` that make a record's head: header, seeds, input ids."""
INDEX_COLUMNS = 6
"""Columns per batch in ``index.i64`` (5 in sets written before the head checksum)."""


@dataclass(frozen=True, slots=True)
class RecordRef:
    segment: int
    offset: int
    length: int
    crc: int
    n_inputs: int


def encode_parts(batch: Batch, id_dtype: np.dtype[Any]) -> list[NDArray[Any]]:
    """A batch record as the arrays that follow one another on disk (no copy where dtypes match)."""
    et = _etype_dtype(batch)
    magic = MAGIC if et is None else next(m for m, dt in TYPED_MAGIC.items() if dt == et)
    head = [magic, len(batch.layers), len(batch.seeds), len(batch.input_ids)]
    for layer in batch.layers:
        head += [layer.num_src, layer.num_dst, len(layer.src)]
    parts = [
        np.asarray(head, dtype="<i8"),
        batch.seeds.astype(id_dtype, copy=False),
        batch.input_ids.astype(id_dtype, copy=False),
    ]
    for layer in batch.layers:
        parts += [layer.src.astype("<i4", copy=False), layer.dst.astype("<i4", copy=False)]
        if et is not None:
            parts.append(layer.etype.astype(et, copy=False))  # type: ignore[union-attr]
    return [np.ascontiguousarray(p) for p in parts]


def _etype_dtype(batch: Batch) -> np.dtype[Any] | None:
    typed = [layer.etype is not None for layer in batch.layers]
    if not any(typed):
        return None
    if not all(typed):
        raise InvalidInputError("a batch's layers must all carry edge types or none")
    top = max((int(layer.etype.max(initial=0)) for layer in batch.layers), default=0)  # type: ignore[union-attr]
    return np.dtype(etype_dtype(top + 1)).newbyteorder("<")


def decode(raw: bytes | memoryview, id_dtype: np.dtype[Any], where: str = "") -> Batch:
    head = np.frombuffer(raw, dtype="<i8", count=4)
    magic = int(head[0])
    et = TYPED_MAGIC.get(magic)
    if magic != MAGIC and et is None:
        raise CorruptDataError(f"{where}: not a sample record")
    n_layers, n_seeds, n_inputs = (int(x) for x in head[1:4])
    sizes = np.frombuffer(raw, dtype="<i8", count=3 * n_layers, offset=32).reshape(n_layers, 3)
    pos = 32 + 24 * n_layers
    isz = id_dtype.itemsize
    seeds = np.frombuffer(raw, dtype=id_dtype, count=n_seeds, offset=pos).astype(np.int64)
    pos += n_seeds * isz
    inputs = np.frombuffer(raw, dtype=id_dtype, count=n_inputs, offset=pos).astype(np.int64)
    pos += n_inputs * isz
    layers = []
    for num_src, num_dst, n_edges in sizes.tolist():
        # local indices stay int32 as stored (read-only views): half the bytes to move, widened where used
        src = np.frombuffer(raw, dtype="<i4", count=n_edges, offset=pos)
        dst = np.frombuffer(raw, dtype="<i4", count=n_edges, offset=pos + 4 * n_edges)
        pos += 8 * n_edges
        etype = None
        if et is not None:
            etype = np.frombuffer(raw, dtype=et, count=n_edges, offset=pos)
            pos += et.itemsize * n_edges
        layers.append(Layer(src, dst, np.arange(num_dst, dtype=np.int64), num_src, num_dst, etype))
    return Batch(seeds, inputs, tuple(layers))


def decode_inputs(raw: bytes | memoryview, id_dtype: np.dtype[Any]) -> tuple[NDArray[Any], int]:
    """A record's input ids, and the length of its head (header, seeds, input ids) in bytes."""
    head = np.frombuffer(raw, dtype="<i8", count=4)
    n_layers, n_seeds, n_inputs = (int(x) for x in head[1:4])
    pos = 32 + 24 * n_layers + n_seeds * id_dtype.itemsize
    end = pos + n_inputs * id_dtype.itemsize
    if end > len(raw):
        raise CorruptDataError(f"record head claims {end} bytes, {len(raw)} read")
    return np.frombuffer(raw, dtype=id_dtype, count=n_inputs, offset=pos).astype(np.int64), end


class SegmentFiles:
    """Positioned reads of sample records, with the crc32 checked."""

    def __init__(self, root: Path, files: list[str]) -> None:
        self.root = root
        self.files = files
        self._fds: dict[int, int] = {}
        self._pid = os.getpid()

    def read(self, ref: RecordRef, head_only: int = 0) -> bytes:
        if self._pid != os.getpid():
            self._fds.clear()
            self._pid = os.getpid()
        fd = self._fds.get(ref.segment)
        if fd is None:
            fd = self._fds[ref.segment] = os.open(self.root / self.files[ref.segment], os.O_RDONLY)
        n = head_only or ref.length
        raw = os.pread(fd, n, ref.offset)
        if len(raw) != n:
            raise CorruptDataError(f"{self.files[ref.segment]}: short read at {ref.offset}")
        if not head_only and zlib.crc32(raw) != ref.crc:
            raise CorruptDataError(f"{self.files[ref.segment]}: batch record at byte {ref.offset} fails its checksum")
        return raw

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

"""A stored trace: per batch, the distinct row ids it reads from one table.

On disk, ``traces/<name>/``::

    ids.bin      every batch's ids back to back (sorted, distinct), int32 or int64 like sample sets
    index.i64    per batch: first id, id count, crc32 of the batch's ids
    counts.i32   per row of the table, how many batches read it (the planner's hot-set input)

Every file is recorded in the catalog with its checksums; a batch's ids are
checked against their own crc32 whenever they are read. A :class:`Trace`
offers what the planner and the packer read from a sample set (batches,
counts, input ids per batch, serving groups), so ``pack`` and the reader serve
a trace's batches exactly as a sample set's.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import ConfigError, CorruptDataError, StaleDataError, TraceNotFoundError
from ..io import crc32_blocks
from ..store import Store
from ..tables import check_index

TRACES = "traces"
INDEX_COLS = 3  # first id, id count, crc32


class Trace:
    """A named, immutable trace of ``num_batches`` batches over table :attr:`table`."""

    def __init__(self, store: Store, name: str, check_fresh: bool = True) -> None:
        doc = store.catalog.get(f"trace/{name}")
        if doc is None:
            raise TraceNotFoundError(f"no trace {name!r} in {store.root} (add one with featdb trace add)")
        self.doc: dict[str, Any] = doc
        self.name = name
        self.root = store.root
        if check_fresh:
            check_fresh_trace(store, doc)
        self.id_dtype = np.dtype(doc["id_dtype"])
        self._records = {rel: store.catalog.get(f"file/{rel}") for rel in doc["files"]}
        idx = np.frombuffer(self._checked("index.i64"), dtype="<i8")
        if idx.size != INDEX_COLS * self.num_batches:
            raise CorruptDataError(f"trace {name!r}: index holds {idx.size / INDEX_COLS:g} batches, catalog says "
                                   f"{self.num_batches}")  # fmt: skip
        self.index = idx.reshape(-1, INDEX_COLS)
        self._fd = -1
        self._pid = os.getpid()

    # -- what the planner and packer read (as from a sample set) ---------------------------
    @property
    def table(self) -> str:
        return str(self.doc["table"])

    @property
    def uid(self) -> str:
        return str(self.doc["uid"])

    @property
    def num_batches(self) -> int:
        return int(self.doc["batches"])

    @property
    def epochs(self) -> int:
        return int(self.doc["epochs"])

    @property
    def batches_per_epoch(self) -> int:
        lo, hi = self.groups()[0]
        return hi - lo

    @property
    def num_nodes(self) -> int:
        """Rows of the table the trace reads (the planner's node count)."""
        return int(self.doc["num_rows"])

    @property
    def parts(self) -> dict[str, tuple[int, int]]:
        return {"train": (0, self.num_batches)}

    def groups(self) -> list[tuple[int, int]]:
        """Batch ranges served together: each epoch (and, for a trace split from a sample set, each
        evaluation split after them)."""
        if "groups" in self.doc:
            return [(int(lo), int(hi)) for lo, hi in self.doc["groups"]]
        bpe = self.num_batches // self.epochs
        return [(e * bpe, (e + 1) * bpe) for e in range(self.epochs)]

    def same_as(self, store: Store) -> bool:
        """True if ``store`` holds this very trace under this name (not one since added again)."""
        doc = store.catalog.get(f"trace/{self.name}")
        return (
            doc is not None and os.path.realpath(self.root) == os.path.realpath(store.root) and doc["uid"] == self.uid
        )

    def num_inputs(self) -> NDArray[Any]:
        return self.index[:, 1].copy()

    def input_ids(self, b: int) -> NDArray[Any]:
        """Batch ``b``'s ids (sorted, distinct), checked against their crc32."""
        check_index(b, self.num_batches, "batch")
        first, n, crc = (int(x) for x in self.index[b])
        isz = self.id_dtype.itemsize
        raw = os.pread(self._ids_fd(), n * isz, first * isz)
        if len(raw) != n * isz or zlib.crc32(raw) != crc:
            raise CorruptDataError(
                f"trace {self.name!r}: batch {b}'s ids (bytes {first * isz}..{(first + n) * isz} of "
                f"{self.doc['path']}/ids.bin) fail their checksum; run featdb verify"
            )
        return np.frombuffer(raw, dtype=self.id_dtype).astype(np.int64)

    def inputs_of(self, batch_ids: Iterable[int]) -> Iterator[NDArray[Any]]:
        return (self.input_ids(b) for b in batch_ids)

    def trace(self) -> Iterator[tuple[int, NDArray[Any]]]:
        for b in range(self.num_batches):
            yield b, self.input_ids(b)

    def counts(self) -> NDArray[Any]:
        """Per row of the table, how many batches read it."""
        return np.frombuffer(self._checked("counts.i32"), dtype=np.int32).copy()

    # -- files -------------------------------------------------------------------------------
    def _ids_fd(self) -> int:
        if self._pid != os.getpid():  # forked: open our own descriptor
            self._fd, self._pid = -1, os.getpid()
        if self._fd < 0:
            self._fd = os.open(self.root / self.doc["path"] / "ids.bin", os.O_RDONLY)
        return self._fd

    def _checked(self, name: str) -> bytes:
        rel = f"{self.doc['path']}/{name}"
        raw = (self.root / rel).read_bytes()
        rec = self._records.get(rel)
        if rec is None or len(raw) != rec["size"] or crc32_blocks(raw) != rec["crcs"]:
            raise CorruptDataError(f"{rel}: fails its checksum (trace {self.name!r}); run featdb verify")
        return raw

    def close(self) -> None:
        if self._fd >= 0 and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = -1

    def __enter__(self) -> Trace:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def check_fresh_trace(store: Store, doc: dict[str, Any]) -> None:
    """:class:`StaleDataError` when the trace's table is gone or no longer has the rows the trace reads."""
    table = store.catalog.get(f"table/{doc['table']}")
    if table is None:
        why = f"its table {doc['table']!r} is no longer in the store"
    elif int(table["rows"]) != int(doc["num_rows"]):
        why = f"its table {doc['table']!r} now has {int(table['rows']):,} rows, not {int(doc['num_rows']):,}"
    else:
        return
    raise StaleDataError(
        f"trace {doc['name']!r} is stale: {why}; remove it (featdb gc {store.root} --trace {doc['name']} --force) "
        "and add it again"
    )


def layout_trace(store: Store, doc: dict[str, Any], name: str | None, files: list[Any]) -> Trace | None:
    """The trace ``name`` (None for None), checked to be the one the layout ``doc`` was packed from
    (:class:`ConfigError` naming the command that repacks otherwise), and added to ``files`` to close."""
    if name is None:
        return None
    if doc.get("trace") != name:
        packed = f"trace {doc['trace']!r}" if doc.get("trace") else f"sample set {doc.get('sample_set')!r}"
        raise ConfigError(
            f"the current layout was packed for {packed}, not trace {name!r}: run featdb pack --trace {name}"
        )
    trace = Trace(store, name)
    if doc.get("trace_uid") != trace.uid:
        trace.close()
        raise ConfigError(f"trace {name!r} was added again since the layout was packed: run featdb pack --trace {name}")
    files.append(trace)
    return trace

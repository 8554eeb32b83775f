"""The stored graph: CSC adjacency, node labels and train/valid/test splits.

Tables (internal, domain ``graph``), all int64 with one column:

- ``graph/csc/indptr``  (N+1 rows) and ``graph/csc/indices`` (E rows): for each
  destination node ``v``, ``indices[indptr[v]:indptr[v+1]]`` are its
  in-neighbours (edge sources), sorted ascending by default.
- ``graph/node/label`` (N rows): the class of each node, ``-1`` when unlabeled.
- ``graph/split/{train,valid,test}``: node id lists.

The catalog document ``graph`` says a graph exists; it is written last, in the
same LMDB transaction that moves the freshly written tables from a private
staging prefix to their public keys (:class:`GraphWriter`). A failure at any
point removes whatever was staged, so bad input changes nothing, and replacing
a graph (``replace=True``) swaps old for new in one transaction.

The CSC build (:func:`build_csc`) runs in bounded memory: one pass counts
in-degrees, a second scatters sources into a temporary memory-mapped file in
the store directory, a third sorts each node's neighbour list and streams it
into the table. RAM holds the indptr array plus one chunk of edges.

Edge direction: edges are stored as given. :func:`ingest_graph` and
:func:`ingest_ogb` add the reverse of every edge by default (``symmetric=True``,
like ``dgl.add_reverse_edges``; self-loops are doubled too), because most GNN
datasets are trained as undirected graphs. Pass ``dedup=True`` to drop repeated
(source, destination) pairs.
"""

from __future__ import annotations

import gzip
import io
import itertools
import os
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .errors import (
    AlreadyExistsError,
    GraphNotFoundError,
    IdsOutOfRangeError,
    InvalidInputError,
    SchemaMismatchError,
)
from .store import Store, check_key
from .tables import Schema, TableWriter

GRAPH_DOC = "graph"
INDPTR_KEY = "graph/csc/indptr"
INDICES_KEY = "graph/csc/indices"
LABEL_KEY = "graph/node/label"
SPLITS = ("train", "valid", "test")
SPLIT_KEYS = {name: f"graph/split/{name}" for name in SPLITS}
GRAPH_TABLES = {
    "indptr": INDPTR_KEY,
    "indices": INDICES_KEY,
    "label": LABEL_KEY,
    **{name: key for name, key in SPLIT_KEYS.items()},
}
DEFAULT_BUDGET = 256 << 20
MIN_STEP = 1024  # edges per working chunk, however small the budget
MAX_STEP = 1 << 23
BYTES_PER_EDGE = 64  # working set of one edge in the scatter pass (sort order, copies, positions)
CSC_PHASES = 3  # build_csc reports every edge once per phase: count, place, sort/write

Progress = Callable[[int], None] | None
EdgeChunks = Callable[[], Iterable[tuple[NDArray[Any], NDArray[Any]]]]


# --------------------------------------------------------------------------- the graph
@dataclass(frozen=True)
class Graph:
    """A stored graph loaded into memory (or memory-mapped, see :func:`load_graph`)."""

    num_nodes: int
    num_edges: int
    num_classes: int
    indptr: NDArray[Any]
    indices: NDArray[Any]
    labels: NDArray[Any]
    train: NDArray[Any]
    valid: NDArray[Any]
    test: NDArray[Any]
    info: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def train_ids(self) -> NDArray[Any]:
        return self.train

    @property
    def valid_ids(self) -> NDArray[Any]:
        return self.valid

    @property
    def test_ids(self) -> NDArray[Any]:
        return self.test

    def split(self, name: str) -> NDArray[Any]:
        if name not in SPLITS:
            raise InvalidInputError(f"unknown split {name!r}; expected one of {', '.join(SPLITS)}")
        return getattr(self, name)  # type: ignore[no-any-return]

    def in_degrees(self) -> NDArray[Any]:
        return np.diff(self.indptr)

    def in_neighbors(self, v: int) -> NDArray[Any]:
        return self.indices[self.indptr[v] : self.indptr[v + 1]]


def graph_info(store: Store) -> dict[str, Any]:
    """The catalog ``graph`` document; raises :class:`GraphNotFoundError` if there is none."""
    doc = store.catalog.get(GRAPH_DOC)
    if doc is None:
        raise GraphNotFoundError(f"{store.root} holds no graph (run ingest-graph, ingest-ogb or synth)")
    return dict(doc)


def has_graph(store: Store) -> bool:
    return store.catalog.get(GRAPH_DOC) is not None


def load_graph(store: Store, mmap: bool = False) -> Graph:
    """Load the stored graph; ``mmap=True`` maps the table files read-only instead of reading."""
    doc = graph_info(store)
    tables = {**GRAPH_TABLES, **doc.get("tables", {})}

    def read(name: str) -> NDArray[Any]:
        key = tables[name]
        return _map_table(store, key) if mmap else store.read_all(key).reshape(-1)

    return Graph(
        num_nodes=int(doc["num_nodes"]),
        num_edges=int(doc["num_edges"]),
        num_classes=int(doc.get("num_classes", 0)),
        indptr=read("indptr"),
        indices=read("indices"),
        labels=read("label"),
        train=read("train"),
        valid=read("valid"),
        test=read("test"),
        info=doc,
    )


def node_labels(store: Store) -> NDArray[Any]:
    """Every node's label, memory-mapped: indexing it reads only the pages of the ids asked for."""
    doc = graph_info(store)
    return _map_table(store, {**GRAPH_TABLES, **doc.get("tables", {})}["label"])


def _map_table(store: Store, key: str) -> NDArray[Any]:
    # copy-on-write: pages stay shared with the page cache (nothing writes them), and the array is
    # writable as far as numpy and torch are concerned, so torch wraps it without a copy or a warning
    return store.map(key).reshape(-1)


# --------------------------------------------------------------------------- staging + publish
class GraphWriter:
    """Writes the graph's tables under a private staging prefix and publishes them atomically.

    Use as a context manager: tables written through :meth:`writer` / :meth:`write`
    stay invisible under ``graph/stage-*/`` until :meth:`publish` renames them to
    their final keys and records the ``graph`` document, all in one catalog
    transaction. Leaving the block without publishing (an exception) deletes
    every staged table and its file.
    """

    def __init__(self, store: Store, replace: bool = False) -> None:
        store.require_writable()
        self.store = store
        self.replace = replace
        self.token = f"stage-{os.getpid()}-{time.time_ns():x}"
        self.staged: dict[str, str] = {}  # final key -> staged key
        if not replace and has_graph(store):
            raise AlreadyExistsError(f"{store.root} already holds a graph (pass replace=True / --replace)")

    def __enter__(self) -> GraphWriter:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if self.staged:
            self.discard()

    def check_free(self, final_key: str) -> None:
        """Fail early if ``final_key`` is taken and this writer may not replace it."""
        if not self.replace and self.store.has_table(final_key):
            raise AlreadyExistsError(f"table {final_key!r} already exists (pass replace=True / --replace)")

    def _stage_key(self, final_key: str) -> str:
        check_key(final_key, internal=final_key.startswith("graph/"))
        if final_key in self.staged:
            raise InvalidInputError(f"table {final_key!r} written twice")
        self.check_free(final_key)
        staged = f"graph/{self.token}/{len(self.staged)}"
        self.staged[final_key] = staged
        return staged

    @contextmanager
    def writer(self, final_key: str, schema: Schema) -> Iterator[TableWriter]:
        with self.store.table_writer(self._stage_key(final_key), schema, internal=True) as w:
            yield w

    def write(self, final_key: str, data: NDArray[Any]) -> None:
        arr = np.ascontiguousarray(data)
        arr = arr.reshape(len(arr), -1) if arr.ndim != 1 else arr.reshape(-1, 1)
        with self.writer(final_key, Schema(arr.dtype.name, arr.shape[0], arr.shape[1])) as w:
            write_rows(w, arr)

    def publish(self, doc: dict[str, Any]) -> None:
        """Move every staged table to its final key and record the graph doc, in one transaction."""
        staged = dict(self.staged)

        def txn(t: Any) -> list[str]:
            if not self.replace and t.get(GRAPH_DOC) is not None:
                raise AlreadyExistsError(f"{self.store.root} already holds a graph")
            old_files: list[str] = []
            for final, tmp in staged.items():
                rec = t.get(f"table/{tmp}")
                old = t.get(f"table/{final}")
                if old is not None:
                    if not self.replace:
                        raise AlreadyExistsError(f"table {final!r} already exists")
                    t.delete(f"file/{old['file']}")
                    old_files.append(str(old["file"]))
                t.delete(f"table/{tmp}")
                t.put(f"table/{final}", {**rec, "key": final})
            t.put(GRAPH_DOC, doc)
            return old_files

        old_files = self.store.catalog.write(txn)
        self.staged.clear()
        self._forget_readers([*staged, *staged.values()])
        for rel in old_files:
            (self.store.root / rel).unlink(missing_ok=True)

    def discard(self) -> None:
        """Delete every staged table (catalog entries and files)."""
        staged = list(self.staged.values())
        self.staged.clear()

        def txn(t: Any) -> list[str]:
            files = []
            for key in staged:
                rec = t.get(f"table/{key}")
                if rec is not None:
                    t.delete(f"table/{key}")
                    t.delete(f"file/{rec['file']}")
                    files.append(str(rec["file"]))
            return files

        self._forget_readers(staged)
        for rel in self.store.catalog.write(txn):
            (self.store.root / rel).unlink(missing_ok=True)

    def _forget_readers(self, keys: Iterable[str]) -> None:
        # Store caches one reader per key: a replaced or discarded table must not be read again.
        for key in keys:
            self.store.forget_reader(key)


def stale_staging(store: Store) -> list[str]:
    """Keys of staged tables left by graph writers whose process is gone (a crash mid-ingest)."""
    stale = []
    for t in store.tables(include_internal=True):
        parts = t["key"].split("/")
        if parts[0] != "graph" or not parts[1].startswith("stage-"):
            continue
        try:
            os.kill(int(parts[1].split("-")[1]), 0)
        except ProcessLookupError:
            stale.append(t["key"])
        except (ValueError, IndexError, PermissionError):
            continue
    return stale


def remove_stale_staging(store: Store) -> list[str]:
    """Delete :func:`stale_staging` tables and their files (for ``gc``); returns their keys."""
    store.require_writable()
    gw = GraphWriter(store, replace=True)
    keys = stale_staging(store)
    gw.staged = {key: key for key in keys}
    gw.discard()
    return keys


def make_graph_doc(
    *,
    num_nodes: int,
    num_edges: int,
    num_classes: int,
    num_labeled: int,
    split_sizes: dict[str, int],
    source: str,
    params: dict[str, Any],
    symmetric: bool,
    sorted_: bool,
    dedup: bool,
    features: str | None = None,
    feat_dim: int | None = None,
) -> dict[str, Any]:
    """The catalog ``graph`` document (see the module docstring for the tables it names)."""
    return {
        "format": "csc",
        "num_nodes": int(num_nodes),
        "num_edges": int(num_edges),
        "num_classes": int(num_classes),
        "num_labeled": int(num_labeled),
        **{f"num_{name}": int(split_sizes.get(name, 0)) for name in SPLITS},
        "source": source,
        "params": params,
        "symmetric": bool(symmetric),
        "sorted": bool(sorted_),
        "dedup": bool(dedup),
        "tables": dict(GRAPH_TABLES),
        "features": features,
        "feat_dim": feat_dim,
        "created": time.time(),
    }


# --------------------------------------------------------------------------- bounded-memory CSC
def edge_step(num_nodes: int, memory_budget: int) -> int:
    """Edges per working chunk: what the budget leaves after the indptr array."""
    spare = int(memory_budget) - 8 * (num_nodes + 1)
    return int(min(MAX_STEP, max(MIN_STEP, spare // BYTES_PER_EDGE)))


def build_csc(
    edge_chunks: EdgeChunks,
    num_nodes: int,
    store: Store,
    memory_budget: int = DEFAULT_BUDGET,
    *,
    sort: bool = True,
    dedup: bool = False,
    progress: Progress = None,
    indptr_key: str = INDPTR_KEY,
    indices_key: str = INDICES_KEY,
    table_writer: Callable[[str, Schema], Any] | None = None,
) -> int:
    """Build the CSC of the edges ``edge_chunks()`` yields; returns the number of edges stored.

    ``edge_chunks`` is called twice (count, then place) and must yield the same
    ``(src, dst)`` integer arrays both times. Memory: ``8·(N+1)`` bytes for indptr
    plus a chunk sized by ``memory_budget``; the edges themselves go through a
    temporary memory-mapped file in ``<store>/tmp`` (unlinked as soon as it is
    mapped). ``sort`` orders each neighbour list; ``dedup`` drops repeated pairs.
    Ids must lie in ``[0, num_nodes)`` (:class:`IdsOutOfRangeError` otherwise).
    ``progress`` gets edge counts: every edge is reported once per phase
    (count, place, sort/write), :data:`CSC_PHASES` times in all.
    """
    n = _check_num_nodes(num_nodes)
    step = edge_step(n, memory_budget)
    open_writer = table_writer or (lambda key, schema: store.table_writer(key, schema, internal=True))
    indptr = np.zeros(n + 1, dtype=np.int64)
    fp1 = _count_in_degrees(edge_chunks, n, step, indptr, progress)
    np.cumsum(indptr, out=indptr)
    total = int(indptr[-1])
    with _scratch_array(store, total) as scratch:
        fp2 = _place_sources(edge_chunks, step, indptr, scratch, progress)
        if fp1 != fp2:
            raise InvalidInputError("the edge source yielded different edges on its second pass")
        _shift_right(indptr, step)  # each cursor ended at its node's end: that is indptr[v + 1]
        stored = _write_indices(
            scratch,
            indptr,
            n,
            step,
            sort,
            dedup,
            progress,
            lambda rows: open_writer(indices_key, Schema("int64", rows, 1)),
        )
    with open_writer(indptr_key, Schema("int64", n + 1, 1)) as w:
        w.write(indptr)
    return stored


def _shift_right(a: NDArray[Any], step: int) -> None:
    """``a[1:] = a[:-1]; a[0] = 0`` in place, with step-sized temporaries only."""
    for hi in range(len(a) - 1, 0, -step):
        lo = max(0, hi - step)
        a[lo + 1 : hi + 1] = a[lo:hi]
    if len(a):
        a[0] = 0


def write_rows(w: TableWriter, rows: NDArray[Any]) -> None:
    """``w.write(rows)``, skipping empty chunks (the table writer cannot take zero-length views)."""
    if len(rows):
        w.write(rows)


def _check_num_nodes(num_nodes: Any) -> int:
    if isinstance(num_nodes, bool) or not isinstance(num_nodes, (int, np.integer)) or num_nodes < 0:
        raise InvalidInputError(f"num_nodes must be a non-negative integer, got {num_nodes!r}")
    return int(num_nodes)


def _as_edge_arrays(src: Any, dst: Any) -> tuple[NDArray[Any], NDArray[Any]]:
    s, d = np.asarray(src), np.asarray(dst)
    if s.ndim != 1 or d.ndim != 1 or len(s) != len(d):
        raise SchemaMismatchError(
            f"edge chunk: src and dst must be 1-D arrays of one length, got shapes {s.shape} and {d.shape}"
        )
    for a in (s, d):
        if a.size and not np.issubdtype(a.dtype, np.integer):
            raise SchemaMismatchError(f"edge ids must be integers, got dtype {a.dtype}")
    return s.astype(np.int64, copy=False), d.astype(np.int64, copy=False)


def _check_ids(s: NDArray[Any], d: NDArray[Any], n: int, offset: int, where: str = "", unit: str = "edge") -> None:
    for name, a in (("source", s), ("destination", d)):
        if a.size and (int(a.min()) < 0 or int(a.max()) >= n):
            i = int(np.flatnonzero((a < 0) | (a >= n))[0])
            raise IdsOutOfRangeError(
                f"{where}{unit} {offset + i}: {name} id {int(a[i])} is outside [0, {n}) (num_nodes={n})"
            )


def _fingerprint(s: NDArray[Any], d: NDArray[Any]) -> tuple[int, int, int]:
    with np.errstate(over="ignore"):
        return len(s), int(np.sum(s * 1_000_003 + d)), int(np.sum(d * (s + 7)))


def _chunks(edge_chunks: EdgeChunks, step: int) -> Iterator[tuple[NDArray[Any], NDArray[Any]]]:
    for src, dst in edge_chunks():
        s, d = _as_edge_arrays(src, dst)
        for lo in range(0, len(s), step):
            yield s[lo : lo + step], d[lo : lo + step]


def _count_in_degrees(
    edge_chunks: EdgeChunks, n: int, step: int, indptr: NDArray[Any], progress: Progress
) -> tuple[int, int, int]:
    """Pass 1: validate ids, add each destination's count into ``indptr[1 + v]``."""
    counts = indptr[1:]
    seen, fa, fb = 0, 0, 0
    for s, d in _chunks(edge_chunks, step):
        _check_ids(s, d, n, seen)
        _add_counts(counts, d)
        _, a, b = _fingerprint(s, d)
        seen, fa, fb = seen + len(s), fa + a, fb + b
        if progress:
            progress(len(s))
    return seen, _wrap(fa), _wrap(fb)


def _wrap(x: int) -> int:
    return (x + (1 << 63)) % (1 << 64) - (1 << 63)


def _add_counts(counts: NDArray[Any], d: NDArray[Any]) -> None:
    if d.size == 0:
        return
    lo, hi = int(d.min()), int(d.max())
    if hi - lo + 1 <= 4 * len(d):
        counts[lo : hi + 1] += np.bincount(d - lo, minlength=hi - lo + 1)
    else:  # few edges spread over many nodes: avoid a node-sized temporary
        u, c = np.unique(d, return_counts=True)
        counts[u] += c


def _place_sources(
    edge_chunks: EdgeChunks, step: int, indptr: NDArray[Any], scratch: NDArray[Any], progress: Progress
) -> tuple[int, int, int]:
    """Pass 2: put each source at its destination's cursor (``indptr[:-1]``, advanced in place)."""
    cursor = indptr[:-1]
    total = len(scratch)
    seen, fa, fb = 0, 0, 0
    for s, d in _chunks(edge_chunks, step):
        if len(s) == 0:
            continue
        if seen + len(s) > total:
            raise InvalidInputError("the edge source yielded more edges on its second pass")
        order = np.argsort(d, kind="stable")
        ds = d[order]
        first = np.flatnonzero(np.concatenate(([True], ds[1:] != ds[:-1])))
        counts = np.diff(np.append(first, len(ds)))
        rank = np.arange(len(ds), dtype=np.int64) - np.repeat(first, counts)
        pos = cursor[ds] + rank
        if int(pos.max()) >= total:
            raise InvalidInputError("the edge source yielded different edges on its second pass")
        scratch[pos] = s[order]
        cursor[ds[first]] += counts
        _, a, b = _fingerprint(s, d)
        seen, fa, fb = seen + len(s), fa + a, fb + b
        if progress:
            progress(len(s))
    return seen, _wrap(fa), _wrap(fb)


def _node_ranges(indptr: NDArray[Any], step: int) -> list[tuple[int, int]]:
    """Consecutive node ranges holding about ``step`` edges each (one node may hold more)."""
    n = len(indptr) - 1
    ranges: list[tuple[int, int]] = []
    a = 0
    while a < n:
        b = int(np.searchsorted(indptr, indptr[a] + step, side="right")) - 1
        b = min(n, max(a + 1, b))
        ranges.append((a, b))
        a = b
    return ranges


def _sort_segments(vals: NDArray[Any], deg: NDArray[Any], n: int, dedup: bool) -> tuple[NDArray[Any], NDArray[Any]]:
    """Sort each node's run of ``vals`` (runs given by ``deg``); optionally drop repeats."""
    seg = np.repeat(np.arange(len(deg), dtype=np.int64), deg)
    if len(deg) * n < (1 << 62):
        key = seg * n + vals
        key.sort()
        seg = key // n
        vals = key - seg * n
    else:  # ids too large to pack two in one int64
        order = np.lexsort((vals, seg))
        seg, vals = seg[order], vals[order]
    if dedup and len(vals):
        keep = np.concatenate(([True], (vals[1:] != vals[:-1]) | (seg[1:] != seg[:-1])))
        vals = vals[keep]
        deg = np.bincount(seg[keep], minlength=len(deg))
    return vals, deg


def _write_indices(
    scratch: NDArray[Any],
    indptr: NDArray[Any],
    n: int,
    step: int,
    sort: bool,
    dedup: bool,
    progress: Progress,
    open_indices: Callable[[int], Any],
) -> int:
    """Pass 3: sort (and dedup) neighbour lists and stream them into the indices table."""
    total = int(indptr[-1])
    ranges = _node_ranges(indptr, step) if (sort or dedup) else []
    if not dedup:
        with open_indices(total) as w:
            if sort:
                for a, b in ranges:
                    lo, hi = int(indptr[a]), int(indptr[b])
                    deg = np.diff(indptr[a : b + 1])
                    vals, _ = _sort_segments(np.asarray(scratch[lo:hi]), deg, n, False)
                    write_rows(w, vals)
                    if progress:
                        progress(hi - lo)
            else:
                for lo in range(0, total, step):
                    hi = min(total, lo + step)
                    write_rows(w, np.asarray(scratch[lo:hi]))
                    if progress:
                        progress(hi - lo)
        return total
    # dedup: compact in place (writes never pass reads), fix indptr as we go, then stream
    out = lo = 0
    for a, b in ranges:
        hi = int(indptr[b])
        deg = np.diff(np.concatenate(([lo], indptr[a + 1 : b + 1])))  # indptr[a] was rewritten
        vals, deg = _sort_segments(np.array(scratch[lo:hi]), deg, n, True)
        scratch[out : out + len(vals)] = vals
        indptr[a + 1 : b + 1] = out + np.cumsum(deg)
        out += len(vals)
        if progress:
            progress(hi - lo)
        lo = hi
    with open_indices(out) as w:
        for lo in range(0, out, step):
            write_rows(w, np.asarray(scratch[lo : min(out, lo + step)]))
    return out


@contextmanager
def _scratch_array(store: Store, length: int) -> Iterator[NDArray[Any]]:
    """An int64 array of ``length`` backed by a temporary file in ``<store>/tmp``.

    The file is unlinked as soon as it is mapped, so a crash leaves nothing behind.
    """
    if length == 0:
        yield np.empty(0, dtype=np.int64)
        return
    tmp = store.root / "tmp"
    tmp.mkdir(exist_ok=True)
    path = tmp / f"csc-{os.getpid()}-{time.time_ns():x}.i64"
    try:
        mm = np.memmap(path, dtype=np.int64, mode="w+", shape=(length,))
    finally:
        path.unlink(missing_ok=True)
    try:
        yield mm
    finally:
        del mm


# --------------------------------------------------------------------------- ingest from .npy
def _npy_layout(path: Path) -> tuple[np.dtype[Any], tuple[int, ...], bool, int]:
    from .ingest import npy_layout  # lazy: ingest may import this module

    if not path.exists():
        raise InvalidInputError(f"{path}: no such file")
    return npy_layout(path)


@dataclass(frozen=True)
class NpyEdges:
    """An edge list in a ``.npy`` file, 2xE or Ex2, read in chunks with plain reads."""

    path: Path
    dtype: np.dtype[Any]
    num_edges: int
    interleaved: bool  # True: (src, dst) pairs back to back; False: all srcs, then all dsts
    offset: int

    @classmethod
    def open(cls, path: str | Path) -> NpyEdges:
        """Parse the header. A 2x2 array is read as 2xE (row 0 sources, row 1 destinations)."""
        p = Path(path)
        dtype, shape, fortran, offset = _npy_layout(p)
        if len(shape) != 2 or 2 not in shape:
            raise SchemaMismatchError(f"{p}: edges must have shape (2, E) or (E, 2), got {shape}")
        if not np.issubdtype(dtype, np.integer):
            raise SchemaMismatchError(f"{p}: edge ids must be integers, got dtype {dtype}")
        two_by_e = shape[0] == 2
        num_edges = shape[1] if two_by_e else shape[0]
        size = p.stat().st_size
        if size < offset + 2 * num_edges * dtype.itemsize:
            raise InvalidInputError(f"{p}: file is truncated ({size} bytes for {num_edges} edges)")
        # C-order 2xE and Fortran Ex2 keep the two id lists apart; the others interleave them
        return cls(p, dtype, int(num_edges), interleaved=(two_by_e == fortran), offset=offset)

    def read(self, lo: int, hi: int, fd: int) -> tuple[NDArray[Any], NDArray[Any]]:
        isz, n = self.dtype.itemsize, hi - lo
        if self.interleaved:
            pairs = self._pread(fd, self.offset + 2 * lo * isz, 2 * n).reshape(n, 2)
            return pairs[:, 0], pairs[:, 1]
        src = self._pread(fd, self.offset + lo * isz, n)
        dst = self._pread(fd, self.offset + (self.num_edges + lo) * isz, n)
        return src, dst

    def _pread(self, fd: int, offset: int, count: int) -> NDArray[Any]:
        raw = os.pread(fd, count * self.dtype.itemsize, offset)
        if len(raw) != count * self.dtype.itemsize:
            raise InvalidInputError(f"{self.path}: short read at byte {offset}")
        return np.frombuffer(raw, dtype=self.dtype)

    def chunks(self, per_chunk: int, symmetric: bool, num_nodes: int | None = None) -> EdgeChunks:
        """A callable that streams the edges (plus their reverses when ``symmetric``).

        With ``num_nodes``, ids are checked here so errors name the edge's place in the file.
        """

        def gen() -> Iterator[tuple[NDArray[Any], NDArray[Any]]]:
            fd = os.open(self.path, os.O_RDONLY)
            try:
                for lo in range(0, self.num_edges, per_chunk):
                    s, d = self.read(lo, min(self.num_edges, lo + per_chunk), fd)
                    if num_nodes is not None:
                        _check_ids(s, d, num_nodes, lo, f"{self.path}: ")
                    yield _with_reverse(s, d, symmetric)
            finally:
                os.close(fd)

        return gen

    def max_id(self, per_chunk: int) -> int:
        top = -1
        for s, d in self.chunks(per_chunk, False)():
            if len(s):
                top = max(top, int(s.max()), int(d.max()))
        return top


def _with_reverse(s: NDArray[Any], d: NDArray[Any], symmetric: bool) -> tuple[NDArray[Any], NDArray[Any]]:
    if not symmetric:
        return s, d
    return np.concatenate((s, d)), np.concatenate((d, s))


def _labels_from_array(raw: NDArray[Any], where: str) -> NDArray[Any]:
    """Validate a chunk of labels: integers >= -1, or floats with NaN for unlabeled."""
    a = np.asarray(raw)
    if a.dtype.kind == "f":
        nan = np.isnan(a)
        if np.any(a[~nan] != np.floor(a[~nan])):
            raise InvalidInputError(f"{where}: labels must be whole numbers")
        a = np.where(nan, -1, a)
    elif a.size and a.dtype.kind not in "iub":
        raise SchemaMismatchError(f"{where}: labels must be integers, got dtype {a.dtype}")
    out = a.astype(np.int64)
    if out.size and int(out.min()) < -1:
        raise InvalidInputError(f"{where}: label {int(out.min())} is negative (use -1 for unlabeled)")
    return out


def _load_npy(path: Path, what: str) -> NDArray[Any]:
    if not path.exists():
        raise InvalidInputError(f"{path}: no such file")
    try:
        arr: NDArray[Any] = np.load(path, mmap_mode="r", allow_pickle=False)
        return arr
    except (ValueError, OSError) as exc:
        raise InvalidInputError(f"{path}: not a readable .npy {what} file ({exc})") from exc


def load_splits(path: str | Path, num_nodes: int) -> dict[str, NDArray[Any]]:
    """Read a ``.npz`` with keys train/valid/test (or ``val``): id lists or boolean masks."""
    p = Path(path)
    if not p.exists():
        raise InvalidInputError(f"{p}: no such file")
    try:
        with np.load(p, allow_pickle=False) as z:
            arrays = {k: np.asarray(z[k]) for k in z.files}
    except (ValueError, OSError) as exc:
        raise InvalidInputError(f"{p}: not a readable .npz file ({exc})") from exc
    if "valid" not in arrays and "val" in arrays:
        arrays["valid"] = arrays["val"]
    missing = [k for k in SPLITS if k not in arrays]
    if missing:
        raise InvalidInputError(
            f"{p}: missing split key(s) {', '.join(missing)} (found {', '.join(sorted(arrays)) or 'none'})"
        )
    return {k: check_split(arrays[k], num_nodes, f"{p}[{k}]") for k in SPLITS}


def check_split(ids: Any, num_nodes: int, where: str) -> NDArray[Any]:
    """A split as int64 node ids: a 1-D id array, or a boolean mask of length ``num_nodes``."""
    a = np.asarray(ids)
    if a.ndim == 2 and 1 in a.shape:
        a = a.reshape(-1)
    if a.ndim != 1:
        raise SchemaMismatchError(f"{where}: expected a 1-D array of node ids, got shape {a.shape}")
    if a.dtype == np.bool_:
        if len(a) != num_nodes:
            raise SchemaMismatchError(f"{where}: boolean mask of length {len(a)}, graph has {num_nodes} nodes")
        return np.flatnonzero(a).astype(np.int64)
    if a.size and not np.issubdtype(a.dtype, np.integer):
        raise SchemaMismatchError(f"{where}: node ids must be integers, got dtype {a.dtype}")
    a = a.astype(np.int64)
    if a.size and (int(a.min()) < 0 or int(a.max()) >= num_nodes):
        bad = int(a[(a < 0) | (a >= num_nodes)][0])
        raise IdsOutOfRangeError(f"{where}: node id {bad} is outside [0, {num_nodes})")
    return a


def _check_split_labels(splits: dict[str, NDArray[Any]], lo: int, labels: NDArray[Any]) -> None:
    hi = lo + len(labels)
    for name, ids in splits.items():
        inside = ids[(ids >= lo) & (ids < hi)]
        if inside.size and np.any(labels[inside - lo] < 0):
            bad = int(inside[labels[inside - lo] < 0][0])
            raise InvalidInputError(f"split {name!r} holds node {bad}, which has no label")


def _write_labels(
    gw: GraphWriter, chunks: Iterable[NDArray[Any]], num_nodes: int, splits: dict[str, NDArray[Any]] | None
) -> tuple[int, int]:
    """Stream label chunks into the label table; returns (num_classes, num_labeled)."""
    top, labeled, done = -1, 0, 0
    with gw.writer(LABEL_KEY, Schema("int64", num_nodes, 1)) as w:
        for lab in chunks:
            if done + len(lab) > num_nodes:
                raise SchemaMismatchError(f"more labels than nodes ({num_nodes})")
            if splits:
                _check_split_labels(splits, done, lab)
            write_rows(w, lab)
            if lab.size:
                top = max(top, int(lab.max()))
                labeled += int(np.count_nonzero(lab >= 0))
            done += len(lab)
        if done != num_nodes:
            raise SchemaMismatchError(f"{done} labels for {num_nodes} nodes")
    return top + 1, labeled


def _no_splits() -> dict[str, NDArray[Any]]:
    return {k: np.empty(0, np.int64) for k in SPLITS}


def _unlabeled_chunks(num_nodes: int, step: int) -> Iterator[NDArray[Any]]:
    for lo in range(0, num_nodes, step):
        yield np.full(min(step, num_nodes - lo), -1, dtype=np.int64)


def ingest_graph(
    store: Store,
    edges_path: str | Path,
    num_nodes: int | None = None,
    labels_path: str | Path | None = None,
    split_path: str | Path | None = None,
    symmetric: bool = True,
    memory_budget: int = DEFAULT_BUDGET,
    progress: Progress = None,
    *,
    dedup: bool = False,
    sort: bool = True,
    replace: bool = False,
) -> dict[str, Any]:
    """Ingest ``.npy`` edges (2xE or Ex2), optional ``.npy`` labels and ``.npz`` splits.

    ``num_nodes`` defaults to the number of labels, else to the largest edge id + 1.
    ``symmetric`` (default) also stores every edge reversed. Labels may be integers
    (-1 = unlabeled) or floats with NaN for unlabeled; split nodes must be labeled.
    Returns the catalog ``graph`` document. ``progress`` gets edge counts and
    totals ``CSC_PHASES * E * (2 if symmetric else 1)`` with ``E`` the file's edges.
    """
    store.require_writable()
    edges = NpyEdges.open(edges_path)
    per = max(1, edge_step(num_nodes or 0, memory_budget) // (2 if symmetric else 1))
    labels = _load_npy(Path(labels_path), "labels") if labels_path is not None else None
    if labels is not None and not (labels.ndim == 1 or (labels.ndim == 2 and labels.shape[1] == 1)):
        raise SchemaMismatchError(f"{labels_path}: labels must have shape (N,) or (N, 1), got {labels.shape}")
    if num_nodes is None:
        num_nodes = len(labels) if labels is not None else edges.max_id(per) + 1
    n = _check_num_nodes(num_nodes)
    if labels is not None and len(labels) != n:
        raise SchemaMismatchError(f"{labels_path}: {len(labels)} labels, but the graph has {n} nodes")
    splits = load_splits(split_path, n) if split_path is not None else _no_splits()
    with GraphWriter(store, replace=replace) as gw:
        step = max(MIN_STEP, memory_budget // 32)
        if labels is not None:
            lab_chunks: Iterable[NDArray[Any]] = (
                _labels_from_array(labels[lo : lo + step].reshape(-1), str(labels_path)) for lo in range(0, n, step)
            )
            num_classes, num_labeled = _write_labels(gw, lab_chunks, n, splits)
        else:
            num_classes, num_labeled = _write_labels(gw, _unlabeled_chunks(n, step), n, None)
        for name in SPLITS:
            gw.write(SPLIT_KEYS[name], splits[name])
        stored = build_csc(
            edges.chunks(per, symmetric, n),
            n,
            store,
            memory_budget,
            sort=sort,
            dedup=dedup,
            progress=progress,
            table_writer=gw.writer,
        )
        doc = make_graph_doc(
            num_nodes=n,
            num_edges=stored,
            num_classes=num_classes,
            num_labeled=num_labeled,
            split_sizes={k: len(v) for k, v in splits.items()},
            source="edges",
            params={
                "edges": str(edges_path),
                "labels": str(labels_path) if labels_path else None,
                "splits": str(split_path) if split_path else None,
                "input_edges": edges.num_edges,
            },
            symmetric=symmetric,
            sorted_=sort,
            dedup=dedup,
        )
        gw.publish(doc)
    return doc


# --------------------------------------------------------------------------- OGB folders
CSV_BLOCK = 8 << 20  # decompressed bytes parsed at a time


def iter_csv(path: Path, dtype: Any, block_bytes: int = CSV_BLOCK) -> Iterator[NDArray[Any]]:
    """Stream a (gzipped) comma-separated numeric file as 2-D arrays of whole lines."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            rest = b""
            line = 0
            while True:
                raw = f.read(block_bytes)
                data = rest + raw
                if not raw:
                    if data.strip():
                        yield _parse_csv(data, dtype, path, line)
                    return
                cut = data.rfind(b"\n") + 1
                rest = data[cut:]
                if cut:
                    arr = _parse_csv(data[:cut], dtype, path, line)
                    line += len(arr)
                    if len(arr):
                        yield arr
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise InvalidInputError(f"{path}: cannot read ({exc})") from exc


def _parse_csv(data: bytes, dtype: Any, path: Path, first_line: int) -> NDArray[Any]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "input contained no data"
            return np.loadtxt(io.BytesIO(data), delimiter=",", dtype=dtype, ndmin=2)
    except ValueError as exc:
        raise InvalidInputError(f"{path}: bad line after line {first_line}: {exc}") from exc


def count_lines(path: Path) -> int:
    """Data lines in a (gzipped) text file, streamed."""
    opener = gzip.open if path.suffix == ".gz" else open
    n, last = 0, b"\n"
    try:
        with opener(path, "rb") as f:
            while chunk := f.read(CSV_BLOCK):
                n += chunk.count(b"\n")
                last = chunk[-1:]
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise InvalidInputError(f"{path}: cannot read ({exc})") from exc
    return n + (last != b"\n")


@dataclass(frozen=True)
class OgbFolder:
    """The files of an OGB node-property-prediction folder that featdb reads."""

    root: Path
    edges: Path
    feat: Path | None
    labels: Path | None
    num_node_list: Path | None
    split_dir: Path | None

    @classmethod
    def find(cls, folder: str | Path, split: str | None = None) -> OgbFolder:
        root = Path(folder)
        raw = root / "raw"
        edges = raw / "edge.csv.gz"
        if not edges.exists():
            raise InvalidInputError(f"{root}: not an OGB node-property folder (no raw/edge.csv.gz)")

        def opt(name: str) -> Path | None:
            p = raw / name
            return p if p.exists() else None

        return cls(
            root,
            edges,
            opt("node-feat.csv.gz"),
            opt("node-label.csv.gz"),
            opt("num-node-list.csv.gz"),
            _find_split_dir(root, split),
        )


def _find_split_dir(root: Path, split: str | None) -> Path | None:
    base = root / "split"
    names = sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []
    if split is not None:
        if split not in names:
            found = ", ".join(names) or "none"
            raise InvalidInputError(f"{root}: no split {split!r} (found {found})")
        return base / split
    if len(names) > 1:
        raise InvalidInputError(f"{root}: several splits ({', '.join(names)}); choose one")
    return base / names[0] if names else None


def _ogb_num_nodes(f: OgbFolder) -> int:
    if f.num_node_list is not None:
        parts = [a.reshape(-1) for a in iter_csv(f.num_node_list, np.int64)]
        vals = np.concatenate(parts) if parts else np.empty(0, np.int64)
        if len(vals) != 1:
            raise InvalidInputError(
                f"{f.num_node_list}: expected one node count, found "
                f"{len(vals)} values (heterogeneous graphs are not supported)"
            )
        return _check_num_nodes(int(vals[0]))
    for p in (f.labels, f.feat):
        if p is not None:
            return count_lines(p)
    return _csv_max_id(f.edges) + 1


def _csv_max_id(path: Path) -> int:
    top = -1
    for a in iter_csv(path, np.int64):
        if a.size:
            top = max(top, int(a.max()))
    return top


def _csv_edges(path: Path, symmetric: bool, num_nodes: int, progress: Progress = None) -> EdgeChunks:
    def gen() -> Iterator[tuple[NDArray[Any], NDArray[Any]]]:
        line = 1
        for a in iter_csv(path, np.int64):
            if a.shape[1] != 2:
                raise SchemaMismatchError(f"{path}: expected 2 columns (src,dst), got {a.shape[1]}")
            _check_ids(a[:, 0], a[:, 1], num_nodes, line, f"{path}: ", "line")
            line += len(a)
            if progress:
                progress(len(a))
            yield _with_reverse(a[:, 0], a[:, 1], symmetric)

    return gen


def _ogb_splits(f: OgbFolder, n: int) -> dict[str, NDArray[Any]]:
    if f.split_dir is None:
        return _no_splits()
    out = {}
    for name in SPLITS:
        p = f.split_dir / f"{name}.csv.gz"
        if not p.exists():
            raise InvalidInputError(f"{f.split_dir}: missing {name}.csv.gz")
        parts = [a.reshape(-1) for a in iter_csv(p, np.int64)]
        ids = np.concatenate(parts) if parts else np.empty(0, np.int64)
        out[name] = check_split(ids, n, str(p))
    return out


def _ogb_features(gw: GraphWriter, path: Path, n: int, feat_key: str, progress: Progress) -> int:
    """Stream node-feat.csv.gz into a float32 table; returns the feature dimension."""
    chunks = iter_csv(path, np.float32)
    first = next(chunks, None)
    if first is None:
        raise SchemaMismatchError(f"{path}: no feature rows, graph has {n} nodes")
    dim = first.shape[1]
    rows = 0
    with gw.writer(feat_key, Schema("float32", n, dim)) as w:
        for a in itertools.chain([first], chunks):
            if a.shape[1] != dim:
                raise SchemaMismatchError(f"{path}: line {rows + 1} has {a.shape[1]} values, expected {dim}")
            if rows + len(a) > n:
                raise SchemaMismatchError(f"{path}: more feature rows than nodes ({n})")
            w.write(a)
            rows += len(a)
            if progress:
                progress(len(a))
        if rows != n:
            raise SchemaMismatchError(f"{path}: {rows} feature rows for {n} nodes")
    return dim


def _ogb_labels(path: Path, progress: Progress) -> Iterator[NDArray[Any]]:
    for a in iter_csv(path, np.float64):
        if a.shape[1] != 1:
            raise SchemaMismatchError(f"{path}: expected one label per line, got {a.shape[1]} columns")
        if progress:
            progress(len(a))
        yield _labels_from_array(a.reshape(-1), str(path))


def ingest_ogb(
    store: Store,
    folder: str | Path,
    memory_budget: int = DEFAULT_BUDGET,
    progress: Progress = None,
    *,
    symmetric: bool = True,
    split: str | None = None,
    feat_key: str = "node/_/feat",
    dedup: bool = False,
    replace: bool = False,
) -> dict[str, Any]:
    """Ingest an OGB node-property-prediction folder (``raw/*.csv.gz``, ``split/<name>/*.csv.gz``).

    Reads ``raw/edge.csv.gz`` (required), ``raw/node-feat.csv.gz`` (-> table
    ``feat_key``, float32), ``raw/node-label.csv.gz`` (NaN or -1 = unlabeled),
    ``raw/num-node-list.csv.gz`` and the splits of ``split/<split>`` (the only
    one when ``split`` is None). Everything is streamed. ``progress`` gets CSV
    lines parsed: label and feature lines once, edge lines twice (once per CSC pass).
    """
    store.require_writable()
    f = OgbFolder.find(folder, split)
    with GraphWriter(store, replace=replace) as gw:
        if f.feat is not None:
            check_key(feat_key)
            gw.check_free(feat_key)
        n = _ogb_num_nodes(f)
        splits = _ogb_splits(f, n)
        if f.labels is not None:
            num_classes, num_labeled = _write_labels(gw, _ogb_labels(f.labels, progress), n, splits)
        else:
            num_classes, num_labeled = _write_labels(gw, _unlabeled_chunks(n, 1 << 20), n, None)
        for name in SPLITS:
            gw.write(SPLIT_KEYS[name], splits[name])
        dim = _ogb_features(gw, f.feat, n, feat_key, progress) if f.feat is not None else None
        stored = build_csc(
            _csv_edges(f.edges, symmetric, n, progress), n, store, memory_budget, dedup=dedup, table_writer=gw.writer
        )
        doc = make_graph_doc(
            num_nodes=n,
            num_edges=stored,
            num_classes=num_classes,
            num_labeled=num_labeled,
            split_sizes={k: len(v) for k, v in splits.items()},
            source="ogb",
            params={"folder": str(f.root), "split": f.split_dir.name if f.split_dir else None},
            symmetric=symmetric,
            sorted_=True,
            dedup=dedup,
            features=feat_key if f.feat is not None else None,
            feat_dim=dim,
        )
        gw.publish(doc)
    return doc

"""The CSC build in bounded memory: count in-degrees, scatter sources into a mapped scratch file,
sort each node's neighbours and stream them into the table."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import (
    IdsOutOfRangeError,
    InvalidInputError,
    SchemaMismatchError,
)
from ..io import reserve
from ..progress import Progress
from ..store import Store
from ..tables import Schema
from .model import (
    BYTES_PER_EDGE,
    DEFAULT_BUDGET,
    ETYPES_KEY,
    INDICES_KEY,
    INDPTR_KEY,
    MAX_STEP,
    MIN_STEP,
    EdgeChunks,
)
from .staging import write_rows


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
    edge_types: int = 0,
    etypes_key: str = ETYPES_KEY,
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

    With ``edge_types`` (T > 0) ``edge_chunks`` yields ``(src, dst, etype)`` with
    types in ``[0, T)``, and each edge's type is stored in ``etypes_key`` (uint8
    or int16, aligned with the indices; a neighbour list is ordered by source,
    then type when ``sort``, and ``dedup`` drops repeated (source, type) pairs only). The
    source and its type travel through the build as one int64, ``src * T + type``.
    """
    n = _check_num_nodes(num_nodes)
    types = _check_edge_types(edge_types)
    if n * max(1, types) >= 1 << 62:  # a source and its type travel as one int64
        raise InvalidInputError(f"{n:,} nodes x {types} edge types do not fit the typed build's 62-bit ids")
    step = edge_step(n, memory_budget)
    open_writer = table_writer or (lambda key, schema: store.table_writer(key, schema, internal=True))
    indptr = np.zeros(n + 1, dtype=np.int64)
    fp1 = _count_in_degrees(edge_chunks, n, step, indptr, progress, types)
    np.cumsum(indptr, out=indptr)
    total = int(indptr[-1])
    with _scratch_array(store, total) as scratch:
        fp2 = _place_sources(edge_chunks, step, indptr, scratch, progress, types)
        if fp1 != fp2:
            raise InvalidInputError("the edge source yielded different edges on its second pass")
        _shift_right(indptr, step)  # each cursor ended at its node's end: that is indptr[v + 1]
        stored = _write_indices(
            scratch,
            indptr,
            n * max(1, types),
            step,
            sort,
            dedup,
            progress,
            lambda rows: _IndexWriter(open_writer, indices_key, etypes_key, rows, types),
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


def _check_edge_types(edge_types: Any) -> int:
    if isinstance(edge_types, bool) or not isinstance(edge_types, (int, np.integer)) or not 0 <= edge_types < 1 << 15:
        raise InvalidInputError(f"edge_types must be an integer in [0, 32768), got {edge_types!r}")
    return int(edge_types)


def _chunks(
    edge_chunks: EdgeChunks, step: int, types: int = 0, n: int = 0
) -> Iterator[tuple[NDArray[Any], NDArray[Any]]]:
    """Step-sized ``(src, dst)`` chunks; with ``types``, ``src`` is ``src * types + etype`` (sources checked
    against ``n`` first)."""
    for chunk in edge_chunks():
        if len(chunk) != 2 + bool(types):
            raise SchemaMismatchError(
                f"edge chunk: expected (src, dst{', etype' if types else ''}), got {len(chunk)} arrays"
            )
        s, d = _as_edge_arrays(chunk[0], chunk[1])
        if types:
            s = _typed_sources(s, chunk[2], types, n)
        for lo in range(0, len(s), step):
            yield s[lo : lo + step], d[lo : lo + step]


def _typed_sources(s: NDArray[Any], etype: Any, types: int, n: int) -> NDArray[Any]:
    t = np.asarray(etype)
    if t.shape != s.shape or (t.size and not np.issubdtype(t.dtype, np.integer)):
        raise SchemaMismatchError(f"edge types must be an integer array of the sources' shape {s.shape}")
    if t.size and (int(t.min()) < 0 or int(t.max()) >= types):
        raise IdsOutOfRangeError(f"an edge type is outside [0, {types})")
    if s.size and (int(s.min()) < 0 or int(s.max()) >= n):  # checked here: encoded, it could pass for another
        bad = int(s[(s < 0) | (s >= n)][0])
        raise IdsOutOfRangeError(f"source id {bad} is outside [0, {n}) (num_nodes={n})")
    return s * types + t.astype(np.int64, copy=False)


class _IndexWriter:
    """Writes sorted CSC values to the indices table (and, with types, splits off the types)."""

    def __init__(self, open_writer: Callable[[str, Schema], Any], key: str, etypes_key: str, rows: int, types: int):
        self.types = types
        self._stack = ExitStack()
        self._w = self._stack.enter_context(open_writer(key, Schema("int64", rows, 1)))
        self._t = (
            self._stack.enter_context(open_writer(etypes_key, Schema(etype_dtype(types), rows, 1))) if types else None
        )

    def write(self, vals: NDArray[Any]) -> None:
        if self._t is None:
            write_rows(self._w, vals)
            return
        src, etype = np.divmod(vals, self.types)
        write_rows(self._w, src)
        write_rows(self._t, etype.astype(etype_dtype(self.types)))

    def __enter__(self) -> _IndexWriter:
        return self

    def __exit__(self, *exc: Any) -> bool | None:
        return self._stack.__exit__(*exc)


def etype_dtype(types: int) -> str:
    """The stored dtype of edge types: one byte up to 256 types."""
    return "uint8" if types <= 256 else "int16"


def _count_in_degrees(
    edge_chunks: EdgeChunks, n: int, step: int, indptr: NDArray[Any], progress: Progress, types: int = 0
) -> tuple[int, int, int]:
    """Pass 1: validate ids, add each destination's count into ``indptr[1 + v]``."""
    counts = indptr[1:]
    seen, fa, fb = 0, 0, 0
    for s, d in _chunks(edge_chunks, step, types, n):
        _check_ids(d[:0] if types else s, d, n, seen)  # typed sources: checked before they were encoded
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
    edge_chunks: EdgeChunks,
    step: int,
    indptr: NDArray[Any],
    scratch: NDArray[Any],
    progress: Progress,
    types: int = 0,
) -> tuple[int, int, int]:
    """Pass 2: put each source at its destination's cursor (``indptr[:-1]``, advanced in place)."""
    cursor = indptr[:-1]
    total = len(scratch)
    seen, fa, fb = 0, 0, 0
    for s, d in _chunks(edge_chunks, step, types, len(indptr) - 1):
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
                    w.write(vals)
                    if progress:
                        progress(hi - lo)
            else:
                for lo in range(0, total, step):
                    hi = min(total, lo + step)
                    w.write(np.asarray(scratch[lo:hi]))
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
            w.write(np.asarray(scratch[lo : min(out, lo + step)]))
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
        with open(path, "wb") as f:  # allocated up front: a full disk fails here, not as a SIGBUS mid-build
            reserve(f.fileno(), length * 8, f"allocating {length * 8} bytes of scratch space for the CSC build")
        mm = np.memmap(path, dtype=np.int64, mode="r+", shape=(length,))
    finally:
        path.unlink(missing_ok=True)
    try:
        yield mm
    finally:
        del mm

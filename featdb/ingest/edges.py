"""Ingest of a graph from ``.npy`` edges, labels and splits."""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import (
    IdsOutOfRangeError,
    InvalidInputError,
    SchemaMismatchError,
)
from ..graph.csc import (
    _check_ids,
    _check_num_nodes,
    build_csc,
    edge_step,
)
from ..graph.model import (
    DEFAULT_BUDGET,
    LABEL_KEY,
    MIN_STEP,
    SPLIT_KEYS,
    SPLITS,
    EdgeChunks,
)
from ..graph.staging import GraphWriter, make_graph_doc, write_rows
from ..io import require_space
from ..progress import Progress
from ..store import Store
from ..tables import Schema


# --------------------------------------------------------------------------- ingest from .npy
def _npy_layout(path: Path) -> tuple[np.dtype[Any], tuple[int, ...], bool, int]:
    from .features import npy_layout

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
        with open(p, "rb") as fh:  # ours to close: np.load leaks the file when the zip is unreadable
            z = np.load(fh, allow_pickle=False)
            if not isinstance(z, np.lib.npyio.NpzFile):
                raise InvalidInputError(f"{p}: a single array; --split takes an .npz with train, valid and test arrays")
            arrays = {k: np.asarray(z[k]) for k in z.files}
    except InvalidInputError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise InvalidInputError(f"{p}: not a readable .npz file ({exc})") from exc
    if "valid" not in arrays and "val" in arrays:
        arrays["valid"] = arrays["val"]
    missing = [k for k in SPLITS if k not in arrays]
    if missing:
        raise InvalidInputError(
            f"{p}: missing split key(s) {', '.join(missing)} (found {', '.join(sorted(arrays)) or 'none'})"
        )
    return check_disjoint({k: check_split(arrays[k], num_nodes, f"{p}[{k}]") for k in SPLITS}, str(p))


def check_disjoint(splits: dict[str, NDArray[Any]], where: str) -> dict[str, NDArray[Any]]:
    """``splits`` if no node id is listed twice in one split or in two splits; :class:`InvalidInputError`
    naming the first such id otherwise (a node in train and test would leak labels into evaluation)."""
    for name, ids in splits.items():
        uniq, counts = np.unique(ids, return_counts=True)
        if len(uniq) < len(ids):
            raise InvalidInputError(f"{where}: split {name} lists node {int(uniq[np.argmax(counts > 1)])} twice")
    every = np.concatenate([np.asarray(v, dtype=np.int64) for v in splits.values()] + [np.empty(0, np.int64)])
    uniq, counts = np.unique(every, return_counts=True)
    if len(uniq) < len(every):
        node = int(uniq[np.argmax(counts > 1)])
        names = [n for n, ids in splits.items() if node in ids]
        raise InvalidInputError(f"{where}: node {node} is in splits {' and '.join(names)}; splits must not overlap")
    return splits


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
    edge_rows = edges.num_edges * (2 if symmetric else 1)  # the CSC indices and their scratch file, 8 bytes each
    require_space(store.root, 16 * edge_rows + 8 * n * 3 + (1 << 20), "ingest-graph")
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

"""The graph as stored: its tables and catalog document, and loading it (into memory or mapped)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import (
    GraphNotFoundError,
    InvalidInputError,
)
from ..store import Store

GRAPH_DOC = "graph"
INDPTR_KEY = "graph/csc/indptr"
INDICES_KEY = "graph/csc/indices"
ETYPES_KEY = "graph/csc/etypes"  # each edge's relation, aligned with the indices (typed graphs only)
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

EdgeChunks = Callable[[], Iterable[tuple[NDArray[Any], ...]]]
"""Called once per pass, yields ``(src, dst)`` (or, for a typed build, ``(src, dst, etype)``) arrays."""


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
    etypes: NDArray[Any] | None = None  # each edge's relation (index into info["edge_types"]), if typed

    @property
    def edge_types(self) -> list[str]:
        """The relation names of a typed graph (``etypes`` indexes them); empty otherwise."""
        return list(self.info.get("edge_types", []))

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
    tables = {**GRAPH_TABLES, "etypes": ETYPES_KEY, **doc.get("tables", {})}

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
        etypes=read("etypes") if doc.get("edge_types") else None,
    )


def node_labels(store: Store, check: bool = True) -> NDArray[Any]:
    """Every node's label, memory-mapped: indexing it reads only the pages of the ids asked for.

    Reads through the map are not checked one by one, so with ``check`` (the default) the whole
    label file is checked against its checksums first (one sequential read, 8 bytes per node).
    """
    doc = graph_info(store)
    key = {**GRAPH_TABLES, **doc.get("tables", {})}["label"]
    if check:
        store.check_table(key)
    return _map_table(store, key)


def _map_table(store: Store, key: str) -> NDArray[Any]:
    # copy-on-write: pages stay shared with the page cache (nothing writes them), and the array is
    # writable as far as numpy and torch are concerned, so torch wraps it without a copy or a warning
    return store.map(key).reshape(-1)

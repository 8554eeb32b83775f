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

Modules: :mod:`.model` (the Graph type and loading), :mod:`.staging` (staging and
publish), :mod:`.csc` (the bounded-memory CSC build). Reading users' files into a
graph is :mod:`featdb.ingest`'s job.
"""

from __future__ import annotations

from ..progress import Progress
from .csc import build_csc, edge_step
from .model import (
    BYTES_PER_EDGE,
    CSC_PHASES,
    DEFAULT_BUDGET,
    ETYPES_KEY,
    GRAPH_DOC,
    GRAPH_TABLES,
    INDICES_KEY,
    INDPTR_KEY,
    LABEL_KEY,
    MAX_STEP,
    MIN_STEP,
    SPLIT_KEYS,
    SPLITS,
    EdgeChunks,
    Graph,
    graph_info,
    has_graph,
    load_graph,
    node_labels,
)
from .staging import GraphWriter, make_graph_doc, remove_stale_staging, stale_staging, write_rows

__all__ = [
    "BYTES_PER_EDGE",
    "CSC_PHASES",
    "DEFAULT_BUDGET",
    "ETYPES_KEY",
    "GRAPH_DOC",
    "GRAPH_TABLES",
    "INDICES_KEY",
    "INDPTR_KEY",
    "LABEL_KEY",
    "MAX_STEP",
    "MIN_STEP",
    "SPLITS",
    "SPLIT_KEYS",
    "EdgeChunks",
    "Graph",
    "GraphWriter",
    "Progress",
    "build_csc",
    "edge_step",
    "graph_info",
    "has_graph",
    "load_graph",
    "make_graph_doc",
    "node_labels",
    "remove_stale_staging",
    "stale_staging",
    "write_rows",
]

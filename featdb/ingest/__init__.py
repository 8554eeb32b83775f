"""Ingest: users' data into a store, one module per source, each streaming within a memory budget.

- :mod:`.features`: feature tables from ``.npy`` (memory-mapped) or raw row-major binary;
- :mod:`.edges`: a graph from ``.npy`` edge lists, labels and splits;
- :mod:`.ogb`: an OGB node-property-prediction folder (:mod:`.ogb_hetero`: a heterogeneous one);
- :mod:`.synth`: the seeded generator of the embedded default dataset.
"""

from __future__ import annotations

from .edges import NpyEdges, check_split, ingest_graph, load_splits
from .features import DEFAULT_BUDGET, ingest, ingest_npy, ingest_raw, npy_layout
from .ogb import CSV_BLOCK, OgbFolder, count_lines, ingest_ogb, iter_csv
from .synth import PROGRESS_PASSES, synth

__all__ = [
    "CSV_BLOCK",
    "DEFAULT_BUDGET",
    "PROGRESS_PASSES",
    "NpyEdges",
    "OgbFolder",
    "check_split",
    "count_lines",
    "ingest",
    "ingest_graph",
    "ingest_npy",
    "ingest_ogb",
    "ingest_raw",
    "iter_csv",
    "load_splits",
    "npy_layout",
    "synth",
]

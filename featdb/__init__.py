"""featdb: a storage engine for feature tables larger than memory.

The public API — what the CLI does, from Python (docs/api.md shows each entry point):

- stores: :func:`open`, :func:`create`, :class:`Store` (tables: ``read``, ``read_all``, ``map``;
  ``verify``), :func:`info` (what ``featdb info`` prints), :func:`gc`;
- ingest: :func:`featdb.ingest.ingest` (feature tables; :mod:`featdb.ingest` is the sub-package),
  :func:`ingest_graph`, :func:`ingest_ogb`, :func:`synth`;
- the graph: :class:`Graph`, :func:`graph_info`, :func:`load_graph`, :func:`node_labels`;
- offline sampling: :class:`SampleConfig`, :func:`sample`, :class:`SampleSet`;
- access traces (any workload's row ids per batch): :func:`add_trace`, :class:`Trace`;
- changing a table: :func:`update_rows` (crash-safe; a packed layout of it is refused until repacked),
  :func:`drop_table`; other libraries' interfaces: :mod:`featdb.adapters` (GraphBolt, PyG);
- layout: :class:`Budgets`, :func:`pack` (``dry_run=True`` plans and predicts only);
- serving: :func:`open_reader` (a :class:`LayoutReader`), :class:`BatchRows`;
- memory: :class:`MemoryBudget`, :func:`peak_rss`, :func:`parse_size`, :func:`format_size` and the
  runtime sizes; files: :func:`write_atomic`;
- errors: :mod:`featdb.errors` (every error is a :class:`FeatDBError`).

Sub-packages (:mod:`featdb.ingest`, :mod:`featdb.sampling`, :mod:`featdb.layout`,
:mod:`featdb.serve`, :mod:`featdb.traces`) list more in their own ``__all__``; everything else is internal.
"""

from . import errors
from .errors import FeatDBError
from .graph import Graph, graph_info, load_graph, node_labels
from .ingest import ingest_graph, ingest_ogb, synth
from .inspect import info
from .io import write_atomic
from .layout.gc import gc
from .layout.pack import pack
from .layout.plan import Budgets
from .memory import DEFAULT_BUDGET, DGL_RUNTIME_BYTES, RUNTIME_BYTES, TORCH_RUNTIME_BYTES, MemoryBudget, peak_rss
from .sampling import SampleConfig, SampleSet, sample
from .serve import BatchRows, LayoutReader, open_reader
from .store import Store, create, open
from .traces import Trace, add_trace
from .units import format_size, parse_size
from .updates import drop_table, update_rows

__all__ = [
    "DEFAULT_BUDGET",
    "DGL_RUNTIME_BYTES",
    "RUNTIME_BYTES",
    "TORCH_RUNTIME_BYTES",
    "BatchRows",
    "Budgets",
    "FeatDBError",
    "Graph",
    "LayoutReader",
    "MemoryBudget",
    "SampleConfig",
    "SampleSet",
    "Store",
    "Trace",
    "add_trace",
    "create",
    "drop_table",
    "errors",
    "format_size",
    "gc",
    "graph_info",
    "info",
    "ingest_graph",
    "ingest_ogb",
    "load_graph",
    "node_labels",
    "open",
    "open_reader",
    "pack",
    "parse_size",
    "peak_rss",
    "sample",
    "synth",
    "update_rows",
    "write_atomic",
]
__version__ = "0.1.0"

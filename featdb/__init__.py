"""featdb: a storage engine for feature tables larger than memory.

The public API — what the CLI and the trainer use; everything else is internal:

- stores: :func:`open`, :func:`create`, :class:`Store` (tables: ``read``, ``read_all``, ``map``;
  ``verify``), :func:`info` (what ``featdb info`` prints);
- the graph: :class:`Graph`, :func:`graph_info`, :func:`load_graph`, :func:`node_labels`;
- memory: :class:`MemoryBudget`, :func:`peak_rss`, :func:`parse_size` and the runtime sizes;
- files: :func:`write_atomic` (temp file, fsync, rename, fsync of the directory);
- errors: :mod:`featdb.errors` (every error is a :class:`FeatDBError`).

Ingest, sampling, layout (plan, pack, gc) and serving live in :mod:`featdb.ingest`,
:mod:`featdb.sampling`, :mod:`featdb.layout` and :mod:`featdb.serve`, each with its own
``__all__``; docs/api.md shows each entry point.
"""

from . import errors
from .errors import FeatDBError
from .graph import Graph, graph_info, load_graph, node_labels
from .inspect import info
from .io import write_atomic
from .memory import DEFAULT_BUDGET, DGL_RUNTIME_BYTES, RUNTIME_BYTES, TORCH_RUNTIME_BYTES, MemoryBudget, peak_rss
from .store import Store, create, open
from .units import format_size, parse_size

__all__ = [
    "DEFAULT_BUDGET",
    "DGL_RUNTIME_BYTES",
    "RUNTIME_BYTES",
    "TORCH_RUNTIME_BYTES",
    "FeatDBError",
    "Graph",
    "MemoryBudget",
    "Store",
    "create",
    "errors",
    "format_size",
    "graph_info",
    "info",
    "load_graph",
    "node_labels",
    "open",
    "parse_size",
    "peak_rss",
    "write_atomic",
]
__version__ = "0.1.0"

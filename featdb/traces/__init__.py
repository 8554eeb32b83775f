"""Access traces: named, stored sequences of batches of row ids for one table.

A trace is what the layout planner reads — per batch, the rows it needs. A GNN
sample set carries one; any other workload that knows its future row accesses
(a recommendation model's embedding lookups per batch, say) adds its own with
:func:`add_trace` (``featdb trace add``), packs it (``featdb pack --trace``) and
serves its batches from the tiers (``open_reader(store, trace=...)``).
"""

from .bytype import traces_by_type
from .files import open_trace_source
from .trace import Trace
from .write import add_trace, drop_trace, list_traces

__all__ = ["Trace", "add_trace", "drop_trace", "list_traces", "open_trace_source", "traces_by_type"]

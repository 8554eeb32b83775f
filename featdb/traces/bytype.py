"""One trace per node type from one sample set, for a graph whose node ids are grouped by type.

DGL's ``to_homogeneous`` numbers the nodes of a heterogeneous graph type by
type: type ``t`` holds the ids ``[lo_t, hi_t)``. A sample set over that graph
reads nodes of every type in each batch; each type's features live in their
own table (``node/<type>/feat``, ``hi_t - lo_t`` rows). :func:`traces_by_type`
splits every batch's input ids by type into one trace per type, in the
table's own row ids (``id - lo_t``), with the sample set's serving groups
(epochs, evaluation splits); each is then packed (``pack --trace``) and served
(``open_reader(trace=...)``) on its own table, all at once.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

from ..errors import AlreadyExistsError, InvalidInputError, SchemaMismatchError
from ..memory import DEFAULT_BUDGET
from ..progress import Progress
from ..sampling.sampleset import SampleSet
from ..store import Store
from .write import add_trace


def traces_by_type(
    store: Store,
    sample_set: str,
    types: Mapping[str, tuple[int, int, str]],
    *,
    prefix: str | None = None,
    memory_budget: int = DEFAULT_BUDGET,
    progress: Progress = None,
) -> dict[str, dict[str, Any]]:
    """Add the trace ``<prefix>.<type>`` (prefix: the sample set's name) for each ``type -> (lo, hi, table)``;
    returns their documents by type. The ranges must not overlap and must lie within the graph, each
    table must have ``hi - lo`` rows and no trace may have the name: all checked before anything is
    written. Each trace is added whole (crash-safe); one that fails leaves those before it in place."""
    with SampleSet(store, sample_set) as ss:
        spans = sorted((lo, hi, t) for t, (lo, hi, _) in types.items())
        if not spans or any(lo < 0 or hi <= lo for lo, hi, _ in spans) or spans[-1][1] > ss.num_nodes:
            raise InvalidInputError(f"type ranges {dict(types)} must be non-empty and lie in [0, {ss.num_nodes})")
        if any(a[1] > b[0] for a, b in itertools.pairwise(spans)):
            raise InvalidInputError(f"type ranges {dict(types)} overlap")
        for t, (lo, hi, table) in types.items():
            if store.schema(table).rows != hi - lo:
                raise SchemaMismatchError(
                    f"type {t!r} has {hi - lo:,} nodes, table {table!r} {store.schema(table).rows:,} rows"
                )
        for t in types:
            if store.catalog.get(f"trace/{prefix or sample_set}.{t}") is not None:
                raise AlreadyExistsError(f"trace {prefix or sample_set}.{t} already exists")
        groups = _groups(ss)
        out = {}
        for t, (lo, hi, table) in types.items():
            batches = (ids[(ids >= lo) & (ids < hi)] - lo for ids in ss.inputs_of(range(ss.num_batches)))
            name = f"{prefix or sample_set}.{t}"
            out[t] = add_trace(
                store,
                name,
                table,
                batches,
                epochs=ss.epochs,
                memory_budget=memory_budget,
                progress=progress,
                groups=groups,
                source={"sample_set": sample_set, "sample_set_uid": ss.uid, "type": t, "lo": lo},
            )
    return out


def _groups(ss: SampleSet) -> list[tuple[int, int]]:
    bpe, train = ss.batches_per_epoch, ss.epochs * ss.batches_per_epoch
    epochs = [(e * bpe, (e + 1) * bpe) for e in range(ss.epochs)]
    return epochs + sorted((lo, hi) for lo, hi in ss.parts.values() if lo >= train and hi > lo)


__all__ = ["traces_by_type"]

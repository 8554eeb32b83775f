"""Garbage collection: what no reader pins and nothing current names goes; work in progress stays.

:func:`gc` removes non-current, unpinned generations (:func:`generation.collect`),
the sample sets and traces asked for (never the one the current layout serves,
unless forced), files and directories a crash left that no catalog entry names (a
directory still locked by a writer is in progress and stays), and stale graph
staging tables.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from typing import Any

from ..catalog import Txn
from ..errors import InvalidInputError, SampleSetNotFoundError, TraceNotFoundError
from ..graph import remove_stale_staging
from ..io import dir_unlocked
from ..store import Store
from ..traces import drop_trace
from ..traces.trace import TRACES
from . import generation


def gc(
    store: Store, sample_sets: Iterable[str] = (), force: bool = False, traces: Iterable[str] = ()
) -> dict[str, Any]:
    """Collect the store; returns what was removed and what was kept because a reader pins it."""
    store.require_writable()
    names, trace_names = list(sample_sets), list(traces)
    layouts = [store.catalog.get(f"generation/{g}") or {} for g in generation.current_ids(store).values()]
    for kind, wanted, field in (("sample set", names, "sample_set"), ("trace", trace_names, "trace")):
        in_use = [lay for lay in layouts if lay.get(field) and lay[field] in wanted]
        if in_use and not force:
            lay = in_use[0]
            raise InvalidInputError(
                f"{kind} {lay[field]!r} is what the current layout serves (of table {lay['table']!r}); "
                f"repack from another {kind} first, or pass --force"
            )
    for name in names:  # every name checked before anything is removed
        if store.catalog.get(f"sampleset/{name}") is None:
            raise SampleSetNotFoundError(f"no sample set {name!r} in {store.root}")
    for name in trace_names:
        if store.catalog.get(f"trace/{name}") is None:
            raise TraceNotFoundError(f"no trace {name!r} in {store.root}")
    removed_sets = [drop_sample_set(store, name) for name in names]
    removed_traces = [drop_trace(store, name) for name in trace_names]
    res: dict[str, Any] = dict(generation.collect(store))
    res["sample_sets"] = removed_sets
    res["traces"] = removed_traces
    res["orphans"] = drop_orphans(store)
    res["stale_graph_staging"] = remove_stale_staging(store)
    return res


def drop_sample_set(store: Store, name: str) -> str:
    """Remove one sample set: its catalog entries in one transaction, then its files."""
    doc = store.catalog.get(f"sampleset/{name}")
    if doc is None:
        raise SampleSetNotFoundError(f"no sample set {name!r} in {store.root}")

    def txn(t: Txn) -> None:
        for rel in doc["files"]:
            t.delete(f"file/{rel}")
        t.delete(f"sampleset/{name}")

    store.catalog.write(txn)
    shutil.rmtree(store.root / doc["path"], ignore_errors=True)
    return name


def drop_orphans(store: Store) -> list[str]:
    """Files a crash left behind: partial writes and directories no catalog entry names."""
    known = set(store.files())
    gone = []
    for sub in ("tables", "samples", TRACES):
        d = store.root / sub
        if not d.exists():
            continue
        for p in d.iterdir():
            rel = f"{sub}/{p.name}"
            if p.is_dir() and not any(k.startswith(rel + "/") for k in known) and dir_unlocked(p):
                shutil.rmtree(p, ignore_errors=True)
                gone.append(rel)
            elif p.is_file() and rel not in known:
                p.unlink(missing_ok=True)
                gone.append(rel)
    return gone


__all__ = ["drop_orphans", "drop_sample_set", "gc"]

"""Changing a table after ingest: row updates and removal, both crash-safe.

A table file is never modified in place (a packed layout and open readers
depend on it). :func:`update_rows` streams the table into a new file with the
given rows replaced and switches the catalog to it in one transaction, exactly
as a re-ingest does; a crash leaves the old table or the new one. A layout
packed before the update names the old file, so readers refuse it ("replaced
after the layout was packed: repack") until ``featdb pack`` runs again; a
stale row is never served. The cost is one sequential pass over the table,
whatever the number of rows updated: batch updates together.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .catalog import Txn
from .errors import InvalidInputError, SchemaMismatchError
from .memory import DEFAULT_BUDGET, MemoryBudget
from .progress import Progress
from .store import Store, remove_table_file, table_files
from .tables import check_ids

MIN_CHUNK, MAX_CHUNK = 1 << 20, 64 << 20  # table chunks streamed through the update


def update_rows(
    store: Store, key: str, ids: Any, rows: Any, memory_budget: int = DEFAULT_BUDGET, progress: Progress = None
) -> dict[str, Any]:
    """Replace rows ``ids`` of table ``key`` with ``rows`` (``len(ids) x dim``; for a repeated id the
    last row wins); returns the new table document. Holds the updates and two chunks of the table."""
    store.require_writable()
    schema = store.schema(key)
    idx = check_ids(ids, schema.rows)
    vals = np.asarray(rows)
    if vals.ndim == 1 and schema.dim == 1:
        vals = vals.reshape(-1, 1)
    if vals.shape != (len(idx), schema.dim):
        raise SchemaMismatchError(f"{len(idx)} ids need rows of shape ({len(idx)}, {schema.dim}), got {vals.shape}")
    if not np.can_cast(vals.dtype, schema.dtype, casting="same_kind"):
        raise SchemaMismatchError(f"table {key!r} holds {schema.dtype}; {vals.dtype} rows do not cast to it safely")
    last = len(idx) - 1 - np.unique(idx[::-1], return_index=True)[1]  # the last write of each id wins
    order = last[np.argsort(idx[last], kind="stable")]
    idx, vals = idx[order], vals[order].astype(schema.dtype)
    budget = MemoryBudget(memory_budget, f"update {key}")
    budget.charge("the updated rows and their ids", vals.nbytes + 2 * idx.nbytes)
    chunk_bytes = budget.fit("two table chunks", 2 * MAX_CHUNK, minimum=2 * max(MIN_CHUNK, schema.row_bytes)) // 2
    budget.check()
    step = max(1, chunk_bytes // schema.row_bytes)
    reader = store.reader(key)

    def chunks() -> Iterator[NDArray[Any]]:
        for lo in range(0, schema.rows, step):
            hi = min(schema.rows, lo + step)
            chunk = np.array(reader.read_range(lo, hi)).reshape(hi - lo, schema.dim)
            a, b = np.searchsorted(idx, [lo, hi])
            chunk[idx[a:b] - lo] = vals[a:b]
            if progress:
                progress(hi - lo)
            yield chunk

    store.write_table(key, chunks(), schema=schema, replace=True)
    return store.table_info(key) | {"updated_rows": len(idx), "memory": budget.as_dict()}


def drop_table(store: Store, key: str) -> None:
    """Remove table ``key``: its catalog entries in one transaction, then its files. Refused while the
    current layout serves it (:class:`InvalidInputError`); traces of it become stale."""
    store.require_writable()
    doc = store.table_info(key)
    cur = store.catalog.get(f"layout/table/{key}") or store.catalog.get("layout/current")
    layout = store.catalog.get(f"generation/{cur}") if cur else None
    if layout is not None and layout.get("table") == key:
        raise InvalidInputError(f"table {key!r} is what the current layout serves; pack another table first")

    def txn(t: Txn) -> None:
        for rel in table_files(doc):
            t.delete(f"file/{rel}")
        t.delete(f"table/{key}")

    store.catalog.write(txn)
    store.forget_reader(key)
    remove_table_file(store.root, doc["file"])

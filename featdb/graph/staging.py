"""Staging and publishing: a graph's tables are written under a private prefix and made public in one
catalog transaction, or removed."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import (
    AlreadyExistsError,
    InvalidInputError,
)
from ..store import Store, check_key, remove_table_file, table_files
from ..tables import Schema, TableWriter
from .model import (
    GRAPH_DOC,
    GRAPH_TABLES,
    SPLITS,
    has_graph,
)


# --------------------------------------------------------------------------- staging + publish
class GraphWriter:
    """Writes the graph's tables under a private staging prefix and publishes them atomically.

    Use as a context manager: tables written through :meth:`writer` / :meth:`write`
    stay invisible under ``graph/stage-*/`` until :meth:`publish` renames them to
    their final keys and records the ``graph`` document, all in one catalog
    transaction. Leaving the block without publishing (an exception) deletes
    every staged table and its file.
    """

    def __init__(self, store: Store, replace: bool = False) -> None:
        store.require_writable()
        self.store = store
        self.replace = replace
        self.token = f"stage-{os.getpid()}-{time.time_ns():x}"
        self.staged: dict[str, str] = {}  # final key -> staged key
        if not replace and has_graph(store):
            raise AlreadyExistsError(f"{store.root} already holds a graph (pass replace=True / --replace)")

    def __enter__(self) -> GraphWriter:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if self.staged:
            self.discard()

    def check_free(self, final_key: str) -> None:
        """Fail early if ``final_key`` is taken and this writer may not replace it."""
        if not self.replace and self.store.has_table(final_key):
            raise AlreadyExistsError(f"table {final_key!r} already exists (pass replace=True / --replace)")

    def _stage_key(self, final_key: str) -> str:
        check_key(final_key, internal=final_key.startswith("graph/"))
        if final_key in self.staged:
            raise InvalidInputError(f"table {final_key!r} written twice")
        self.check_free(final_key)
        staged = f"graph/{self.token}/{len(self.staged)}"
        self.staged[final_key] = staged
        return staged

    @contextmanager
    def writer(self, final_key: str, schema: Schema) -> Iterator[TableWriter]:
        with self.store.table_writer(self._stage_key(final_key), schema, internal=True) as w:
            yield w

    def write(self, final_key: str, data: NDArray[Any]) -> None:
        arr = np.ascontiguousarray(data)
        arr = arr.reshape(len(arr), -1) if arr.ndim != 1 else arr.reshape(-1, 1)
        with self.writer(final_key, Schema(arr.dtype.name, arr.shape[0], arr.shape[1])) as w:
            write_rows(w, arr)

    def publish(self, doc: dict[str, Any]) -> None:
        """Move every staged table to its final key and record the graph doc, in one transaction."""
        staged = dict(self.staged)

        dropped: list[str] = []

        def txn(t: Any) -> list[str]:
            dropped.clear()  # a retried transaction starts over
            old_doc = t.get(GRAPH_DOC)
            if not self.replace and old_doc is not None:
                raise AlreadyExistsError(f"{self.store.root} already holds a graph")
            old_files: list[str] = []
            # tables of the graph being replaced that the new one does not write (a typed graph's
            # edge types under an untyped one) go with it
            owned = {k for k in (old_doc or {}).get("tables", {}).values() if k.startswith("graph/")}
            for key in sorted(owned - set(staged)):
                old = t.get(f"table/{key}")
                if old is not None:
                    for f in table_files(old):
                        t.delete(f"file/{f}")
                    t.delete(f"table/{key}")
                    old_files.append(str(old["file"]))
                    dropped.append(key)
            for final, tmp in staged.items():
                rec = t.get(f"table/{tmp}")
                old = t.get(f"table/{final}")
                if old is not None:
                    if not self.replace:
                        raise AlreadyExistsError(f"table {final!r} already exists")
                    for f in table_files(old):
                        t.delete(f"file/{f}")
                    old_files.append(str(old["file"]))
                t.delete(f"table/{tmp}")
                t.put(f"table/{final}", {**rec, "key": final})
            t.put(GRAPH_DOC, doc)
            return old_files

        old_files = self.store.catalog.write(txn)
        self.staged.clear()
        self._forget_readers([*staged, *staged.values(), *dropped])
        for rel in old_files:
            remove_table_file(self.store.root, rel)

    def discard(self) -> None:
        """Delete every staged table (catalog entries and files)."""
        staged = list(self.staged.values())
        self.staged.clear()

        def txn(t: Any) -> list[str]:
            files = []
            for key in staged:
                rec = t.get(f"table/{key}")
                if rec is not None:
                    t.delete(f"table/{key}")
                    for f in table_files(rec):
                        t.delete(f"file/{f}")
                    files.append(str(rec["file"]))
            return files

        self._forget_readers(staged)
        for rel in self.store.catalog.write(txn):
            remove_table_file(self.store.root, rel)

    def _forget_readers(self, keys: Iterable[str]) -> None:
        # Store caches one reader per key: a replaced or discarded table must not be read again.
        for key in keys:
            self.store.forget_reader(key)


def stale_staging(store: Store) -> list[str]:
    """Keys of staged tables left by graph writers whose process is gone (a crash mid-ingest)."""
    stale = []
    for t in store.tables(include_internal=True):
        parts = t["key"].split("/")
        if parts[0] != "graph" or not parts[1].startswith("stage-"):
            continue
        try:
            os.kill(int(parts[1].split("-")[1]), 0)
        except ProcessLookupError:
            stale.append(t["key"])
        except (ValueError, IndexError, PermissionError):
            continue
    return stale


def remove_stale_staging(store: Store) -> list[str]:
    """Delete :func:`stale_staging` tables and their files (for ``gc``); returns their keys."""
    store.require_writable()
    gw = GraphWriter(store, replace=True)
    keys = stale_staging(store)
    gw.staged = {key: key for key in keys}
    gw.discard()
    return keys


def make_graph_doc(
    *,
    num_nodes: int,
    num_edges: int,
    num_classes: int,
    num_labeled: int,
    split_sizes: dict[str, int],
    source: str,
    params: dict[str, Any],
    symmetric: bool,
    sorted_: bool,
    dedup: bool,
    features: str | None = None,
    feat_dim: int | None = None,
) -> dict[str, Any]:
    """The catalog ``graph`` document (see the module docstring for the tables it names)."""
    return {
        "format": "csc",
        "num_nodes": int(num_nodes),
        "num_edges": int(num_edges),
        "num_classes": int(num_classes),
        "num_labeled": int(num_labeled),
        **{f"num_{name}": int(split_sizes.get(name, 0)) for name in SPLITS},
        "source": source,
        "params": params,
        "symmetric": bool(symmetric),
        "sorted": bool(sorted_),
        "dedup": bool(dedup),
        "tables": dict(GRAPH_TABLES),
        "features": features,
        "feat_dim": feat_dim,
        "created": time.time(),
        "uid": uuid.uuid4().hex,  # content id: what a sample set records of the graph it was sampled from
    }


def write_rows(w: TableWriter, rows: NDArray[Any]) -> None:
    """``w.write(rows)``, skipping empty chunks (the table writer cannot take zero-length views)."""
    if len(rows):
        w.write(rows)

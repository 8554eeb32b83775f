"""Generations: immutable sets of layout files, the current pointer, reader pins and gc.

A generation lives in ``gens/<id>/``. It is written under ``gens/<id>.partial``,
fsynced, renamed, and made current in one catalog transaction, so a crash
leaves either the old generation or the new one current, both complete.
Each table has its own current generation (several tables are packed and
served at once); readers pin a generation with a shared ``flock`` on its ``pin`` file (released
by the kernel if the reader dies); gc removes a non-current generation only
when it can take that lock exclusively.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

from ..catalog import Txn
from ..errors import GenerationPinnedError, LayoutNotFoundError
from ..io import dir_unlocked, exclusive, fsync_dir, hold_dir
from ..store import Store

GENS = "gens"
TABLE_CURRENT = "layout/table/"
"""Catalog prefix: ``layout/table/<key>`` names each table's current generation (``layout/current``
names the last one packed, what a reader opens when it names no table)."""


def new_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S-", time.gmtime()) + f"{time.time_ns() % 10**9:09d}"


def partial_dir(store: Store, gen_id: str) -> tuple[Path, int]:
    """A new ``gens/<id>.partial`` directory, locked against gc while the packer writes it."""
    d = store.root / GENS / f"{gen_id}.partial"
    d.mkdir(parents=True)
    return d, hold_dir(d)


def publish(store: Store, gen_id: str, tmp: Path, doc: dict[str, Any], files: dict[str, dict[str, Any]]) -> None:
    """Rename the finished directory into place and make it current in one transaction."""
    final = store.root / GENS / gen_id
    tmp.rename(final)
    fsync_dir(final.parent)

    def txn(t: Txn) -> None:
        for rel, rec in files.items():
            t.put(f"file/{GENS}/{gen_id}/{rel}", rec)
        t.put(f"generation/{gen_id}", {**doc, "id": gen_id, "files": sorted(files)})
        t.put("layout/current", gen_id)
        t.put(f"{TABLE_CURRENT}{doc['table']}", gen_id)  # this table's current layout; other tables' stay

    try:
        store.catalog.write(txn)
    except BaseException:
        shutil.rmtree(final, ignore_errors=True)
        raise


def current_id(store: Store, table: str | None = None) -> str | None:
    """The id of the current layout of ``table`` (of the last table packed when None)."""
    last = store.catalog.get("layout/current")
    if table is None:
        return None if last is None else str(last)
    gen_id = store.catalog.get(f"{TABLE_CURRENT}{table}")
    if gen_id is None:  # stores packed before layouts were per table: the one current layout, if it is of this table
        doc = store.catalog.get(f"generation/{last}") if last else None
        gen_id = last if doc is not None and doc.get("table") == table else None
    return None if gen_id is None else str(gen_id)


def current_ids(store: Store) -> dict[str, str]:
    """Every table's current layout: table key -> generation id."""
    out = {k[len(TABLE_CURRENT) :]: str(v) for k, v in store.catalog.scan(TABLE_CURRENT)}
    last = store.catalog.get("layout/current")
    doc = store.catalog.get(f"generation/{last}") if last else None
    if doc is not None:
        out.setdefault(doc["table"], last)
    return out


def current(store: Store, table: str | None = None) -> dict[str, Any]:
    gen_id = current_id(store, table)
    doc = store.catalog.get(f"generation/{gen_id}") if gen_id else None
    if doc is None:
        which = f" for table {table!r}" if table else ""
        raise LayoutNotFoundError(f"no packed layout is current{which} in {store.root} (run featdb pack)")
    return dict(doc)


def source_table(store: Store, trace: str | None, sample_set: str | None) -> str | None:
    """The table whose current layout serves ``trace`` (its own table) or ``sample_set`` (the table whose
    current layout was packed from it, when the last one packed was not); None: the last one packed."""
    if trace is not None:
        return (store.catalog.get(f"trace/{trace}") or {}).get("table")
    if (
        sample_set is None
        or (store.catalog.get(f"generation/{current_id(store)}") or {}).get("sample_set") == sample_set
    ):
        return None
    for table, gen_id in sorted(current_ids(store).items()):
        if (store.catalog.get(f"generation/{gen_id}") or {}).get("sample_set") == sample_set:
            return table
    return None


class Pin:
    """A shared lock on a generation (the current layout of ``table``, or the last packed), held while
    a reader has it open."""

    def __init__(
        self, store: Store, table: str | None = None, trace: str | None = None, sample_set: str | None = None
    ) -> None:
        table = table or source_table(store, trace, sample_set)
        for _ in range(10):
            doc = current(store, table)
            try:
                self.fd = hold_dir(store.root / GENS / doc["id"], create=False)
            except FileNotFoundError:
                continue  # collected between our catalog read and the open: look again
            if store.catalog.get(f"generation/{doc['id']}") is not None:
                self.doc = doc
                return
            os.close(self.fd)
        raise LayoutNotFoundError(f"the current generation of {store.root} keeps changing")

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def collect(store: Store, keep_current: bool = True) -> dict[str, list[str]]:
    """Remove non-current, unpinned generations and orphaned partial directories."""
    store.require_writable()
    keep = {store.catalog.get("layout/current"), *current_ids(store).values()} if keep_current else set()
    removed, pinned = [], []
    gens_dir = store.root / GENS
    known = {doc["id"]: doc for _, doc in store.catalog.scan("generation/")}
    for gen_id, doc in known.items():
        if gen_id in keep:
            continue
        try:
            _remove_generation(store, gen_id, doc)
            removed.append(gen_id)
        except GenerationPinnedError:
            pinned.append(gen_id)
    if gens_dir.exists():
        for d in gens_dir.iterdir():
            name = d.name.removesuffix(".partial")
            if name not in known and dir_unlocked(d):
                shutil.rmtree(d, ignore_errors=True)
                removed.append(d.name)
    return {"removed": removed, "pinned": pinned}


def _remove_generation(store: Store, gen_id: str, doc: dict[str, Any]) -> None:
    d = store.root / GENS / gen_id
    with exclusive(d) as free:  # held through the removal: no reader can pin it meanwhile
        if not free:
            raise GenerationPinnedError(f"generation {gen_id} is pinned by a reader")

        def txn(t: Txn) -> None:
            for rel in doc.get("files", []):
                t.delete(f"file/{GENS}/{gen_id}/{rel}")
            t.delete(f"generation/{gen_id}")
            if t.get("layout/current") == gen_id:
                t.delete("layout/current")
            if t.get(f"{TABLE_CURRENT}{doc['table']}") == gen_id:
                t.delete(f"{TABLE_CURRENT}{doc['table']}")

        store.catalog.write(txn)
        shutil.rmtree(d, ignore_errors=True)

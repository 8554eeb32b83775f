"""Generations: immutable sets of layout files, the current pointer, reader pins and gc.

A generation lives in ``gens/<id>/``. It is written under ``gens/<id>.partial``,
fsynced, renamed, and made current in one catalog transaction, so a crash
leaves either the old generation or the new one current, both complete.
Readers pin a generation with a shared ``flock`` on its ``pin`` file (released
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

    try:
        store.catalog.write(txn)
    except BaseException:
        shutil.rmtree(final, ignore_errors=True)
        raise


def current(store: Store) -> dict[str, Any]:
    gen_id = store.catalog.get("layout/current")
    doc = store.catalog.get(f"generation/{gen_id}") if gen_id else None
    if doc is None:
        raise LayoutNotFoundError(f"no packed layout is current in {store.root} (run featdb pack)")
    return dict(doc)


class Pin:
    """A shared lock on a generation, held while a reader has it open."""

    def __init__(self, store: Store) -> None:
        for _ in range(10):
            doc = current(store)
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
    cur = store.catalog.get("layout/current")
    removed, pinned = [], []
    gens_dir = store.root / GENS
    known = {doc["id"]: doc for _, doc in store.catalog.scan("generation/")}
    for gen_id, doc in known.items():
        if gen_id == cur and keep_current:
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

        store.catalog.write(txn)
        shutil.rmtree(d, ignore_errors=True)

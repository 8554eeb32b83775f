"""Garbage collection: what no reader pins and nothing current names goes; work in progress stays.

:func:`gc` removes non-current, unpinned generations (:func:`generation.collect`),
the sample sets asked for (never the one the current layout serves, unless
forced), files and directories a crash left that no catalog entry names (a
directory still locked by a writer is in progress and stays), and stale graph
staging tables.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from typing import Any

from ..catalog import Txn
from ..errors import InvalidInputError, SampleSetNotFoundError
from ..graph import remove_stale_staging
from ..io import dir_unlocked
from ..store import Store
from . import generation


def gc(store: Store, sample_sets: Iterable[str] = (), force: bool = False) -> dict[str, Any]:
    """Collect the store; returns what was removed and what was kept because a reader pins it."""
    store.require_writable()
    names = list(sample_sets)
    cur = store.catalog.get("layout/current")
    in_use = (store.catalog.get(f"generation/{cur}") or {}).get("sample_set") if cur else None
    if in_use in names and not force:
        raise InvalidInputError(
            f"sample set {in_use!r} is what the current layout serves; "
            "repack from another sample set first, or pass --force"
        )
    for name in names:  # every name checked before anything is removed
        if store.catalog.get(f"sampleset/{name}") is None:
            raise SampleSetNotFoundError(f"no sample set {name!r} in {store.root}")
    removed_sets = [drop_sample_set(store, name) for name in names]
    res: dict[str, Any] = dict(generation.collect(store))
    res["sample_sets"] = removed_sets
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
    for sub in ("tables", "samples"):
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

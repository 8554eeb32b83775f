"""Adding and removing traces: written beside the store, published in one catalog transaction.

A trace is written under ``traces/<name>.partial-<ns>/`` (locked against gc
while it is written, and by a per-name writer lock against a second writer),
every file fsynced, the directory renamed to ``traces/<name>`` and only then
recorded in the catalog. A crash leaves either no trace or the whole one; bad
input stops the write and leaves nothing behind.
"""

from __future__ import annotations

import itertools
import os
import shutil
import time
import uuid
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..catalog import Txn
from ..errors import AlreadyExistsError, IdsOutOfRangeError, InvalidIdsError, InvalidInputError, TraceNotFoundError
from ..io import ChecksumWriter, hold_dir, write_atomic
from ..locks import writer_lock
from ..memory import DEFAULT_BUDGET, MemoryBudget
from ..names import child
from ..progress import Progress
from ..store import Store
from ..tables import check_ids, id_dtype
from .trace import INDEX_COLS, TRACES

BATCH_ALLOWANCE = 64 << 20  # one batch in the making (its ids, sorted copy, checksum)


def add_trace(
    store: Store,
    name: str,
    table: str,
    batches: Iterable[Any],
    *,
    epochs: int = 1,
    memory_budget: int = DEFAULT_BUDGET,
    progress: Progress = None,
    groups: Sequence[tuple[int, int]] | None = None,
    source: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Store ``batches`` (each an array of row ids of ``table``) as the trace ``name``; returns its document.

    Each batch is stored as its distinct ids, sorted (a batch reads a row once). ``epochs``
    splits the batches into that many equal runs, served (and packed) as epochs; ``groups`` instead
    gives the batch ranges served together, in order, the first ``epochs`` of them training epochs
    (a sample set's epochs and evaluation splits, as :func:`traces_by_type` passes them). Holds
    4 bytes per table row (the read counts) and one batch at a time. ``source`` (recorded as is)
    says where the batches came from, e.g. the sample set a per-type trace was split from."""
    store.require_writable()
    rel = f"{TRACES}/{child(store.root / TRACES, name, 'trace name').name}"
    rows = store.schema(table).rows
    if not isinstance(epochs, int) or epochs < 1:
        raise InvalidInputError(f"epochs must be a positive integer, got {epochs!r}")
    budget = MemoryBudget(memory_budget, f"trace add ({rows:,} rows)")
    budget.charge("read counts (4 B/row)", 4 * rows)
    budget.charge("one batch in the making", BATCH_ALLOWANCE)
    budget.check()
    with writer_lock(store.root, "trace", name):
        if store.catalog.get(f"trace/{name}") is not None:
            raise AlreadyExistsError(f"trace {name!r} already exists (remove it with featdb gc --trace {name})")
        tmp = store.root / f"{rel}.partial-{time.time_ns():x}"
        tmp.mkdir(parents=True)
        lock = hold_dir(tmp)  # gc leaves a trace that is still being written alone
        try:
            started = time.perf_counter()
            files, stats = _write(tmp, rel, batches, rows, progress)
            _check_groups(stats["batches"], epochs, groups)
            doc = {
                "name": name,
                "table": table,
                "path": rel,
                "num_rows": rows,
                "id_dtype": id_dtype(rows).str,
                "epochs": epochs,
                **({"groups": [[int(lo), int(hi)] for lo, hi in groups]} if groups is not None else {}),
                **({"source": source} if source is not None else {}),
                **stats,
                "uid": uuid.uuid4().hex,
                "table_uid": store.table_info(table).get("uid"),
                "created": time.time(),
                "add_s": round(time.perf_counter() - started, 3),
                "files": sorted(files),
            }
            _publish(store, tmp, rel, doc, files)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        finally:
            os.close(lock)
    return doc | {"memory": budget.as_dict()}


def _write(
    tmp: Path, rel: str, batches: Iterable[Any], rows: int, progress: Progress
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    id_dt = id_dtype(rows)
    counts = np.zeros(rows, dtype=np.int32)
    index: list[tuple[int, int, int]] = []
    total = raw_total = 0
    with ChecksumWriter(tmp / "ids.bin") as w:
        for b, arr in enumerate(batches):
            ids = _batch_ids(arr, rows, b)
            raw_total += len(ids)
            distinct = np.unique(ids)
            data = distinct.astype(id_dt).tobytes()
            w.write(data)
            index.append((total, len(distinct), zlib.crc32(data)))
            total += len(distinct)
            counts[distinct] += 1
            if progress:
                progress(1)
        if not total:  # (a batch may read no row of this table; the trace as a whole must read some)
            what = "holds no batch" if not index else f"holds {len(index)} batches but no row id"
            raise InvalidInputError(f"a trace needs at least one row id; the source {what}")
        w.commit()
    files = {f"{rel}/ids.bin": {"size": w.size, "crcs": w.crcs, "kind": "trace"}}
    for fname, arr in (("index.i64", np.asarray(index, dtype="<i8").reshape(-1, INDEX_COLS)), ("counts.i32", counts)):
        size, crcs = write_atomic(tmp / fname, arr.tobytes())
        files[f"{rel}/{fname}"] = {"size": size, "crcs": crcs, "kind": "trace"}
    stats = {
        "batches": len(index),
        "ids": total,
        "lookups": raw_total,
        "distinct_rows": int(np.count_nonzero(counts)),
        "max_batch": max(n for _, n, _ in index),
        "empty_batches": sum(1 for _, n, _ in index if not n),
        "bytes": w.size,
    }
    return files, stats


def _check_groups(n: int, epochs: int, groups: Sequence[tuple[int, int]] | None) -> None:
    if groups is None:
        if n % epochs:
            raise InvalidInputError(f"{n} batches do not split into {epochs} equal epochs")
        return
    bounds = [b for lo, hi in groups for b in (lo, hi)]
    tiles = bool(groups) and bounds[0] == 0 and bounds[-1] == n and all(a <= b for a, b in itertools.pairwise(bounds))
    if not tiles or any(lo == hi for lo, hi in groups) or epochs > len(groups):
        raise InvalidInputError(
            f"groups {list(groups)} must cover batches 0..{n} in order, each non-empty, the first {epochs} the epochs"
        )


def _batch_ids(arr: Any, rows: int, b: int) -> NDArray[Any]:
    try:
        ids = check_ids(arr, rows)
    except InvalidIdsError as exc:
        raise InvalidIdsError(f"batch {b}: {exc}") from None
    except IdsOutOfRangeError as exc:
        raise IdsOutOfRangeError(f"batch {b}: {exc}") from None
    return ids


def _publish(store: Store, tmp: Path, rel: str, doc: dict[str, Any], files: dict[str, dict[str, Any]]) -> None:
    final = store.root / rel
    if final.exists():  # the writer lock is held and the catalog lacks the name: a crashed writer's orphan
        shutil.rmtree(final)
    tmp.rename(final)

    def txn(t: Txn) -> None:
        if t.get(f"trace/{doc['name']}") is not None:
            raise AlreadyExistsError(f"trace {doc['name']!r} already exists")
        for path, rec in files.items():
            t.put(f"file/{path}", rec)
        t.put(f"trace/{doc['name']}", doc)

    try:
        store.catalog.write(txn)
    except BaseException:
        shutil.rmtree(final, ignore_errors=True)
        raise


def list_traces(store: Store) -> list[dict[str, Any]]:
    """Every trace's document (what ``featdb info`` lists)."""
    return [{k: v for k, v in doc.items() if k != "files"} for _, doc in store.catalog.scan("trace/")]


def drop_trace(store: Store, name: str) -> str:
    """Remove one trace: its catalog entries in one transaction, then its files."""
    store.require_writable()
    doc = store.catalog.get(f"trace/{name}")
    if doc is None:
        raise TraceNotFoundError(f"no trace {name!r} in {store.root}")

    def txn(t: Txn) -> None:
        for rel in doc["files"]:
            t.delete(f"file/{rel}")
        t.delete(f"trace/{name}")

    store.catalog.write(txn)
    shutil.rmtree(store.root / doc["path"], ignore_errors=True)
    return name

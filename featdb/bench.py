"""Benchmarks anyone can rerun (``featdb bench ...``): numbers come from here, not from docs.

Every measurement drops the files' pages from the page cache first, so the disk
is what is measured. Bytes the process really pulled from storage come from
``/proc/self/io`` (``read_bytes``), which counts memory-mapped faults and
read-ahead too, so featdb and ``numpy.memmap`` are charged the same way.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from .io import PAGE, PageFile, aligned_buffer, drop_page_cache
from .store import Store
from .tables import HEADER_BYTES


def proc_read_bytes() -> int:
    try:
        for line in Path("/proc/self/io").read_text().splitlines():
            if line.startswith("read_bytes:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def random_reads(store: Store, key: str, rows: int, batch: int, seed: int = 0) -> dict[str, Any]:
    """Random row reads on a cold file: featdb's direct path vs numpy.memmap, same ids."""
    info = store.table_info(key)
    path = store.root / info["file"]
    rb = np.dtype(info["dtype"]).itemsize * info["dim"]
    ids = np.random.default_rng(seed).integers(0, info["rows"], rows)
    out: dict[str, Any] = {"table": key, "rows": rows, "row_bytes": rb, "batch": batch}
    drop_page_cache(path)
    reader = store.reader(key)
    before, t = proc_read_bytes(), time.perf_counter()
    for lo in range(0, rows, batch):
        reader.read(ids[lo : lo + batch])
    need = sum(len(np.unique(ids[lo : lo + batch])) for lo in range(0, rows, batch)) * rb
    out["distinct_row_bytes"] = need
    out["featdb"] = _result(
        time.perf_counter() - t, rows, proc_read_bytes() - before, reader.stats.bytes_read, need, reader.mode
    )
    drop_page_cache(path)
    mm = np.memmap(path, dtype=info["dtype"], mode="r", offset=HEADER_BYTES, shape=(info["rows"], info["dim"]))
    before, t = proc_read_bytes(), time.perf_counter()
    for lo in range(0, rows, batch):
        np.asarray(mm[ids[lo : lo + batch]])
    out["memmap"] = _result(time.perf_counter() - t, rows, proc_read_bytes() - before, None, need, "mmap")
    del mm
    out["speedup"] = round(out["featdb"]["rows_per_s"] / max(1e-9, out["memmap"]["rows_per_s"]), 2)
    return out


def _result(secs: float, rows: int, disk: int, counted: int | None, need: int, mode: str) -> dict[str, Any]:
    return {
        "seconds": round(secs, 3),
        "rows_per_s": round(rows / secs),
        "io": mode,
        "disk_bytes": disk,
        "read_amplification": round(disk / need, 3) if disk else None,
        "featdb_counted_bytes": counted,
        "featdb_counted_amplification": round(counted / need, 3) if counted else None,
    }


def sequential_bandwidth(
    path: Path, piece: int = 4 << 20, threads: int = 4, limit: int | None = None
) -> dict[str, Any]:
    """Direct sequential read of a file in ``piece`` chunks, ``threads`` at a time (cold)."""
    from concurrent.futures import ThreadPoolExecutor

    drop_page_cache(path)
    f = PageFile(path)
    size = min(f.size, limit or f.size) // PAGE * PAGE
    bufs = [aligned_buffer(piece) for _ in range(threads)]
    t = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        futs = [
            pool.submit(f.read_into, memoryview(bufs[i % threads]), off) for i, off in enumerate(range(0, size, piece))
        ]
        n = sum(x.result() for x in futs)
    secs = time.perf_counter() - t
    mode = f.mode
    f.close()
    return {"bytes": n, "seconds": round(secs, 3), "mib_per_s": round(n / secs / 2**20, 1), "io": mode}


def serve_epoch(store: Store, epoch: int = 0, queue_depth: int = 4) -> dict[str, Any]:
    """Serve every batch of one epoch from a cold page cache; compare L4 with sequential bandwidth."""
    from .layout import generation
    from .sampling import SampleSet
    from .serve import open_reader

    doc = generation.current(store)
    gdir = store.root / generation.GENS / doc["id"]
    l4_size = (gdir / "l4.dat").stat().st_size
    seq_before = sequential_bandwidth(gdir / "l4.dat", limit=max(PAGE, l4_size)) if l4_size else None
    for name in ("l4.dat", "l3.dat"):
        drop_page_cache(gdir / name)
    drop_page_cache(store.root / store.table_info(doc["table"])["file"])
    with SampleSet(store, doc["sample_set"]) as ss, open_reader(store, queue_depth=queue_depth) as r:
        bids = ss.epoch_batches(epoch).tolist()
        t = time.perf_counter()
        futs = [r.read_batch_async(b) for b in bids[:queue_depth]]
        for i in range(len(bids)):
            futs[i].result().release()
            if i + queue_depth < len(bids):
                futs.append(r.read_batch_async(bids[i + queue_depth]))
        secs = time.perf_counter() - t
        stats = r.stats.as_dict()
    l4 = stats["tiers"]["l4"]
    seq = sequential_bandwidth(gdir / "l4.dat", limit=max(PAGE, l4_size))
    if seq_before is not None:  # the disk is shared and noisy: bracket the epoch, use the mean
        seq = {
            "mib_per_s": round((seq["mib_per_s"] + seq_before["mib_per_s"]) / 2, 1),
            "before": seq_before,
            "after": seq,
        }
    return {
        "generation": doc["id"],
        "policy": doc["policy"],
        "batches": len(bids),
        "seconds": round(secs, 3),
        "batches_per_s": round(len(bids) / secs, 2),
        "stats": stats,
        "l4_mib_per_s": round(l4["bytes_read"] / secs / 2**20, 1) if l4["bytes_read"] else None,
        "sequential": seq,
        "l4_over_sequential": round(l4["bytes_read"] / secs / 2**20 / seq["mib_per_s"], 3)
        if l4["bytes_read"]
        else None,
        "read_amplification": stats["read_amplification"],
    }


def sequential_write(path: Path, nbytes: int, piece: int = 8 << 20) -> dict[str, Any]:
    """Write ``nbytes`` sequentially with buffered writes, then fsync (how the packer writes)."""
    import os

    buf = bytes(piece)
    t = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        done = 0
        while done < nbytes:
            done += os.write(fd, buf[: min(piece, nbytes - done)])
        os.fsync(fd)
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)
    secs = time.perf_counter() - t
    return {"bytes": nbytes, "seconds": round(secs, 3), "mib_per_s": round(nbytes / secs / 2**20, 1)}


def pack_ratio(store: Store, sample_set: str, table: str, budgets: Any, memory_budget: int) -> dict[str, Any]:
    """Packing time against reading the base table once plus writing the packed bytes once."""
    from .layout.pack import pack

    base = store.root / store.table_info(table)["file"]
    plan = pack(store, sample_set, table, budgets, memory_budget, dry_run=True)
    packed_bytes = int(plan["predictions"]["l3_l4_bytes"]) + (plan["l1_rows"] + plan["l2_rows"]) * plan["row_bytes"]
    read = sequential_bandwidth(base, piece=8 << 20, threads=2)
    write = sequential_write(store.root / "bench-write.tmp", packed_bytes)
    drop_page_cache(base)
    t = time.perf_counter()
    doc = pack(store, sample_set, table, budgets, memory_budget)
    secs = time.perf_counter() - t
    io_s = read["seconds"] + write["seconds"]
    return {
        "table_bytes": base.stat().st_size,
        "packed_bytes": packed_bytes,
        "blowup": doc["blowup"],
        "read_once": read,
        "write_once": write,
        "pack_s": round(secs, 3),
        "plan_s": doc["plan_s"],
        "io_floor_s": round(io_s, 3),
        "pack_over_io": round(secs / io_s, 3),
        "generation": doc["id"],
        "memory_budget": memory_budget,
    }

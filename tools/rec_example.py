"""The worked non-GNN example: a recommendation model whose embedding table is larger than memory.

Usage: python tools/rec_example.py DIR [--rows 8000000 --dim 64 --batches 300 --cap 1GiB ...] [--json]

1. Builds (once) a store in DIR/store with one embedding table, ``item/_/emb``
   (ROWS x DIM float32, written in chunks), and the lookups of BATCHES training
   batches: SAMPLES samples per batch, each looking up LOOKUPS item ids drawn
   from a Zipf distribution (exponent ZIPF) over the items, the popular items
   spread over the table. The lookups are recorded as the trace ``lookups``.
2. Packs a layout from the trace (``featdb.pack(..., trace="lookups")``, a
   HOST_CACHE of the hottest rows in memory, each batch's remaining rows in one
   page-aligned extent).
3. Trains a small PyTorch model (mean of each sample's embeddings -> MLP ->
   click logit; the label is a fixed linear function of the embeddings, so the
   loss only falls if the rows are right) over the same batches, once per
   mode, each in a child process under one cgroup memory cap (CAP) smaller than
   the table, with the page cache of the store's files dropped before each:

   - ``featdb``: ``open_reader(store, trace="lookups")``, batches read ahead
     (``read_batch_async``, QUEUE_DEPTH in flight);
   - ``mmap``: the naive way, ``numpy.memmap`` of the base table indexed with
     each batch's distinct ids (read ahead the same way, on threads);
   - ``direct``: featdb's base-table reads (``store.read``: sorted, coalesced
     page reads with ``O_DIRECT``), no layout, read ahead the same way.

Each mode reports rows/s (distinct rows served per second of training),
lookups/s, the bytes it pulled from storage (``/proc/self/io`` ``read_bytes``,
which counts memory-mapped faults and read-ahead too), bytes read per byte of
rows served, featdb's own tier statistics, the final loss (equal in every mode
when the rows are), and the child's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

import featdb
from featdb.bench import proc_read_bytes
from featdb.cgroup import MemoryCap
from featdb.io import drop_page_cache
from featdb.tables import HEADER_BYTES, Schema

KEY = "item/_/emb"
TRACE = "lookups"
MODES = ("featdb", "mmap", "direct")
SPREAD = 2_654_435_761  # popular ids spread over the table: id = rank * SPREAD mod rows (SPREAD prime)


def lookups(b: int, a: argparse.Namespace) -> np.ndarray:
    """Batch ``b``'s item ids, ``samples x lookups``: Zipf ranks, spread over the table."""
    rng = np.random.default_rng([a.seed, b])
    ranks = rng.zipf(a.zipf, size=(a.samples, a.lookups)) - 1
    return ((ranks % a.rows) * SPREAD) % a.rows


def build(a: argparse.Namespace, store_dir: Path) -> dict[str, Any]:
    """The store, its trace and its layout (skipped when DIR/store already holds them)."""
    if (store_dir / "built.json").exists():
        return dict(json.loads((store_dir / "built.json").read_text()))
    out: dict[str, Any] = {}
    with featdb.create(store_dir / "store") as st:
        t = time.perf_counter()
        chunk = max(1, (64 << 20) // (4 * a.dim))
        rng = np.random.default_rng(a.seed)
        chunks = (
            rng.standard_normal((min(chunk, a.rows - lo), a.dim), dtype=np.float32) for lo in range(0, a.rows, chunk)
        )
        st.write_table(KEY, chunks, Schema("float32", a.rows, a.dim))
        out["ingest_s"] = round(time.perf_counter() - t, 2)
        doc = featdb.add_trace(st, TRACE, KEY, (lookups(b, a).ravel() for b in range(a.batches)))
        out["trace"] = {k: doc[k] for k in ("batches", "lookups", "ids", "distinct_rows", "max_batch", "add_s")}
        budgets = featdb.Budgets(host_cache=a.host_cache)
        lay = featdb.pack(st, None, None, budgets, memory_budget=a.memory_budget, trace=TRACE)
        keys = ("l2_rows", "l4_rows", "blowup", "predicted_amplification", "plan_s", "pack_s")
        out["layout"] = {k: lay[k] for k in keys}
    (store_dir / "built.json").write_text(json.dumps(out))
    return out


def drop_store_cache(root: Path) -> None:
    for p in root.rglob("*"):
        if p.is_file() and "catalog" not in p.parts:
            drop_page_cache(p)


# -- the child: one mode's training run -------------------------------------------------------
def serve(a: argparse.Namespace, mode: str) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)  # the other core reads
    for _ in range(2):  # the first pass is a warm-up: torch's code paged in before anything is measured
        torch.manual_seed(a.seed)
        model = torch.nn.Sequential(torch.nn.Linear(a.dim, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        model(torch.zeros(a.samples, a.dim)).sum().backward()
        opt.step()
    w_true = torch.from_numpy(np.random.default_rng(a.seed + 1).standard_normal(a.dim).astype(np.float32))
    st = featdb.open(Path(a.dir) / "store" / "store")
    fetch, close, stats = _fetcher(st, mode, a)
    rows_served = lookups_total = 0
    wait = 0.0
    losses: list[float] = []
    before, t0 = proc_read_bytes(), time.perf_counter()
    pending = deque(fetch(b) for b in range(min(a.queue_depth, a.batches)))
    for b in range(a.batches):
        t = time.perf_counter()
        rows, index, release = pending.popleft()()  # the batch's distinct rows, each lookup's row, release
        wait += time.perf_counter() - t
        if b + a.queue_depth < a.batches:
            pending.append(fetch(b + a.queue_depth))
        emb = torch.from_numpy(rows)[torch.from_numpy(index)].reshape(a.samples, a.lookups, a.dim).mean(1)
        release()  # (featdb: the rows were a view of a pooled buffer; the gather copied them)
        label = (emb @ w_true > 0).float()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(emb).squeeze(1), label)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
        rows_served += len(rows)
        lookups_total += index.size
    secs = time.perf_counter() - t0
    disk = proc_read_bytes() - before
    out = {
        "mode": mode,
        "seconds": round(secs, 2),
        "read_wait_s": round(wait, 2),
        "rows_served": rows_served,
        "rows_per_s": round(rows_served / secs),
        "lookups_per_s": round(lookups_total / secs),
        "disk_bytes": disk,
        "bytes_read_per_row_byte": round(disk / (rows_served * 4 * a.dim), 3),
        "loss_first_10": round(float(np.mean(losses[:10])), 4),
        "loss_last_10": round(float(np.mean(losses[-10:])), 4),
    }
    out |= stats()
    close()
    st.close()
    return out


def _fetcher(st: featdb.Store, mode: str, a: argparse.Namespace) -> tuple[Any, Any, Any]:
    """(fetch(b) -> get() giving (rows, each lookup's row), close(), stats()). Reads start at fetch."""
    trace = featdb.Trace(st, TRACE)
    pool = ThreadPoolExecutor(max_workers=a.queue_depth)
    if mode == "featdb":
        reader = featdb.open_reader(st, trace=TRACE, queue_depth=a.queue_depth, memory_budget=a.memory_budget)

        def fetch(b: int) -> Any:
            fut = reader.read_batch_async(b)

            def get() -> tuple[np.ndarray, np.ndarray, Any]:
                br = fut.result()  # rows in serving order: row i is trace id order[i]
                inv = np.empty(len(br.order), dtype=np.int64)
                inv[br.order] = np.arange(len(br.order))
                index = inv[np.searchsorted(trace.input_ids(b), lookups(b, a).ravel())]
                return br.rows, index, br.release

            return get

        def stats() -> dict[str, Any]:
            s = reader.stats.as_dict()
            tiers = {k: v["rows"] for k, v in s["tiers"].items() if v["rows"]}
            return {
                "featdb_tiers_rows": tiers,
                "featdb_counted_bytes": s["disk_bytes"],
                "featdb_read_amplification": s["read_amplification"],
            }

        return fetch, lambda: (reader.close(), pool.shutdown(), trace.close()), stats
    if mode == "mmap":
        info = st.table_info(KEY)
        mm = np.memmap(st.root / info["file"], dtype="float32", mode="r", offset=HEADER_BYTES, shape=(a.rows, a.dim))

        def read(ids: np.ndarray) -> np.ndarray:
            return np.asarray(mm[ids])
    else:

        def read(ids: np.ndarray) -> np.ndarray:
            return st.read(KEY, ids)

    def work(b: int) -> tuple[np.ndarray, np.ndarray, Any]:
        ids = trace.input_ids(b)  # sorted, distinct
        return read(ids), np.searchsorted(ids, lookups(b, a).ravel()), lambda: None

    def stats() -> dict[str, Any]:
        counted = st.stats().get(KEY, {}).get("bytes_read") if mode == "direct" else None
        return {"featdb_counted_bytes": counted} if counted is not None else {}

    return (lambda b: pool.submit(work, b).result), lambda: (pool.shutdown(), trace.close()), stats


# -- the driver ---------------------------------------------------------------------------------
def run(a: argparse.Namespace) -> dict[str, Any]:
    root = Path(a.dir)
    root.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {"config": {k: v for k, v in vars(a).items() if k not in ("serve", "json")}}
    out["table_bytes"] = a.rows * a.dim * 4
    out["build"] = build(a, root / "store")
    out["runs"] = {}
    with MemoryCap(a.cap, "featdb-rec-example") as cap:
        out["capped"], out["why_uncapped"] = cap.capped, cap.why_uncapped
        for mode in a.modes.split(","):
            drop_store_cache(root / "store" / "store")
            argv = [sys.executable, __file__, *sys.argv[1:], "--serve", mode]
            fin = cap.run(argv, timeout=a.timeout)
            if fin.returncode != 0:
                out["runs"][mode] = {"failed": fin.returncode, "oom_killed": fin.oom_killed, "err": fin.stderr_tail}
                continue
            out["runs"][mode] = json.loads(fin.stdout) | {"peak_rss_bytes": fin.peak_rss_bytes}
    runs = out["runs"]
    if "featdb" in runs and "rows_per_s" in runs["featdb"]:
        base = runs["featdb"]["rows_per_s"]
        out["featdb_speedup"] = {m: round(base / r["rows_per_s"], 2) for m, r in runs.items() if "rows_per_s" in r}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dir", help="working directory: the store is built in DIR/store once and reused")
    ap.add_argument("--rows", type=int, default=8_000_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--batches", type=int, default=300)
    ap.add_argument("--samples", type=int, default=512, help="samples per batch")
    ap.add_argument("--lookups", type=int, default=16, help="item lookups per sample")
    ap.add_argument("--zipf", type=float, default=1.1, help="Zipf exponent of item popularity")
    ap.add_argument("--host-cache", type=featdb.parse_size, default="64MiB")
    ap.add_argument("--memory-budget", type=featdb.parse_size, default="512MiB")
    ap.add_argument("--cap", type=featdb.parse_size, default="1GiB", help="cgroup memory cap of each run")
    ap.add_argument("--queue-depth", type=int, default=4)
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--serve", choices=MODES, help=argparse.SUPPRESS)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    a.dir = str(Path(a.dir).resolve())
    if a.serve:
        print(json.dumps(serve(a, a.serve)))
        return
    res = run(a)
    print(json.dumps(res, indent=2) if a.json else render(res))


def render(res: dict[str, Any]) -> str:
    c, b = res["config"], res["build"]
    lines = [
        f"table {c['rows']:,} x {c['dim']} float32 = {res['table_bytes'] / 2**30:.2f} GiB; "
        f"cap {c['cap'] / 2**30:.2f} GiB "
        + ("(applied)" if res["capped"] else f"(NOT applied: {res['why_uncapped']})"),
        f"trace: {b['trace']['batches']} batches, {b['trace']['lookups']:,} lookups, {b['trace']['ids']:,} distinct "
        f"per batch in all; layout: L2 {b['layout']['l2_rows']:,} rows, L4 {b['layout']['l4_rows']:,} rows, "
        f"blowup {b['layout']['blowup']}, pack {b['layout']['pack_s']} s",
    ]
    for mode, r in res["runs"].items():
        if "failed" in r:
            lines.append(f"{mode:<7} failed ({r['failed']}, oom_killed={r['oom_killed']})")
            continue
        lines.append(
            f"{mode:<7} {r['rows_per_s']:>10,} rows/s {r['lookups_per_s']:>11,} lookups/s  "
            f"{r['disk_bytes'] / 2**20:>9.1f} MiB read  {r['bytes_read_per_row_byte']:>6} B read/B served  "
            f"{r['seconds']:>7} s (waiting {r['read_wait_s']} s)  loss {r['loss_first_10']} -> {r['loss_last_10']}  "
            f"peak RSS {r['peak_rss_bytes'] / 2**20:.0f} MiB"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()

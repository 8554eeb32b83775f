"""``featdb partition``: DGL's partitioner on the stored graph, one featdb store per partition.

DGL's ``partition_graph(..., return_mapping=True)`` relabels the nodes so that partition ``i``
owns a contiguous range of (shuffled) ids; it writes the partition graphs, the partition book and
``node_feat.dgl`` with the labels and split masks — small, DGL's own files. The feature tables are
left out of ``node_feat.dgl``: each partition gets a featdb store holding, for every node table,
that partition's rows in DGL's local order (local row ``r`` = shuffled id ``lo + r``), written in
chunks through the table writer within the memory budget, gathered from the source with
featdb's batched reads. A manifest maps each KVStore key to the stores (:mod:`.manifest`).

DGL's partitioner itself needs the whole graph in memory (it has no out-of-core path); that part
is charged to the budget, and the command refuses at start when it cannot fit. With
``stock_copy`` the features are also written the way stock DGL wants them (``node_feat_stock.dgl``
and a second partition config), so stock and featdb servers can be compared on the same partitions.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import AlreadyExistsError, ConfigError, InvalidInputError
from ..graph import graph_info, load_graph
from ..ingest.features import chunk_rows
from ..memory import DGL_RUNTIME_BYTES, MemoryBudget
from ..progress import Progress
from ..store import Store, create
from ..store import open as open_store
from .dglhooks import check_dgl
from .manifest import NTYPE, FeatureKey, Manifest, kv_name, write_manifest

METHODS = ("metis", "random")
GRAPH_COPIES = 8  # DGL's partitioner holds the graph ~8 times over (bidirected copy, COO, METIS input, splits)


def node_tables(store: Store, num_nodes: int, tables: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """The tables to partition: those named, or every ``node/...`` table with one row per node."""
    docs = {d["key"]: d for d in store.tables()}
    if tables:
        missing = [t for t in tables if t not in docs]
        if missing:
            raise InvalidInputError(f"no table {', '.join(missing)} in {store.root}; tables: {', '.join(sorted(docs))}")
        chosen = [docs[t] for t in tables]
    else:
        chosen = [d for k, d in sorted(docs.items()) if k.startswith("node/")]
    short = [d for d in chosen if int(d["rows"]) != num_nodes]
    if short:
        raise InvalidInputError(
            f"table {short[0]['key']} has {short[0]['rows']} rows but the graph has {num_nodes} nodes: "
            "only per-node tables can be partitioned"
        )
    names = [d["key"].rsplit("/", 1)[1] for d in chosen]
    if len(set(names)) != len(names):
        raise InvalidInputError(f"tables {[d['key'] for d in chosen]} share a name; pick them with --table")
    return chosen


def partition(
    source: str | Path,
    out: str | Path,
    parts: int,
    method: str = "metis",
    tables: tuple[str, ...] = (),
    memory_budget: int = 1 << 30,
    stock_copy: bool = False,
    progress: Progress = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Partition the store at ``source`` into ``parts`` DGL partitions under ``out``; returns a summary."""
    check_dgl()
    if method not in METHODS:
        raise ConfigError(f"method {method!r}: one of {', '.join(METHODS)}")
    if parts < 1:
        raise ConfigError(f"--parts must be at least 1, got {parts}")
    dest = Path(out)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise AlreadyExistsError(f"{dest} exists and is not empty; partition into a new folder")
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with open_store(source) as src:
            summary = _partition(src, tmp, parts, method, tables, memory_budget, stock_copy, progress, log)
        if dest.exists():
            dest.rmdir()
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    summary["manifest"] = str(dest / "featdb-manifest.json")
    for k in ("part_config", "stock_part_config"):
        summary[k] = str(dest / summary[k]) if summary[k] else None
    return summary


def _partition(
    src: Store,
    out: Path,
    parts: int,
    method: str,
    tables: tuple[str, ...],
    budget_bytes: int,
    stock_copy: bool,
    progress: Progress,
    log: Callable[[str], None] | None,
) -> dict[str, Any]:
    doc = graph_info(src)
    n, m = int(doc["num_nodes"]), int(doc["num_edges"])
    chosen = node_tables(src, n, tables)
    if parts > n:
        raise ConfigError(f"--parts {parts}: the graph has only {n} nodes")
    budget = MemoryBudget(budget_bytes, "featdb partition")
    budget.charge("runtime (torch and DGL)", DGL_RUNTIME_BYTES)
    budget.charge(f"graph in DGL's partitioner ({GRAPH_COPIES} copies)", GRAPH_COPIES * 8 * (n + 1 + m) + 8 * n)
    budget.charge("node id map", 8 * n)
    if stock_copy:
        largest = max((int(d["rows"]) * int(d["dim"]) * np.dtype(d["dtype"]).itemsize for d in chosen), default=0)
        budget.charge("one partition's features for node_feat_stock.dgl (stock copy)", 2 * largest // parts + 1)
    row_bytes = max((int(d["dim"]) * np.dtype(d["dtype"]).itemsize for d in chosen), default=1)
    per = chunk_rows(row_bytes, max(1 << 20, budget.left() // 2))
    budget.charge("row chunks in flight", 3 * per * row_bytes)
    budget.check()
    out.mkdir(parents=True)
    graph_name = "graph"
    orig = _run_partitioner(src, out, graph_name, parts, method, log)
    cfg = json.loads((out / f"{graph_name}.json").read_text())
    ranges = tuple((int(lo), int(hi)) for lo, hi in cfg["node_map"][NTYPE])
    orig.tofile(out / "orig_ids.i64")
    stores = []
    for p, (lo, hi) in enumerate(ranges):
        rel = f"part{p}/featdb"
        with create(out / rel) as dst:
            for d in chosen:
                _copy_rows(src, dst, d, orig[lo:hi], per, progress)
        stores.append(rel)
    keys = tuple(
        FeatureKey(
            kv_name(NTYPE, d["key"].rsplit("/", 1)[1]), d["key"].rsplit("/", 1)[1], d["key"], d["dtype"], int(d["dim"])
        )
        for d in chosen
    )
    stock = _stock_copy(out, graph_name, cfg, keys, stores) if stock_copy else None
    import dgl

    manifest = Manifest(
        out,
        graph_name,
        dgl.__version__,
        method,
        n,
        int(doc.get("num_classes", 0)),
        f"{graph_name}.json",
        stock,
        ranges,
        tuple(stores),
        keys,
        "orig_ids.i64",
        str(src.root.resolve()),
    )
    write_manifest(manifest)
    return {
        "parts": parts,
        "method": method,
        "num_nodes": n,
        "num_edges": m,
        "part_nodes": [hi - lo for lo, hi in ranges],
        "tables": [k.table for k in keys],
        "kv_keys": [k.kv for k in keys],
        "part_config": f"{graph_name}.json",
        "stock_part_config": stock,
        "memory": budget.as_dict(),
    }


def _run_partitioner(
    src: Store, out: Path, graph_name: str, parts: int, method: str, log: Callable[[str], None] | None
) -> NDArray[Any]:
    """DGL's partition_graph with labels and split masks as node data; returns shuffled -> source id."""
    import dgl
    import torch

    from ..sampling import dgl_graph

    graph = load_graph(src)
    g = dgl_graph(graph.indptr.astype(np.int64), graph.indices.astype(np.int64))
    g.ndata["label"] = torch.from_numpy(np.asarray(graph.labels, dtype=np.int64))
    for split, mask in (("train", "train_mask"), ("valid", "val_mask"), ("test", "test_mask")):
        flags = np.zeros(graph.num_nodes, dtype=bool)
        flags[np.asarray(graph.split(split), dtype=np.int64)] = True
        g.ndata[mask] = torch.from_numpy(flags)
    del graph
    sink = _LogSink(log)
    # DGL prints its progress (keep stdout for --json) and leaves /proc/self/status open each time
    with contextlib.redirect_stdout(sink), warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        orig, _ = dgl.distributed.partition_graph(
            g, graph_name, parts, str(out), num_hops=1, part_method=method, return_mapping=True
        )
        gc.collect()
    return np.ascontiguousarray(orig.numpy(), dtype=np.int64)


def _copy_rows(src: Store, dst: Store, doc: dict[str, Any], ids: NDArray[Any], per: int, progress: Progress) -> None:
    """Partition rows in local order: batched reads from the source, chunk by chunk into a new table."""
    from ..tables import Schema

    key = doc["key"]
    with dst.table_writer(key, Schema(doc["dtype"], len(ids), int(doc["dim"]))) as w:
        for i in range(0, len(ids), per):
            w.write(src.read(key, ids[i : i + per]))
            if progress:
                progress(min(per, len(ids) - i))


def _stock_copy(
    out: Path, graph_name: str, cfg: dict[str, Any], keys: tuple[FeatureKey, ...], stores: list[str]
) -> str:
    """node_feat_stock.dgl per partition (DGL's files plus the features) and a config naming them."""
    import dgl
    import torch

    for p, rel in enumerate(stores):
        node_feats = cfg[f"part-{p}"]["node_feats"]
        tensors = dgl.data.utils.load_tensors(str(out / node_feats))
        with open_store(out / rel) as st:
            for k in keys:
                tensors[f"{NTYPE}/{k.ndata}"] = torch.from_numpy(st.read_all(k.table).reshape(-1, k.dim))
        stock = str(Path(node_feats).with_name("node_feat_stock.dgl"))
        dgl.data.utils.save_tensors(str(out / stock), tensors)
        cfg[f"part-{p}"]["node_feats"] = stock
        del tensors
    name = f"{graph_name}-stock.json"
    (out / name).write_text(json.dumps(cfg, indent=2))
    return name


class _LogSink:
    """A text stream that hands whole lines to ``log`` (or drops them)."""

    def __init__(self, log: Callable[[str], None] | None) -> None:
        self.log = log
        self.buf = ""

    def write(self, text: str) -> int:
        self.buf += text
        *lines, self.buf = self.buf.split("\n")
        for line in lines:
            if self.log and line.strip():
                self.log(line)
        return len(text)

    def flush(self) -> None:
        return None

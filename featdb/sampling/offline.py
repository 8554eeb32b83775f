"""Offline neighbour sampling: every mini-batch of E epochs, sampled before training.

DGL does the sampling (imported lazily: featdb itself needs neither torch nor
DGL). Each epoch reshuffles the split with its own seed and samples afresh.
After the training epochs, the evaluation splits (``eval_splits``, by default
valid and test) are sampled once each, in split order, into *parts* of the same
set, so the layout planner packs the batches evaluation reads beside the ones
training reads.

Memory: the graph is memory-mapped (its pages are page cache, shared by every
sampling process, which are forked after mapping it), and batches stream to
segment files one at a time, so each process holds one batch, a scratch array
and a per-node counter. :func:`sample` charges these to its memory budget
before it starts and refuses when they cannot fit.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..catalog import Txn
from ..errors import AlreadyExistsError, InvalidInputError, NotFoundError
from ..graph.model import GRAPH_TABLES, SPLITS
from ..io import ChecksumWriter, hold_dir, write_atomic
from ..locks import writer_lock
from ..memory import DEFAULT_BUDGET, DGL_RUNTIME_BYTES, MemoryBudget, children_peak_rss
from ..names import NAME_RE, child
from ..store import Store
from ..tables import id_dtype
from .config import EVAL_SPLITS, SampleConfig, parse_fanouts
from .format import HEAD_PARTS, INDEX_COLUMNS, encode_parts
from .mfg import Batch
from .sampler import blocks_to_batch, dgl_graph, epoch_batches, eval_batches, relation_offsets, sample_batch


def _batch_seed(cfg: SampleConfig, epoch: int, i: int) -> int:
    return int(np.random.default_rng([cfg.seed, epoch, i]).integers(2**31 - 1))


def iter_sampled(graph: Any, train_ids: NDArray[Any], cfg: SampleConfig) -> Iterator[tuple[int, Batch]]:
    """(epoch, batch) for every batch of every epoch, in order, in this process.

    Every batch is sampled by one single-threaded DGL call seeded from (seed,
    epoch, batch index): DGL's worker threads keep their own RNG state, so
    threads would make samples irreproducible. :func:`sample` gets its
    parallelism from processes that each write their own segment instead;
    the samples do not depend on how many.
    """
    with _in_process(graph, cfg):
        for epoch in range(cfg.epochs):
            for i, seeds in enumerate(epoch_batches(train_ids, cfg.batch_size, cfg.seed, epoch)):
                yield epoch, _sample_one(epoch, i, seeds)


@contextlib.contextmanager
def _in_process(graph: Any, cfg: SampleConfig) -> Iterator[None]:
    """Sample in this process; its torch thread count is restored afterwards."""
    import torch

    threads = torch.get_num_threads()
    _worker_init(graph, cfg)
    try:
        yield
    finally:
        _WORKER.clear()
        torch.set_num_threads(threads)


_WORKER: dict[str, Any] = {}


def _worker_init(graph: Any, cfg: SampleConfig, done: Any = None, seeds: dict[str, NDArray[Any]] | None = None) -> None:
    import torch

    torch.set_num_threads(1)
    dtype = id_dtype(graph.num_nodes())
    _WORKER.update(
        graph=graph,
        cfg=cfg,
        scratch=np.full(graph.num_nodes(), -1, dtype=dtype),
        done=done,
        seeds=seeds or {},
        offsets=relation_offsets(graph) if cfg.per_relation else None,
    )


def _sample_one(epoch: int, i: int, seeds: NDArray[Any]) -> Batch:
    import dgl

    cfg = _WORKER["cfg"]
    dgl.seed(_batch_seed(cfg, epoch, i))
    return sample_batch(_WORKER["graph"], seeds, cfg.fanouts, _WORKER["scratch"], _WORKER["offsets"])


@dataclass(frozen=True, slots=True)
class _Piece:
    """A contiguous run of one epoch's (or evaluation part's) batches, written to its own segment file.

    ``epoch`` seeds the sampling: training epochs are 0..E-1, evaluation part k is E+k.
    """

    epoch: int
    lo: int
    hi: int
    segment: str
    part: str = "train"

    def batches(self, cfg: SampleConfig, seeds: NDArray[Any]) -> list[NDArray[Any]]:
        if self.part == cfg.split:
            return epoch_batches(seeds, cfg.batch_size, cfg.seed, self.epoch)
        return eval_batches(seeds, cfg.batch_size)


@dataclass(slots=True)
class _Written:
    piece: _Piece
    records: list[tuple[int, int, int, int, int]]  # (offset, length, crc32, input count, head crc32)
    counts: NDArray[Any]  # per node, how many of the piece's batches read it
    size: int
    crcs: list[int]


def _runs(n: int, workers: int) -> list[tuple[int, int]]:
    k = max(1, min(workers, n))
    bounds = np.linspace(0, n, k + 1).round().astype(int).tolist()
    return list(itertools.pairwise(bounds))


def _pieces(
    cfg: SampleConfig, batches_per_epoch: int, workers: int, eval_parts: dict[str, int] | None = None
) -> list[_Piece]:
    """Each epoch (then each evaluation part) split into ``workers`` contiguous runs of batches
    (fewer if it is short)."""
    runs = _runs(batches_per_epoch, workers)
    out = [
        _Piece(e, lo, hi, f"epoch-{e:04d}.seg" if len(runs) == 1 else f"epoch-{e:04d}-{p:02d}.seg", cfg.split)
        for e in range(cfg.epochs)
        for p, (lo, hi) in enumerate(runs)
    ]
    for k, (split, n) in enumerate((eval_parts or {}).items()):
        out += [
            _Piece(cfg.epochs + k, lo, hi, f"{split}-{p:02d}.seg", split)
            for p, (lo, hi) in enumerate(_runs(n, workers))
        ]
    return out


def _write_piece(
    piece: _Piece, tmp: Path, ids_dt: np.dtype[Any], progress: Callable[[int], None] | None = None
) -> _Written:
    import zlib

    from .kernels import count

    batches = piece.batches(_WORKER["cfg"], _WORKER["seeds"][piece.part])
    counts = np.zeros(_WORKER["graph"].num_nodes(), dtype=np.int32)
    records = []
    with ChecksumWriter(tmp / piece.segment) as writer:
        for i in range(piece.lo, piece.hi):
            batch = _sample_one(piece.epoch, i, batches[i])
            offset, crc, head_crc = writer.size, 0, 0
            for k, part in enumerate(encode_parts(batch, ids_dt)):
                writer.write(part)
                crc = zlib.crc32(part.data, crc)
                if k == HEAD_PARTS - 1:  # header, seeds, input ids: what the planner's trace reads
                    head_crc = crc
            records.append((offset, writer.size - offset, crc, len(batch.input_ids), head_crc))
            count(batch.input_ids, counts)
            if progress:
                progress(1)
            elif _WORKER["done"] is not None:
                with _WORKER["done"].get_lock():
                    _WORKER["done"].value += 1
        writer.commit()
    return _Written(piece, records, counts, writer.size, writer.crcs)


def _write_pieces(
    graph: Any,
    seeds: dict[str, NDArray[Any]],
    cfg: SampleConfig,
    pieces: list[_Piece],
    tmp: Path,
    ids_dt: np.dtype[Any],
    progress: Callable[[int], None] | None,
    workers: int,
) -> Iterator[_Written]:
    """Every piece's segment, written in this process or by ``workers`` forked ones, in piece order."""
    if workers <= 1:
        with _in_process(graph, cfg):
            _WORKER["seeds"] = seeds
            for piece in pieces:
                yield _write_piece(piece, tmp, ids_dt, progress)
        return
    import functools
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    done = ctx.Value("q", 0)
    job = functools.partial(_write_piece, tmp=tmp, ids_dt=ids_dt)
    # forked workers inherit the mapped graph and the seed arrays; nothing large is pickled
    with ctx.Pool(workers, initializer=_worker_init, initargs=(graph, cfg, done, seeds)) as pool:
        results = pool.imap(job, pieces)  # streamed in order: finished pieces are not all held at once
        reported = 0
        while True:
            try:
                written = results.next(timeout=0.2)
            except mp.TimeoutError:
                written = None
            except StopIteration:
                return
            if progress and done.value > reported:
                progress(done.value - reported)
                reported = done.value
            if written is not None:
                yield written


def default_workers() -> int:
    """One sampling process per CPU this process may run on."""
    return len(os.sched_getaffinity(0))


def sample(
    store: Store,
    cfg: SampleConfig,
    progress: Callable[[int], None] | None = None,
    workers: int = 1,
    memory_budget: int = DEFAULT_BUDGET,
) -> dict[str, Any]:
    """Sample ``cfg.epochs`` epochs (and ``cfg.eval_splits``) into a new sample set; returns its
    catalog document, with the memory account (``memory``) of this run added.

    ``workers`` forked processes each sample a contiguous run of every
    epoch's batches into a segment file of their own, so no batch crosses a
    process boundary. The samples do not depend on ``workers``; only the
    number of segment files does. What every process holds is charged to
    ``memory_budget`` first; :class:`~featdb.errors.BudgetExceededError` names
    the parts when they do not fit.
    """
    store.require_writable()
    cfg.validate()
    with writer_lock(store.root, "sampleset", cfg.name):  # a second writer of this name fails here
        return _sample_locked(store, cfg, progress, workers, memory_budget)


def _sample_locked(
    store: Store, cfg: SampleConfig, progress: Callable[[int], None] | None, workers: int, memory_budget: int
) -> dict[str, Any]:
    from ..graph import load_graph

    if store.catalog.get(f"sampleset/{cfg.name}") is not None:
        raise AlreadyExistsError(f"sample set {cfg.name!r} already exists (remove it with featdb gc --sample-set)")
    g = load_graph(store, mmap=True)
    for key in {**GRAPH_TABLES, **g.info.get("tables", {})}.values():  # mapped reads are not checked: check once
        store.check_table(key)
    split_ids = {"train": g.train, "valid": g.valid, "test": g.test}
    if len(split_ids[cfg.split]) == 0:
        raise NotFoundError(f"split {cfg.split!r} of the stored graph is empty")
    seeds = {cfg.split: split_ids[cfg.split]} | {s: split_ids[s] for s in cfg.evals if len(split_ids[s])}
    workers = max(1, workers)
    budget = charge_sampling(MemoryBudget(memory_budget, "sample"), g, cfg, workers)
    ids_dt = id_dtype(g.num_nodes)
    rel = f"samples/{child(store.root / 'samples', cfg.name, 'sample set name').name}"
    tmp = store.root / (rel + f".partial-{time.time_ns():x}")
    tmp.mkdir(parents=True)
    lock = hold_dir(tmp)  # gc leaves a sample set that is still being written alone
    try:
        doc = _write(store, tmp, rel, g, seeds, cfg, ids_dt, progress, workers)
        _publish(store, tmp, rel, doc)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        os.close(lock)
    return doc | {"memory": budget.as_dict() | {"workers_peak_rss_bytes": children_peak_rss()}}


def charge_sampling(budget: MemoryBudget, g: Any, cfg: SampleConfig, workers: int) -> MemoryBudget:
    """What sampling holds: the runtime, per process a scratch array, a counter and one batch in
    the making; the parent's counter and index. The graph is mapped (shared, evictable)."""
    n = g.num_nodes
    budget.charge("runtime (torch, DGL)", DGL_RUNTIME_BYTES)
    if cfg.per_relation and g.etypes is None:
        raise InvalidInputError("sampling per relation (--per-relation) needs a graph with edge types")
    relations = len(g.edge_types or ()) if cfg.per_relation else 1
    rows = cfg.batch_size
    for f in reversed(cfg.fanouts):
        rows += rows * (f * relations if f > 0 else 64)  # -1 (all neighbours): a generous average degree
    rows = min(rows, n + cfg.batch_size * relations * sum(abs(f) for f in cfg.fanouts))
    per_process = n * 4 * 2 + rows * 8 * 8  # scratch + counter; one batch's ids, edges and copies
    budget.charge(f"sampling processes ({workers} x {per_process >> 20} MiB)", workers * per_process)
    budget.charge("counts and index", n * 4 + (64 << 20))
    if cfg.per_relation:
        edges = len(g.indices)
        budget.charge("edge ids numbered by relation", edges * (8 + g.etypes.dtype.itemsize))
    budget.check()
    mapped = g.indptr.nbytes + g.indices.nbytes + (0 if g.etypes is None else g.etypes.nbytes)
    budget.charge_mapped("graph (memory-mapped, shared by all processes)", mapped)
    return budget


def _write(
    store: Store,
    tmp: Path,
    rel: str,
    g: Any,
    seeds: dict[str, NDArray[Any]],
    cfg: SampleConfig,
    ids_dt: np.dtype[Any],
    progress: Callable[[int], None] | None,
    workers: int,
) -> dict[str, Any]:
    graph = dgl_graph(g.indptr, g.indices, g.etypes, cfg.per_relation)
    counts = np.zeros(g.num_nodes, dtype=np.int32)
    per_epoch = -(-len(seeds[cfg.split]) // cfg.batch_size)
    eval_parts = {s: -(-len(ids) // cfg.batch_size) for s, ids in seeds.items() if s != cfg.split}
    pieces = _pieces(cfg, per_epoch, workers, eval_parts)
    index: list[tuple[int, ...]] = []
    file_recs: dict[str, dict[str, Any]] = {}
    started = time.perf_counter()
    for seg, w in enumerate(_write_pieces(graph, seeds, cfg, pieces, tmp, ids_dt, progress, workers)):
        index += [(seg, *rec) for rec in w.records]
        counts += w.counts
        file_recs[f"{rel}/{w.piece.segment}"] = {"size": w.size, "crcs": w.crcs, "kind": "samples"}
    size, crcs = write_atomic(tmp / "counts.i32", counts.tobytes())
    idx = np.asarray(index, dtype=np.int64)
    isize, icrcs = write_atomic(tmp / "index.i64", idx.tobytes())
    file_recs[f"{rel}/counts.i32"] = {"size": size, "crcs": crcs, "kind": "samples"}
    file_recs[f"{rel}/index.i64"] = {"size": isize, "crcs": icrcs, "kind": "samples"}
    nbatches = len(index)
    total = int(idx[:, 2].sum())
    parts, lo = {cfg.split: [0, per_epoch * cfg.epochs]}, per_epoch * cfg.epochs
    for s, n in eval_parts.items():
        parts[s], lo = [lo, lo + n], lo + n
    return {
        "name": cfg.name,
        **{k: v for k, v in asdict(cfg).items() if k not in ("name", "eval_splits")},
        "fanouts": list(cfg.fanouts),
        "batches": nbatches,
        "parts": parts,
        "batches_per_epoch": per_epoch,
        "num_nodes": g.num_nodes,
        "id_dtype": ids_dt.str,
        "bytes": total,
        "bytes_per_batch": total // max(1, nbatches),
        "input_rows": int(idx[:, 4].sum()),
        "segments": [p.segment for p in pieces],
        "path": rel,
        "files": file_recs,
        "sample_s": round(time.perf_counter() - started, 3),
        "workers": workers,
        "index_columns": INDEX_COLUMNS,
        "created": time.time(),
        "uid": uuid.uuid4().hex,  # this set's content id (a layout or reader checks it is this very set)
        "edge_types": g.edge_types,  # typed graphs: every batch carries each sampled edge's relation
        "graph_uid": g.info.get("uid"),  # the graph it was sampled from: a replaced graph makes the set stale
    }


def _publish(store: Store, tmp: Any, rel: str, doc: dict[str, Any]) -> None:
    final = store.root / rel
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():  # the writer lock is held and the catalog lacks the name: a crashed writer's orphan
        shutil.rmtree(final)
    tmp.rename(final)

    def txn(t: Txn) -> None:
        if t.get(f"sampleset/{doc['name']}") is not None:
            raise AlreadyExistsError(f"sample set {doc['name']!r} already exists")
        for path, rec in doc["files"].items():
            t.put(f"file/{path}", rec)
        t.put(
            f"sampleset/{doc['name']}", {k: v for k, v in doc.items() if k != "files"} | {"files": sorted(doc["files"])}
        )

    try:
        store.catalog.write(txn)
    except BaseException:
        shutil.rmtree(final, ignore_errors=True)
        raise


__all__ = [  # the sampler's names, re-exported here where callers have always found them
    "EVAL_SPLITS",
    "NAME_RE",
    "SPLITS",
    "SampleConfig",
    "blocks_to_batch",
    "charge_sampling",
    "default_workers",
    "dgl_graph",
    "epoch_batches",
    "eval_batches",
    "iter_sampled",
    "parse_fanouts",
    "sample",
    "sample_batch",
]

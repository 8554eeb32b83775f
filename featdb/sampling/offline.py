"""Offline neighbour sampling: every mini-batch of E epochs, sampled before training.

DGL does the sampling (imported lazily: featdb itself needs neither torch nor
DGL). Each epoch reshuffles the split with its own seed and samples afresh.
Batches stream to segment files one at a time, so memory stays bounded by one
epoch's worth of nothing but the graph itself and one batch.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..catalog import Txn
from ..errors import AlreadyExistsError, InvalidInputError, NotFoundError
from ..io import ChecksumWriter, hold_dir, write_atomic
from ..store import Store
from .format import encode
from .mfg import Batch, Layer

NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
SPLITS = ("train", "valid", "test")


@dataclass(frozen=True, slots=True)
class SampleConfig:
    name: str
    fanouts: tuple[int, ...]
    batch_size: int
    epochs: int
    seed: int = 0
    split: str = "train"

    def validate(self) -> None:
        if not NAME_RE.match(self.name):
            raise InvalidInputError(f"sample set name {self.name!r}: use 1-64 of A-Z a-z 0-9 _ . -")
        if not self.fanouts or any(f == 0 or f < -1 for f in self.fanouts):
            raise InvalidInputError(f"fanouts {self.fanouts}: positive integers (or -1 for all neighbours)")
        if self.batch_size < 1:
            raise InvalidInputError(f"batch size must be at least 1, got {self.batch_size}")
        if self.epochs < 1:
            raise InvalidInputError(f"epochs must be at least 1, got {self.epochs}")
        if self.split not in SPLITS:
            raise InvalidInputError(f"split {self.split!r}: one of {', '.join(SPLITS)}")


def parse_fanouts(text: str) -> tuple[int, ...]:
    try:
        fanouts = tuple(int(x) for x in text.split(","))
    except ValueError as exc:
        raise InvalidInputError(f"fanouts {text!r}: comma-separated integers such as 10,10,10") from exc
    if not fanouts:
        raise InvalidInputError(f"fanouts {text!r}: comma-separated integers such as 10,10,10")
    return fanouts


def epoch_batches(seeds: np.ndarray, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """The epoch's shuffled seed batches (the last one may be short)."""
    rng = np.random.default_rng([seed, epoch])
    perm = seeds[rng.permutation(len(seeds))]
    return [perm[i : i + batch_size] for i in range(0, len(perm), batch_size)]


def dgl_graph(indptr: np.ndarray, indices: np.ndarray) -> Any:
    import dgl
    import torch

    eids = torch.arange(len(indices), dtype=torch.int64)
    return dgl.graph(("csc", (torch.from_numpy(indptr), torch.from_numpy(indices), eids)),
                     num_nodes=len(indptr) - 1)


def blocks_to_batch(blocks: list[Any]) -> Batch:
    """Plain numpy form of DGL blocks (input side first)."""
    import dgl

    layers = []
    for b in blocks:
        src, dst = b.edges(order="eid")
        layers.append(Layer(src.numpy().astype(np.int64), dst.numpy().astype(np.int64),
                            np.arange(b.num_dst_nodes(), dtype=np.int64),
                            int(b.num_src_nodes()), int(b.num_dst_nodes())))
    return Batch(blocks[-1].dstdata[dgl.NID].numpy().astype(np.int64),
                 blocks[0].srcdata[dgl.NID].numpy().astype(np.int64), tuple(layers))


def sample_batch(graph: Any, seeds: np.ndarray, fanouts: tuple[int, ...], scratch: np.ndarray) -> Batch:
    """One batch: DGL samples each layer's in-neighbours; numpy relabels them into an MFG.

    Layers are sampled from the seeds outward (``fanouts[-1]`` for the seeds'
    layer, as DGL's NeighborSampler does). A layer's sources are its
    destinations first, then the newly reached nodes.
    ``scratch`` is an int64 array of ``num_nodes`` entries, all -1, left as found.
    """
    import dgl
    import torch

    dst = seeds.astype(np.int64)
    layers: list[Layer] = []
    for fanout in reversed(fanouts):
        frontier = dgl.sampling.sample_neighbors(graph, torch.from_numpy(dst), fanout)
        u, v = (x.numpy() for x in frontier.edges(order="eid"))
        scratch[dst] = np.arange(len(dst))
        fresh = u[scratch[u] < 0]
        # deduplicate without sorting: mark each fresh node with a position; one position per node wins
        marks = len(dst) + np.arange(len(fresh))
        scratch[fresh] = marks
        uniq = fresh[scratch[fresh] == marks]
        scratch[uniq] = len(dst) + np.arange(len(uniq))
        src_nodes = np.concatenate([dst, uniq])
        layers.append(Layer(scratch[u], scratch[v], np.arange(len(dst), dtype=np.int64),
                            len(src_nodes), len(dst)))
        scratch[src_nodes] = -1
        dst = src_nodes
    return Batch(seeds.astype(np.int64), dst, tuple(reversed(layers)))


def _batch_seed(cfg: SampleConfig, epoch: int, i: int) -> int:
    return int(np.random.default_rng([cfg.seed, epoch, i]).integers(2**31 - 1))


def iter_sampled(graph: Any, train_ids: np.ndarray, cfg: SampleConfig,
                 workers: int = 1) -> Iterator[tuple[int, Batch]]:
    """(epoch, batch) for every batch of every epoch, in order; reproducible for ``cfg.seed``.

    Every batch is sampled by one single-threaded DGL call seeded from (seed,
    epoch, batch index) — DGL's worker threads keep their own RNG state, so
    threads would make samples irreproducible. Parallelism comes from
    ``workers`` forked processes instead; the result does not depend on it.
    """
    tasks = ((epoch, i, seeds) for epoch in range(cfg.epochs)
             for i, seeds in enumerate(epoch_batches(train_ids, cfg.batch_size, cfg.seed, epoch)))
    if workers <= 1:
        _worker_init(graph, cfg)
        yield from map(_worker_sample, tasks)
        return
    import multiprocessing as mp

    with mp.get_context("fork").Pool(workers, initializer=_worker_init, initargs=(graph, cfg)) as pool:
        yield from pool.imap(_worker_sample, tasks, chunksize=1)


_WORKER: dict[str, Any] = {}


def _worker_init(graph: Any, cfg: SampleConfig) -> None:
    import torch

    torch.set_num_threads(1)
    _WORKER.update(graph=graph, cfg=cfg, scratch=np.full(graph.num_nodes(), -1, dtype=np.int64))


def _worker_sample(task: tuple[int, int, np.ndarray]) -> tuple[int, Batch]:
    import dgl

    epoch, i, seeds = task
    cfg = _WORKER["cfg"]
    dgl.seed(_batch_seed(cfg, epoch, i))
    return epoch, sample_batch(_WORKER["graph"], seeds, cfg.fanouts, _WORKER["scratch"])


def sample(store: Store, cfg: SampleConfig, progress: Callable[[int], None] | None = None,
           workers: int = 1) -> dict[str, Any]:
    """Sample ``cfg.epochs`` epochs into a new sample set; returns its catalog document.

    ``workers`` sampling processes; the samples do not depend on it. (On 2
    cores, shipping batches between processes costs more than it saves.)
    """
    from ..graph import load_graph

    store.require_writable()
    cfg.validate()
    if store.catalog.get(f"sampleset/{cfg.name}") is not None:
        raise AlreadyExistsError(f"sample set {cfg.name!r} already exists (remove it with featdb gc --sample-set)")
    g = load_graph(store)
    seeds = {"train": g.train, "valid": g.valid, "test": g.test}[cfg.split]
    if len(seeds) == 0:
        raise NotFoundError(f"split {cfg.split!r} of the stored graph is empty")
    if len(cfg.fanouts) and g.num_nodes >= 2**31:
        id_dtype = np.dtype("<i8")
    else:
        id_dtype = np.dtype("<i4")
    rel = f"samples/{cfg.name}"
    tmp = store.root / (rel + f".partial-{time.time_ns():x}")
    tmp.mkdir(parents=True)
    lock = hold_dir(tmp)  # gc leaves a sample set that is still being written alone
    try:
        doc = _write(store, tmp, rel, g, seeds, cfg, id_dtype, progress, max(1, workers))
        _publish(store, tmp, rel, doc)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        os.close(lock)
    return doc


def _write(store: Store, tmp: Any, rel: str, g: Any, seeds: np.ndarray, cfg: SampleConfig,
           id_dtype: np.dtype, progress: Callable[[int], None] | None, workers: int) -> dict[str, Any]:

    graph = dgl_graph(g.indptr, g.indices)
    counts = np.zeros(g.num_nodes, dtype=np.int32)
    index: list[tuple[int, int, int, int, int]] = []
    files: dict[str, dict[str, Any]] = {}
    started = time.perf_counter()
    try:
        _stream_batches(graph, seeds, cfg, tmp, id_dtype, counts, index, files, progress, workers)
    except BaseException:
        for rec in files.values():
            rec["writer"].abort()
        raise
    size, crcs = write_atomic(tmp / "counts.i32", counts.tobytes())
    idx = np.asarray(index, dtype=np.int64)
    isize, icrcs = write_atomic(tmp / "index.i64", idx.tobytes())
    seg_names = sorted(files)
    file_recs = {f"{rel}/{n}": {"size": files[n]["writer"].size, "crcs": files[n]["writer"].crcs,
                                "kind": "samples"} for n in seg_names}
    file_recs[f"{rel}/counts.i32"] = {"size": size, "crcs": crcs, "kind": "samples"}
    file_recs[f"{rel}/index.i64"] = {"size": isize, "crcs": icrcs, "kind": "samples"}
    nbatches = len(index)
    total = int(idx[:, 2].sum())
    return {"name": cfg.name, **{k: v for k, v in asdict(cfg).items() if k != "name"},
            "fanouts": list(cfg.fanouts), "batches": nbatches,
            "batches_per_epoch": nbatches // cfg.epochs, "num_nodes": g.num_nodes,
            "id_dtype": id_dtype.str, "bytes": total, "bytes_per_batch": total // max(1, nbatches),
            "input_rows": int(idx[:, 4].sum()), "segments": seg_names, "path": rel,
            "files": file_recs, "sample_s": round(time.perf_counter() - started, 3),
            "created": time.time()}


def _stream_batches(graph: Any, seeds: np.ndarray, cfg: SampleConfig, tmp: Any, id_dtype: np.dtype,
                    counts: np.ndarray, index: list[tuple[int, int, int, int, int]],
                    files: dict[str, dict[str, Any]], progress: Callable[[int], None] | None,
                    workers: int) -> None:
    """Sample and append every batch to its epoch's segment file; one segment per epoch."""
    import zlib

    writer: ChecksumWriter | None = None
    for epoch, batch in iter_sampled(graph, seeds, cfg, workers):
        if writer is None or epoch == len(files):
            if writer is not None:
                writer.commit()
            writer = ChecksumWriter(tmp / f"epoch-{epoch:04d}.seg")
            files[f"epoch-{epoch:04d}.seg"] = {"writer": writer}
        raw = encode(batch, id_dtype)
        off = writer.write(raw)
        index.append((epoch, off, len(raw), zlib.crc32(raw), len(batch.input_ids)))
        counts[batch.input_ids] += 1
        if progress:
            progress(1)
    if writer is not None:
        writer.commit()


def _publish(store: Store, tmp: Any, rel: str, doc: dict[str, Any]) -> None:
    final = store.root / rel
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():
        shutil.rmtree(final)  # an orphan from a crash: never recorded in the catalog
    tmp.rename(final)

    def txn(t: Txn) -> None:
        if t.get(f"sampleset/{doc['name']}") is not None:
            raise AlreadyExistsError(f"sample set {doc['name']!r} already exists")
        for path, rec in doc["files"].items():
            t.put(f"file/{path}", rec)
        t.put(f"sampleset/{doc['name']}", {k: v for k, v in doc.items() if k != "files"} | {
            "files": sorted(doc["files"])})

    try:
        store.catalog.write(txn)
    except BaseException:
        shutil.rmtree(final, ignore_errors=True)
        raise

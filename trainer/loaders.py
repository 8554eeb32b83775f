"""Where a training batch comes from: featdb's tiered reader, or the baselines users run today.

Every loader yields ``(TorchBatch, x, y, release)`` tuples for an epoch and
reports per-stage busy and stall seconds; :meth:`eval_epoch` does the same for
the stored evaluation batches of a split, so every loader evaluates the same
samples. Labels are indexed per batch from a memory-mapped array: no loader
holds every label.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from numpy.typing import NDArray

import featdb
from featdb import Graph, MemoryBudget
from featdb.sampling import SampleSet
from featdb.serve import open_reader

from .mfg import TorchBatch, served, to_torch
from .pipeline import Pipeline, StageTime

Item = tuple[TorchBatch, torch.Tensor, torch.Tensor, Callable[[], None]]


@dataclass
class Epoch:
    """One epoch's stream of batches and the stage times it accumulates."""

    items: Iterator[Item]
    times: dict[str, StageTime]
    close: Callable[[], None]
    batches: int  # how many items the epoch yields


class Loader(Protocol):
    """What the training loop needs from a source of batches (featdb's reader or a baseline)."""

    name: str

    def epoch(self, epoch: int, rng: np.random.Generator) -> Epoch:
        """One training epoch's batches, in the order the loop trains them."""
        ...

    def eval_epoch(self, split: str) -> Epoch | None:
        """The sample set's stored evaluation batches of ``split`` (``None``: the set has none)."""
        ...

    def serve_stats(self) -> dict[str, Any]:
        """The reader's per-tier statistics (empty for the baselines)."""
        ...

    def close(self) -> None: ...


def _noop() -> None:
    return None


class FeatDBLoader:
    """Batches from an offline sample set; rows through featdb's tiered reader, pipelined."""

    name = "featdb"

    def __init__(
        self,
        store: featdb.Store,
        sample_set: str,
        device: torch.device,
        queue_depth: int,
        labels: NDArray[Any],
        memory: MemoryBudget | None = None,
    ) -> None:
        self.ss = SampleSet(store, sample_set)
        try:
            self.reader = open_reader(
                store,
                sample_set=sample_set,
                device=device.type if device.type == "cuda" else "cpu",
                queue_depth=queue_depth,
                memory_budget=memory,
            )
        except BaseException:
            self.ss.close()
            raise
        self.reader.attach(self.ss)
        self.device = device
        self.depth = self.reader.queue_depth  # what the memory budget allows, at most queue_depth
        self.labels = labels
        self.fanouts = self.ss.doc["fanouts"]
        try:  # load the compiled relabelling now rather than in the first epoch's first batch
            first = self.ss.batch(0)
            served(first, np.arange(first.layers[0].num_src))
        except BaseException:
            self.close()
            raise

    def epoch(self, epoch: int, rng: np.random.Generator) -> Epoch:
        return self._stream(self.reader.epoch_order(self.ss.epoch_batches(epoch % self.ss.epochs).tolist(), rng))

    def eval_epoch(self, split: str) -> Epoch | None:
        """The split's stored evaluation batches, served from the layout like training's
        (``None`` when the sample set has none)."""
        bids = self.ss.part_batches(split)
        return self._stream(bids.tolist()) if len(bids) else None

    def _stream(self, bids: list[int]) -> Epoch:
        stages: list[tuple[str, Callable[[Any], Any]]] = [
            ("sample", self._sample),
            ("read", self._read),
            ("assemble", self._assemble),
        ]
        pipe = Pipeline(bids, stages, self.depth, on_drop=_release_item)
        return Epoch(iter(pipe), pipe.times, pipe.close, len(bids))

    def _sample(self, b: int) -> tuple[int, Any]:
        return b, self.ss.batch(b)

    def _read(self, item: tuple[int, Any]) -> tuple[int, Any, Any]:
        b, batch = item
        return b, batch, self.reader.read_batch(b)

    def _assemble(self, item: tuple[int, Any, Any]) -> Item:
        _, batch, rows = item
        mfg = to_torch(served(batch, rows.order), self.device)
        x = torch.from_numpy(rows.rows)
        y = seed_labels(self.labels, batch.seeds)
        if self.device.type != "cpu":
            x = x.to(self.device)
            if rows.device_rows is not None:
                x = torch.cat([x, rows.device_rows])
            y = y.to(self.device)
            rows.release()  # the host buffer is free once copied
        return mfg, x, y, rows.release

    def serve_stats(self) -> dict[str, Any]:
        return self.reader.stats.as_dict()

    def close(self) -> None:
        self.reader.close()
        self.ss.close()


def seed_labels(labels: NDArray[Any], seeds: NDArray[Any]) -> torch.Tensor:
    """The labels of a batch's seeds, read from the (memory-mapped) label array."""
    return torch.from_numpy(np.asarray(labels[seeds], dtype=np.int64))


def stored_eval(
    ss: SampleSet,
    bids: Any,
    fetch: Callable[[NDArray[Any]], Any],
    labels: NDArray[Any],
    device: torch.device,
    depth: int,
) -> Epoch:
    """Stored evaluation batches with rows from ``fetch(input ids)``, prepared in a pipeline stage."""

    def prep(b: int) -> Item:
        batch = ss.batch(int(b))
        x = torch.as_tensor(fetch(batch.input_ids)).to(device)
        return to_torch(batch, device), x, seed_labels(labels, batch.seeds).to(device), _noop

    pipe = Pipeline(list(bids), [("prepare", prep)], depth)
    return Epoch(iter(pipe), pipe.times, pipe.close, len(bids))


def _release_item(item: Any) -> None:
    if isinstance(item, tuple):
        for part in item:
            if hasattr(part, "release"):
                part.release()
            elif callable(part) and getattr(part, "__name__", "") == "release":
                part()


class DGLLoader:
    """The baselines: DGL's DataLoader sampling in the loop, features in RAM or memory-mapped."""

    def __init__(
        self,
        store: featdb.Store,
        table: str,
        graph: Graph,
        fanouts: list[int],
        batch_size: int,
        device: torch.device,
        mode: str,
        sample_set: SampleSet | None = None,
        depth: int = 2,
        tables: Any = None,
    ) -> None:
        """``tables``: a typed graph's features (:class:`trainer.hetero.TypedTables`) in place of ``table``."""
        import dgl

        from featdb.sampling import dgl_graph

        self.name = mode
        per_relation = bool(sample_set is not None and sample_set.doc.get("per_relation"))
        self.g = dgl_graph(graph.indptr, graph.indices, graph.etypes, per_relation)  # blocks carry relations
        self.sampler = relation_sampler(fanouts, self.g) if per_relation else dgl.dataloading.NeighborSampler(fanouts)
        self.train = torch.from_numpy(np.asarray(graph.train, dtype=np.int64))
        self.batch_size = batch_size
        self.device = device
        self.labels = graph.labels
        self.ss, self.depth = sample_set, depth
        if tables is not None:
            self.feats: Any = tables
        elif mode == "in-memory":
            self.feats = torch.from_numpy(store.read_all(table))
        else:
            self.feats = store.map(table)

    def epoch(self, epoch: int, rng: np.random.Generator) -> Epoch:
        import dgl

        times = {"sample": StageTime(), "gather": StageTime()}
        seed = int(rng.integers(1 << 31))
        dgl.seed(seed)  # DGL's samplers
        # DGL's DataLoader shuffles with numpy's global generator: seeding it (a process-wide
        # side effect) is what makes a baseline epoch follow the training seed.
        np.random.seed(seed)
        loader = dgl.dataloading.DataLoader(
            self.g,
            self.train,
            self.sampler,
            batch_size=self.batch_size,
            shuffle=True,
            drop_last=False,
            num_workers=0,
        )
        return Epoch(self._iter(loader, times), times, _noop, len(loader))

    def _iter(self, loader: Any, times: dict[str, StageTime]) -> Iterator[Item]:
        from .mfg import from_dgl_blocks

        with warnings.catch_warnings():  # DGL advises enable_cpu_affinity() once per epoch; not for 2 cores
            warnings.filterwarnings("ignore", message=".*CPU affinity opt is not enabled")
            it = iter(loader)
        while True:
            t0 = time.perf_counter()
            try:
                input_nodes, _, blocks = next(it)
            except StopIteration:
                return
            t1 = time.perf_counter()
            batch = from_dgl_blocks(blocks)
            x = self.gather(input_nodes)
            y = seed_labels(self.labels, batch.seeds)
            mfg = to_torch(batch, self.device)
            t2 = time.perf_counter()
            times["sample"].busy += t1 - t0
            times["gather"].busy += t2 - t1
            times["sample"].items += 1
            times["gather"].items += 1
            yield mfg, x.to(self.device), y.to(self.device), _noop

    def eval_epoch(self, split: str) -> Epoch | None:
        """The sample set's stored evaluation batches of ``split``, rows from this baseline's features."""
        bids = self.ss.part_batches(split) if self.ss is not None else np.zeros(0, dtype=np.int64)
        if not len(bids) or self.ss is None:
            return None
        return stored_eval(
            self.ss, bids, lambda ids: self.gather(torch.from_numpy(ids)), self.labels, self.device, self.depth
        )

    def gather(self, ids: torch.Tensor) -> torch.Tensor:
        if isinstance(self.feats, torch.Tensor):
            return self.feats[ids]
        if hasattr(self.feats, "gather"):  # a typed graph's tables
            return self.feats.gather(ids.numpy())  # type: ignore[no-any-return]
        return torch.from_numpy(np.asarray(self.feats[ids.numpy()]))

    def serve_stats(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        if self.ss is not None:
            self.ss.close()


def relation_sampler(fanouts: list[int], g: Any) -> Any:
    """DGL's ``NeighborSampler`` with each layer's fanout taken per relation (``sample_etype_neighbors``
    on a graph numbered by relation, :func:`featdb.sampling.dgl_graph`), as DGL samples a
    heterogeneous graph and as ``featdb sample --per-relation`` does."""
    import dgl

    from featdb.sampling import relation_frontier, relation_offsets

    offsets = relation_offsets(g)

    class PerRelationSampler(dgl.dataloading.BlockSampler):  # type: ignore[misc]
        def sample_blocks(self, g: Any, seed_nodes: Any, exclude_eids: Any = None) -> Any:
            output_nodes = seed_nodes
            blocks: list[Any] = []
            for fanout in reversed(fanouts):
                frontier = relation_frontier(g, seed_nodes, offsets, fanout)
                block = dgl.to_block(frontier, seed_nodes)
                block.edata[dgl.EID] = frontier.edata[dgl.EID]
                seed_nodes = block.srcdata[dgl.NID]
                blocks.insert(0, block)
            return seed_nodes, output_nodes, blocks

    return PerRelationSampler()

"""Where a training batch comes from: featdb's tiered reader, or the baselines users run today.

Every loader yields ``(TorchBatch, x, y, release)`` tuples for an epoch and
reports per-stage busy and stall seconds.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

import featdb
from featdb.graph import Graph
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
        graph: Graph,
    ) -> None:
        self.ss = SampleSet(store, sample_set)
        self.reader = open_reader(
            store,
            sample_set=sample_set,
            device=device.type if device.type == "cuda" else "cpu",
            queue_depth=queue_depth,
        )
        self.reader.attach(self.ss)
        self.device = device
        self.depth = queue_depth
        self.labels = torch.from_numpy(graph.labels.astype(np.int64))
        self.fanouts = self.ss.doc["fanouts"]
        try:  # load the compiled relabelling now rather than in the first epoch's first batch
            first = self.ss.batch(0)
            served(first, np.arange(first.layers[0].num_src))
        except BaseException:
            self.close()
            raise

    def epoch(self, epoch: int, rng: np.random.Generator) -> Epoch:
        bids = self.reader.epoch_order(self.ss.epoch_batches(epoch % self.ss.epochs), rng)
        stages = [("sample", self._sample), ("read", self._read), ("assemble", self._assemble)]
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
        y = self.labels[torch.from_numpy(batch.seeds)]
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
    ) -> None:
        import dgl

        from featdb.sampling.offline import dgl_graph

        self.name = mode
        self.g = dgl_graph(graph.indptr, graph.indices)
        self.sampler = dgl.dataloading.NeighborSampler(fanouts)
        self.train = torch.from_numpy(graph.train)
        self.batch_size = batch_size
        self.device = device
        self.labels = torch.from_numpy(graph.labels.astype(np.int64))
        info = store.table_info(table)
        if mode == "in-memory":
            self.feats: Any = torch.from_numpy(store.read_all(table))
        else:
            from featdb.tables import HEADER_BYTES

            self.feats = np.memmap(
                store.root / info["file"],
                dtype=info["dtype"],
                mode="r",
                offset=HEADER_BYTES,
                shape=(info["rows"], info["dim"]),
            )

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
            y = self.labels[torch.from_numpy(batch.seeds)]
            mfg = to_torch(batch, self.device)
            t2 = time.perf_counter()
            times["sample"].busy += t1 - t0
            times["gather"].busy += t2 - t1
            times["sample"].items += 1
            times["gather"].items += 1
            yield mfg, x.to(self.device), y.to(self.device), _noop

    def gather(self, ids: torch.Tensor) -> torch.Tensor:
        if isinstance(self.feats, torch.Tensor):
            return self.feats[ids]
        return torch.from_numpy(np.asarray(self.feats[ids.numpy()]))

    def serve_stats(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        return None

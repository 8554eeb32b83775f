"""Heterogeneous graphs: a relational model (R-GCN) and the loaders that feed it typed input rows.

A typed graph (``featdb ingest-ogb`` of a heterogeneous folder) is stored
homogeneous with its node ids grouped by type (``node_types``: type ``t`` holds
``[lo_t, hi_t)``), each type's features in their own table
(``type_features``) and each edge's relation in ``graph/csc/etypes``; sampled
batches carry each edge's relation. The featdb loader serves every type's rows
from its own trace (``featdb trace split``, then ``featdb pack --trace`` per
type), all through one memory budget; the in-memory baseline samples with DGL
and gathers from the tables loaded whole. Both give the model the same input:
one row per layer-0 source, zero-padded to the widest type, in
``batch.input_ids`` order; the model projects each type's rows with its own
linear layer (types without features get one learned vector each).

:class:`RGCN` is Schlichtkrull et al.'s relational GCN with a mean per
relation: ``h_i' = W_0 h_i + sum_r W_r mean_{j in N_r(i)} h_j + b``, which is
DGL's ``HeteroGraphConv({r: GraphConv(norm="right")}, aggregate="sum")`` plus a
self loop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor, nn
from torch.nn import functional as F

import featdb
from featdb import MemoryBudget
from featdb.errors import ConfigError, StaleDataError
from featdb.sampling import SampleSet
from featdb.serve import open_reader

from .loaders import Epoch, Item, _release_item, seed_labels
from .mfg import TorchBatch, TorchLayer, served, to_torch
from .models import RELU_GAIN, _widths
from .ops import _check_depth
from .pipeline import Pipeline


@dataclass(frozen=True)
class NodeTypes:
    """A typed graph's node types in id order: names, id ranges, feature tables and widths (0: none)."""

    names: tuple[str, ...]
    bounds: tuple[int, ...]  # type t holds [bounds[t], bounds[t + 1])
    tables: tuple[str | None, ...]
    dims: tuple[int, ...]
    num_relations: int

    @classmethod
    def of(cls, store: featdb.Store) -> NodeTypes:
        """The store's typed graph; ``ConfigError`` if its graph has no node or edge types."""
        doc = featdb.graph_info(store)
        if not doc.get("node_types") or not doc.get("edge_types"):
            raise ConfigError(
                f"{store.root}: the graph has no node and edge types (ingest a heterogeneous folder with "
                "featdb ingest-ogb): a relational model needs them"
            )
        spans = sorted((int(lo), int(hi), t) for t, (lo, hi) in doc["node_types"].items())
        feats = doc.get("type_features", {})
        tables = tuple(feats[t]["table"] if t in feats else None for _, _, t in spans)
        return cls(
            names=tuple(t for _, _, t in spans),
            bounds=(*(lo for lo, _, _ in spans), spans[-1][1]),
            tables=tables,
            dims=tuple(store.schema(k).dim if k else 0 for k in tables),
            num_relations=len(doc["edge_types"]),
        )

    @property
    def width(self) -> int:
        """Columns of the padded input matrix: the widest type's."""
        return max(1, *self.dims)

    def of_ids(self, ids: NDArray[Any]) -> NDArray[Any]:
        """The type index of each node id."""
        return np.searchsorted(np.asarray(self.bounds[1:]), ids, side="right")


# --------------------------------------------------------------------------- the model
class RGCNConv(nn.Module):
    """One relational layer: a mean over each relation's sampled neighbours, a weight per relation."""

    def __init__(self, in_feats: int, out_feats: int, num_relations: int):
        super().__init__()
        self.num_relations = num_relations
        self.weight = nn.Parameter(torch.empty(num_relations, in_feats, out_feats))
        self.loop_weight = nn.Parameter(torch.empty(in_feats, out_feats))
        self.bias = nn.Parameter(torch.zeros(out_feats))
        for w in (*self.weight, self.loop_weight):
            nn.init.xavier_uniform_(w, gain=RELU_GAIN)

    def forward(self, layer: TorchLayer, h: Tensor) -> Tensor:
        if layer.etype is None:
            raise ValueError("a relational layer needs each edge's relation (a batch sampled from a typed graph)")
        r, d = self.num_relations, h.shape[1]
        slot = layer.dst * r + layer.etype  # (destination, relation) pairs
        agg = h.new_zeros(layer.num_dst * r, d).index_add_(0, slot, h.index_select(0, layer.src))
        count = torch.bincount(slot, minlength=layer.num_dst * r).clamp_(min=1).to(h.dtype)
        agg = (agg / count.unsqueeze(1)).view(layer.num_dst, r * d)
        own = h.index_select(0, layer.dst_in_src)
        out: Tensor = agg @ self.weight.view(r * d, -1) + own @ self.loop_weight + self.bias
        return out


class RGCN(nn.Module):
    """Per-type input projections, then :class:`RGCNConv` layers (ReLU + dropout between them)."""

    def __init__(self, types: NodeTypes, hidden: int, n_classes: int, n_layers: int, dropout: float):
        super().__init__()
        self.register_buffer("bounds", torch.tensor(types.bounds[1:], dtype=torch.int64), persistent=False)
        self.dims = types.dims
        self.project = nn.ModuleList(nn.Linear(max(1, dim), hidden) for dim in types.dims)
        self.embed = nn.Parameter(torch.zeros(len(types.dims), hidden))  # types without features
        nn.init.normal_(self.embed, std=0.1)
        widths = _widths(hidden, hidden, n_classes, n_layers)
        self.layers = nn.ModuleList(RGCNConv(a, b, types.num_relations) for a, b in widths)
        self.dropout = nn.Dropout(dropout)

    def forward(self, batch: TorchBatch, x: Tensor | TypedRows) -> Tensor:
        """Logits [num_seeds, n_classes] from the input rows: either one matrix [num_src of layer 0,
        widest type's width] (zero-padded, rows in any order), or :data:`TypedRows`, one matrix per
        type in type order (``None`` for types without features) with the batch's rows grouped so."""
        kind = torch.bucketize(batch.input_ids, self.bounds, right=True)
        if isinstance(x, (tuple, list)):
            counts = torch.bincount(kind, minlength=len(self.dims)).tolist()
            if not bool((kind[1:] >= kind[:-1]).all()) or any(
                r is not None and r.shape[0] != n for r, n in zip(x, counts, strict=True)
            ):
                raise ValueError("per-type rows need the batch's inputs grouped by type, in type order")
            _check_depth(batch, len(self.layers), kind)
            h = torch.cat([self._typed(t, r, n) for t, (r, n) in enumerate(zip(x, counts, strict=True))])
        else:
            _check_depth(batch, len(self.layers), x)
            h = x.new_empty(x.shape[0], self.embed.shape[1])
            for t in range(len(self.dims)):
                rows = (kind == t).nonzero().squeeze(1)
                h[rows] = self._typed(t, x.index_select(0, rows), len(rows))
        h = self.dropout(F.relu(h))
        last = len(self.layers) - 1
        for i, (conv, layer) in enumerate(zip(self.layers, batch.layers, strict=True)):
            h = cast(Tensor, conv(layer, h))
            if i != last:
                h = self.dropout(F.relu(h))
        return h

    def _typed(self, t: int, x: Tensor | None, n: int) -> Tensor:
        """Type ``t``'s ``n`` input rows projected (its learned vector, for a type without features)."""
        dim = self.dims[t]
        if not dim or x is None:
            return self.embed[t].expand(n, -1)
        return cast(Tensor, self.project[t](x[:, :dim]))


TypedRows = tuple[Tensor | None, ...]
"""Input rows one matrix per node type, in type order (``None``: the type has no features)."""


def as_float(x: Tensor | TypedRows) -> Tensor | TypedRows:
    """Input rows as float32 (what the models compute in), one matrix or one per type."""
    if isinstance(x, (tuple, list)):
        return tuple(None if r is None else r.float() for r in x)
    return x if x.dtype == torch.float32 else x.float()


def model_params(types: NodeTypes, hidden: int, n_classes: int, n_layers: int) -> int:
    """Parameters of :class:`RGCN` (for the memory budget, before it is built)."""
    widths = _widths(hidden, hidden, n_classes, n_layers)
    convs = sum((types.num_relations + 1) * a * b + b for a, b in widths)
    return sum((max(1, d) + 1) * hidden for d in types.dims) + len(types.dims) * hidden + convs


# --------------------------------------------------------------------------- feeding it
class TypedTables:
    """Every typed table in memory (or memory-mapped): rows of any ids, padded to the widest type."""

    def __init__(self, store: featdb.Store, types: NodeTypes, mmap: bool):
        self.types = types
        self.tables = [
            None if key is None else (store.map(key) if mmap else store.read_all(key)) for key in types.tables
        ]

    def gather(self, ids: NDArray[Any]) -> Tensor:
        out = torch.zeros(len(ids), self.types.width)
        kind = self.types.of_ids(ids)
        for t, table in enumerate(self.tables):
            if table is not None:
                at = np.flatnonzero(kind == t)
                out[at, : table.shape[1]] = torch.from_numpy(np.asarray(table[ids[at] - self.types.bounds[t]]))
        return out


class TypedFeatDBLoader:
    """Batches of a sample set over a typed graph; each type's rows through its own trace's layout."""

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
        self.types = NodeTypes.of(store)
        self.ss = SampleSet(store, sample_set)
        self.readers: dict[int, Any] = {}
        try:
            typed = [t for t, key in enumerate(self.types.tables) if key is not None]
            if not typed:
                raise ConfigError(f"{store.root}: no node type has a feature table to train on")
            for t in typed:
                _check_trace(store, self.ss, f"{sample_set}.{self.types.names[t]}")
            for t in sorted(typed, key=lambda t: self.types.bounds[t] - self.types.bounds[t + 1]):  # largest first
                self.readers[t] = open_reader(
                    store,
                    trace=f"{sample_set}.{self.types.names[t]}",
                    device="cpu",
                    queue_depth=queue_depth,
                    memory_budget=memory,
                )
            self.depth = min(r.queue_depth for r in self.readers.values())
        except BaseException:
            self.close()
            raise
        self.device, self.labels = device, labels
        self._lead = next(iter(self.readers))  # the largest type's reader orders the epoch

    def epoch(self, epoch: int, rng: np.random.Generator) -> Epoch:
        order = self.readers[self._lead].epoch_order(self.ss.epoch_batches(epoch % self.ss.epochs).tolist(), rng)
        for t, reader in self.readers.items():
            if t != self._lead:
                reader.expect(order)
        return self._stream(order)

    def eval_epoch(self, split: str) -> Epoch | None:
        bids = self.ss.part_batches(split)
        return self._stream(bids.tolist()) if len(bids) else None

    def _stream(self, bids: list[int]) -> Epoch:
        stages: list[tuple[str, Callable[[Any], Any]]] = [
            ("sample", lambda b: (b, self.ss.batch(b))),
            ("read", self._read),
            ("assemble", self._assemble),
        ]
        pipe = Pipeline(bids, stages, self.depth, on_drop=_drop)
        return Epoch(iter(pipe), pipe.times, pipe.close, len(bids))

    def _read(self, item: tuple[int, Any]) -> tuple[Any, dict[int, Any]]:
        b, batch = item
        got: dict[int, Any] = {}
        try:
            for t, reader in self.readers.items():
                got[t] = reader.read_batch(b)
        except BaseException:
            _release_all(got)
            raise
        return batch, got

    def _assemble(self, item: tuple[Any, dict[int, Any]]) -> Item:
        """The batch relabelled to rows grouped by type in type order, and its rows one matrix per type
        (:data:`TypedRows`): views of the readers' buffers, released after the step as one type's
        rows are (no copy, no memory beyond the readers' own)."""
        batch, got = item
        try:
            kind = self.types.of_ids(batch.input_ids)
            order: list[NDArray[Any]] = []
            xs: list[Tensor | None] = []
            for t in range(len(self.types.names)):
                at_t = np.flatnonzero(kind == t)
                rows = got.get(t)
                if rows is None:  # no features
                    order.append(at_t)
                    xs.append(None)
                    continue
                if rows.rows.shape[0] != len(at_t):
                    raise StaleDataError(
                        f"batch {rows.batch_id}: trace {self.ss.name}.{self.types.names[t]} serves "
                        f"{rows.rows.shape[0]} rows for the {len(at_t)} the sample set's batch reads: split "
                        "and pack the traces again"
                    )
                # a trace's batch holds its ids sorted: the served order indexes those
                order.append(at_t[np.argsort(batch.input_ids[at_t], kind="stable")][rows.order])
                xs.append(torch.from_numpy(rows.rows))
            mfg = to_torch(served(batch, np.concatenate(order)), self.device)
            y = seed_labels(self.labels, batch.seeds).to(self.device)
            if self.device.type != "cpu":
                xs = [None if r is None else r.to(self.device) for r in xs]
                _release_all(got)
        except BaseException:
            _release_all(got)
            raise

        def release() -> None:
            _release_all(got)

        return mfg, tuple(xs), y, release  # type: ignore[return-value]

    def serve_stats(self) -> dict[str, Any]:
        """Every type's reader's statistics (``tables``), and their tiers summed as one reader's."""
        return merged_stats({self.types.names[t]: r.stats.as_dict() for t, r in self.readers.items()})

    def close(self) -> None:
        for reader in getattr(self, "readers", {}).values():
            reader.close()
        self.ss.close()


def _check_trace(store: featdb.Store, ss: SampleSet, name: str) -> None:
    """``ConfigError`` unless trace ``name`` exists and was split from this very sample set."""
    doc = store.catalog.get(f"trace/{name}")
    if doc is None:
        raise ConfigError(
            f"no trace {name}: a typed graph is served one trace per node type (featdb trace split "
            f"{store.root} --sample-set {ss.name}, then featdb pack --trace {ss.name}.<type> for each)"
        )
    source = doc.get("source") or {}
    if source.get("sample_set") != ss.name or source.get("sample_set_uid") != ss.uid:
        raise StaleDataError(
            f"trace {name} was not split from sample set {ss.name!r} as it is now (sampled again since, or split "
            f"before traces recorded their source): remove it (featdb gc {store.root} --trace {name} --force), "
            "run featdb trace split and pack it again"
        )


def _release_all(got: dict[int, Any]) -> None:
    for rows in got.values():
        rows.release()


def _drop(item: Any) -> None:
    """Release what an item dropped mid-pipeline holds: read buffers (one per type) or its input rows."""
    if isinstance(item, tuple):
        for part in item:
            if isinstance(part, dict):
                _release_all(part)
    _release_item(item)


def merged_stats(per: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Several readers' statistics as one reader's (rows and bytes of each tier summed), with each
    reader's own under ``tables``."""
    tiers: dict[str, dict[str, Any]] = {}
    for stats in per.values():
        for name, tier in stats["tiers"].items():
            into = tiers.setdefault(name, {"rows": 0, "bytes": 0, "stored_bytes": 0, "bytes_read": 0})
            for k in into:
                into[k] += tier[k]
    total = sum(t["rows"] for t in tiers.values())
    for t in tiers.values():
        t["hit_rate"] = round(t["rows"] / total, 4) if total else None
    formats = {s["row_format"] for s in per.values()}
    return {
        "batches": max((s["batches"] for s in per.values()), default=0),
        "row_format": formats.pop() if len(formats) == 1 else "mixed",
        "rows": total,
        "disk_bytes": sum(s["disk_bytes"] for s in per.values()),
        "tiers": tiers,
        "tables": per,
    }


__all__ = [
    "RGCN",
    "NodeTypes",
    "RGCNConv",
    "TypedFeatDBLoader",
    "TypedTables",
    "merged_stats",
    "model_params",
]

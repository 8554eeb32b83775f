"""The partition manifest: which featdb store serves which DGL KVStore key on which partition.

``featdb partition`` writes ``featdb-manifest.json`` beside DGL's partition config. It is plain
data (no DGL needed to read it): the servers, the trainers' client hook and the launcher read it.

DGL names a node feature ``node~<ntype>~<name>`` in its KVStore (``HeteroDataName``); partition
``i`` owns the contiguous shuffled ids ``node_ranges[i]`` and its local row ``r`` is shuffled id
``node_ranges[i][0] + r``, which is row ``r`` of table ``table`` in that partition's store.
``orig_ids`` (int64, one per shuffled id) maps back to the source store's node ids.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import InvalidInputError, NotFoundError
from ..io import write_atomic

MANIFEST_NAME = "featdb-manifest.json"
FORMAT = 1
NTYPE = "_N"  # DGL's node type of a homogeneous graph


def kv_name(ntype: str, name: str) -> str:
    """The KVStore key DGL gives node feature ``name`` of ``ntype`` (``str(HeteroDataName(...))``)."""
    return f"node~{ntype}~{name}"


@dataclass(frozen=True, slots=True)
class FeatureKey:
    """One KVStore key served from featdb: the table in every partition store, and its row shape."""

    kv: str
    ndata: str
    table: str
    dtype: str
    dim: int


@dataclass(frozen=True, slots=True)
class Manifest:
    """What ``featdb partition`` wrote; paths are relative to :attr:`root`."""

    root: Path
    graph_name: str
    dgl_version: str
    method: str
    num_nodes: int
    num_classes: int
    part_config: str
    stock_part_config: str | None
    node_ranges: tuple[tuple[int, int], ...]
    stores: tuple[str, ...]
    keys: tuple[FeatureKey, ...]
    orig_ids: str
    source: str

    @property
    def num_parts(self) -> int:
        return len(self.stores)

    def store_path(self, part: int) -> Path:
        if not 0 <= part < self.num_parts:
            raise InvalidInputError(f"partition {part}: the manifest has partitions 0..{self.num_parts - 1}")
        return self.root / self.stores[part]

    def key(self, kv: str) -> FeatureKey | None:
        return next((k for k in self.keys if k.kv == kv), None)

    def part_rows(self, part: int) -> int:
        lo, hi = self.node_ranges[part]
        return hi - lo

    def part_of(self, shuffled: NDArray[Any]) -> NDArray[Any]:
        """The partition owning each shuffled node id."""
        starts = np.array([lo for lo, _ in self.node_ranges], dtype=np.int64)
        return np.searchsorted(starts, np.asarray(shuffled, dtype=np.int64), side="right") - 1

    def load_orig_ids(self) -> NDArray[Any]:
        """Shuffled id -> the source store's node id (memory-mapped)."""
        return np.memmap(self.root / self.orig_ids, dtype=np.int64, mode="r", shape=(self.num_nodes,))

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "graph_name": self.graph_name,
            "dgl_version": self.dgl_version,
            "method": self.method,
            "num_nodes": self.num_nodes,
            "num_classes": self.num_classes,
            "part_config": self.part_config,
            "stock_part_config": self.stock_part_config,
            "node_ranges": [list(r) for r in self.node_ranges],
            "stores": list(self.stores),
            "keys": [{f: getattr(k, f) for f in FeatureKey.__slots__} for k in self.keys],
            "orig_ids": self.orig_ids,
            "source": self.source,
        }


def write_manifest(m: Manifest) -> Path:
    path = m.root / MANIFEST_NAME
    write_atomic(path, (json.dumps(m.to_json(), indent=2) + "\n").encode())
    return path


def find_manifest(path: str | Path) -> Path:
    """The manifest file ``path`` names: the file itself, or the one in the partition folder."""
    p = Path(path)
    if p.is_dir():
        p = p / MANIFEST_NAME
    if not p.is_file():
        raise NotFoundError(f"{p}: no featdb partition manifest (run featdb partition first)")
    return p


def load_manifest(path: str | Path) -> Manifest:
    """Read and check a manifest; ``path`` is the file or its partition folder."""
    p = find_manifest(path)
    try:
        d = json.loads(p.read_text())
        if d.get("format") != FORMAT:
            raise InvalidInputError(f"{p}: manifest format {d.get('format')!r}, this featdb reads {FORMAT}")
        m = Manifest(
            root=p.parent,
            graph_name=str(d["graph_name"]),
            dgl_version=str(d["dgl_version"]),
            method=str(d["method"]),
            num_nodes=int(d["num_nodes"]),
            num_classes=int(d["num_classes"]),
            part_config=str(d["part_config"]),
            stock_part_config=d.get("stock_part_config"),
            node_ranges=tuple((int(lo), int(hi)) for lo, hi in d["node_ranges"]),
            stores=tuple(str(s) for s in d["stores"]),
            keys=tuple(
                FeatureKey(str(k["kv"]), str(k["ndata"]), str(k["table"]), str(k["dtype"]), int(k["dim"]))
                for k in d["keys"]
            ),
            orig_ids=str(d["orig_ids"]),
            source=str(d["source"]),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidInputError(f"{p}: not a valid featdb partition manifest ({exc!r})") from exc
    _check(m, p)
    return m


def _check(m: Manifest, p: Path) -> None:
    ranges = m.node_ranges
    ok = len(ranges) == len(m.stores) > 0 and ranges[0][0] == 0 and ranges[-1][1] == m.num_nodes
    ok = ok and all(a[1] == b[0] for a, b in itertools.pairwise(ranges)) and all(lo <= hi for lo, hi in ranges)
    if not ok:
        raise InvalidInputError(f"{p}: node ranges {ranges} do not tile 0..{m.num_nodes} over {len(m.stores)} parts")
    for rel in (*m.stores, m.orig_ids, m.part_config):
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise InvalidInputError(f"{p}: path {rel!r} leaves the partition folder")


def write_table_chunks(store: Any, key: str, dtype: str, rows: int, dim: int, chunks: Iterable[NDArray[Any]]) -> None:
    """A new table ``key`` of ``rows`` x ``dim`` written chunk by chunk (a trainer's local copy of the
    rows it needs): the table writer's atomic, checksummed path, holding one chunk at a time."""
    from ..tables import Schema

    with store.table_writer(key, Schema(dtype, rows, dim)) as w:
        for chunk in chunks:
            w.write(np.ascontiguousarray(chunk, dtype=dtype).reshape(-1, dim))

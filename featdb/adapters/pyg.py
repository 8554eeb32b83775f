"""featdb as PyTorch Geometric's remote backend: :class:`FeatDBFeatureStore` and :class:`FeatDBGraphStore`.

Usage (torch-geometric from the ``pyg`` extra; sampling with PyG's own ``NeighborLoader`` also
needs ``pyg-lib`` or ``torch-sparse``, which do not install with torch 2.2.1 here)::

    from featdb.adapters.pyg import FeatDBFeatureStore, FeatDBGraphStore

    fs, gs = FeatDBFeatureStore(store), FeatDBGraphStore(store)
    x = fs["_", "feat", ids]                    # or fs.get_tensor(group_name=None, attr_name="feat", index=ids)
    loader = NeighborLoader((fs, gs), num_neighbors=[10, 10], input_nodes=train_ids, batch_size=1024)

``TensorAttr(group_name=T, attr_name=N)`` is the table ``node/T/N`` (``group_name=None``: ``node/_/N``).
Every index form PyG's ``FeatureStore`` documents is taken: None or ``slice(None)`` (the whole table),
slices, ints, lists, numpy arrays, tensors (on any device; results go to the index's device), boolean
masks. ``multi_get_tensor`` is served with one featdb read per table for all the attributes that name
it. ``put_tensor`` writes a new table (or, with an index, updates rows: the table is rewritten and
switched crash-safely, and a packed layout of it is refused until repacked); ``remove_tensor`` drops
the table. The graph store serves the stored graph (homogeneous, read-only) in COO, CSR and CSC.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from ..errors import ConfigError, InvalidInputError, ReadOnlyError
from ..serve import LayoutReader
from ..store import Store
from ..tables import check_ids
from ..updates import drop_table, update_rows
from .common import as_ids, as_numpy, table_key, type_of

try:
    import torch
    from torch_geometric.data import EdgeAttr, FeatureStore, GraphStore, TensorAttr
    from torch_geometric.data.graph_store import EdgeLayout
except ImportError as exc:  # pragma: no cover - the pyg extra is installed in development
    raise ConfigError(f"featdb.adapters.pyg needs torch-geometric (pip install 'featdb[pyg]'): {exc}") from exc


class FeatDBFeatureStore(FeatureStore):  # type: ignore[misc]  # torch-geometric's classes are untyped here
    """The node tables of an open ``store`` (or only ``keys``) as a PyG ``FeatureStore``.

    ``readers`` maps a table key to an open :class:`~featdb.serve.LayoutReader` of its layout: reads of
    that table then take the hot tiers (and the reader's row cache) first. PyG's loaders fetch every
    attribute :meth:`get_all_tensor_attrs` lists for the sampled nodes, so for a homogeneous graph list
    only its node tables (``keys=["node/_/feat"]``)."""

    def __init__(
        self, store: Store, readers: dict[str, LayoutReader] | None = None, keys: list[str] | None = None
    ) -> None:
        super().__init__()
        self.__dict__["store"] = store  # FeatureStore routes attribute writes through views
        self.__dict__["readers"] = dict(readers or {})
        self.__dict__["keys"] = None if keys is None else [table_key(type_of(k), k.split("/")[2]) for k in keys]

    def _key(self, attr: TensorAttr) -> str:
        return table_key(attr.group_name, str(attr.attr_name))

    def _put_tensor(self, tensor: Any, attr: TensorAttr) -> bool:
        key, vals = self._key(attr), as_numpy(tensor)
        rows = self.store.schema(key).rows if self.store.has_table(key) else len(vals)
        idx, _ = as_ids(attr.index, rows)
        if idx is not None and not np.array_equal(idx, np.arange(rows)):
            if not self.store.has_table(key):
                raise InvalidInputError(f"no table {key!r} to update rows of: put the whole tensor (index=None) first")
            update_rows(self.store, key, idx, vals)
            return True
        if vals.ndim not in (1, 2) or len(vals) == 0:
            raise InvalidInputError(f"a table is a non-empty 1-D or 2-D array, got shape {vals.shape}")
        self.store.write_table(key, vals.reshape(len(vals), -1), replace=self.store.has_table(key))
        return True

    def _get_tensor(self, attr: TensorAttr) -> Any:
        key = self._key(attr)
        if not self.store.has_table(key):
            return None
        return self._read(key, [attr.index])[0]

    def _multi_get_tensor(self, attrs: list[TensorAttr]) -> list[Any]:
        """One featdb read per table, for all the attributes that name it."""
        by_key: dict[str, list[int]] = defaultdict(list)
        for i, attr in enumerate(attrs):
            by_key[self._key(attr)].append(i)
        out: list[Any] = [None] * len(attrs)
        for key, where in by_key.items():
            if self.store.has_table(key):
                for i, t in zip(where, self._read(key, [attrs[i].index for i in where]), strict=True):
                    out[i] = t
        return out

    def _read(self, key: str, indexes: list[Any]) -> list[Any]:
        """Rows of ``key`` for several indexes at once (one read of their ids together)."""
        schema = self.store.schema(key)
        parsed = [as_ids(index, schema.rows) for index in indexes]
        whole = rows = None
        if any(ids is None for ids, _ in parsed):
            whole = torch.from_numpy(np.array(self.store.read_all(key)).reshape(schema.rows, schema.dim))
        ids = [check_ids(i, schema.rows) for i, _ in parsed if i is not None]
        reader = self.readers.get(key)
        if ids:
            cat = np.concatenate(ids)
            got = reader.read(cat) if reader is not None else self.store.read(key, cat)
            rows = torch.from_numpy(got).reshape(len(cat), schema.dim)
        out: list[Any] = []
        pos = 0
        for (i, scalar), index in zip(parsed, indexes, strict=True):
            t: Any = whole
            if i is not None:
                t, pos = rows[pos : pos + len(i)], pos + len(i)  # type: ignore[index]
                t = t[0] if scalar else t
            out.append(t.to(index.device) if isinstance(index, torch.Tensor) and index.device.type != "cpu" else t)
        return out

    def _remove_tensor(self, attr: TensorAttr) -> bool:
        key = self._key(attr)
        if not self.store.has_table(key):
            return False
        drop_table(self.store, key)
        return True

    def update_tensor(self, tensor: Any, *args: Any, **kwargs: Any) -> bool:
        """Rewrite the table (or, with an index, its rows) in one crash-safe switch: no window in
        which the table is missing, unlike the default remove-then-put."""
        attr = self._tensor_attr_cls.cast(*args, **kwargs)
        attr.fully_specify()
        return self._put_tensor(tensor, attr)

    def _get_tensor_size(self, attr: TensorAttr) -> tuple[int, ...] | None:
        key = self._key(attr)
        if not self.store.has_table(key):
            return None
        schema = self.store.schema(key)
        ids, scalar = as_ids(attr.index, schema.rows)
        n = schema.rows if ids is None else len(ids)
        return (schema.dim,) if scalar else (n, schema.dim)

    def get_all_tensor_attrs(self) -> list[TensorAttr]:
        return [self._tensor_attr_cls.cast(type_of(k), k.split("/")[2]) for k in self._node_keys()]

    def _node_keys(self) -> list[str]:
        keys = [t["key"] for t in self.store.tables() if t["key"].startswith("node/")]
        return keys if self.keys is None else [k for k in keys if k in self.keys]

    def __len__(self) -> int:
        return len(self._node_keys())


class FeatDBGraphStore(GraphStore):  # type: ignore[misc]
    """The stored graph (homogeneous; edge type None, as PyG names it) as a read-only PyG ``GraphStore``."""

    def __init__(self, store: Store) -> None:
        super().__init__()
        from ..graph import load_graph

        self.store = store
        self._graph = load_graph(store, mmap=True)

    @property
    def num_nodes(self) -> int:
        return self._graph.num_nodes

    def _put_edge_index(self, edge_index: Any, edge_attr: EdgeAttr) -> bool:
        raise ReadOnlyError("the stored graph is written by featdb ingest-graph (or ingest-ogb), not through PyG")

    def _remove_edge_index(self, edge_attr: EdgeAttr) -> bool:
        raise ReadOnlyError("the stored graph is removed by replacing it (featdb ingest-graph), not through PyG")

    def _get_edge_index(self, edge_attr: EdgeAttr) -> Any:
        if edge_attr.edge_type is not None:
            return None
        g = self._graph
        indptr = torch.from_numpy(np.asarray(g.indptr, dtype=np.int64))
        src = torch.from_numpy(np.asarray(g.indices, dtype=np.int64))
        if edge_attr.size is None:
            edge_attr.size = (g.num_nodes, g.num_nodes)
        if edge_attr.layout == EdgeLayout.CSC:
            return src, indptr  # (row, colptr), as PyG orders CSC
        dst = torch.repeat_interleave(torch.arange(g.num_nodes), indptr.diff())
        if edge_attr.layout == EdgeLayout.COO:
            return src, dst
        order = torch.argsort(src, stable=True)  # CSR: out-edges grouped by source
        rowptr = torch.zeros(g.num_nodes + 1, dtype=torch.int64)
        rowptr[1:] = torch.cumsum(torch.bincount(src, minlength=g.num_nodes), 0)
        return rowptr, dst[order]

    def get_all_edge_attrs(self) -> list[EdgeAttr]:
        n = self._graph.num_nodes
        return [  # COO edges come in CSC order: sorted by destination
            EdgeAttr(None, EdgeLayout.CSC, True, (n, n)),
            EdgeAttr(None, EdgeLayout.COO, True, (n, n)),
            EdgeAttr(None, EdgeLayout.CSR, False, (n, n)),
        ]


__all__ = ["FeatDBFeatureStore", "FeatDBGraphStore"]

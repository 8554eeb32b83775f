"""featdb as a DGL GraphBolt feature: :class:`FeatDBFeature`, a ``dgl.graphbolt.Feature`` (DGL 2.1.0).

Usage::

    import dgl.graphbolt as gb
    from featdb.adapters.graphbolt import FeatDBFeature, feature_store

    feats = feature_store(store)            # a gb.BasicFeatureStore of every table, keyed (domain, type, name)
    datapipe = gb.ItemSampler(gb.ItemSet(train_ids, names="seed_nodes"), batch_size=1024)
    datapipe = datapipe.sample_neighbor(graph, [10, 10]).fetch_feature(feats, node_feature_keys=["feat"])

``read(ids)`` is one featdb read of the rows asked for (sorted, coalesced,
checked page reads; or, given a ``reader``, the layout's hot tiers first);
``read()`` reads the whole table into memory. ``update`` rewrites the table
(:func:`featdb.updates.update_rows`): a packed layout of it is then refused
until repacked. Tables with one column read as ``(n, 1)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ConfigError, InvalidIdsError
from ..serve import LayoutReader
from ..store import Store
from ..tables import check_ids
from ..updates import update_rows
from .common import as_ids, as_numpy, type_of

try:
    import dgl.graphbolt as gb
    import torch
except ImportError as exc:  # pragma: no cover - the gnn extra is installed in development
    raise ConfigError(
        f"featdb.adapters.graphbolt needs DGL 2.1.0 and torch (pip install 'featdb[gnn]'): {exc}"
    ) from exc


class FeatDBFeature(gb.Feature):  # type: ignore[misc]  # dgl ships no type hints
    """Table ``key`` of an open ``store`` as a GraphBolt ``Feature``.

    ``reader``: an open :class:`~featdb.serve.LayoutReader` whose layout is of this table; reads then
    take the hot tiers (and its row cache) first. ``metadata``: what :meth:`metadata` returns besides
    the table's own description."""

    def __init__(
        self, store: Store, key: str, reader: LayoutReader | None = None, metadata: dict[str, Any] | None = None
    ) -> None:
        super().__init__()
        self.store, self.key = store, key
        self._schema = store.schema(key)
        if reader is not None and reader.doc["table"] != key:
            raise ConfigError(f"the reader serves table {reader.doc['table']!r}, not {key!r}")
        self.reader = reader
        self._metadata = dict(metadata or {})

    def read(self, ids: Any = None) -> Any:
        """Rows ``ids`` (a tensor of row ids, on any device; the result goes to the same device), or
        the whole table when ``ids`` is None."""
        idx, _ = as_ids(ids, self.rows)
        if idx is None:
            rows = np.array(self.store.read_all(self.key))
        else:
            idx = check_ids(idx, self.rows)
            rows = self.reader.read(idx) if self.reader is not None else self.store.read(self.key, idx)
        out = torch.from_numpy(rows.reshape(-1, self._schema.dim))
        return out.to(ids.device) if isinstance(ids, torch.Tensor) and ids.device.type != "cpu" else out

    def size(self) -> Any:
        """The shape of one row, as GraphBolt features report it (``torch.Size([dim])``)."""
        return torch.Size([self._schema.dim])

    @property
    def rows(self) -> int:
        return self._schema.rows

    def count(self) -> int:
        """Rows in the table (later GraphBolt versions ask features for it)."""
        return self.rows

    def metadata(self) -> dict[str, Any]:
        return {"key": self.key, "dtype": self._schema.dtype, "rows": self.rows, **self._metadata}

    def update(self, value: Any, ids: Any = None) -> None:
        """Row ``ids[i]`` becomes ``value[i]`` (crash-safe: the table is rewritten and switched in one
        transaction); ``ids=None`` replaces the whole table with ``value``."""
        vals = as_numpy(value)
        idx, _ = as_ids(ids, self.rows)
        if idx is None:
            if vals.ndim not in (1, 2) or len(vals) == 0:
                raise InvalidIdsError(f"a whole table is a non-empty 1-D or 2-D array, got shape {vals.shape}")
            self.store.write_table(self.key, vals.reshape(len(vals), -1), replace=True)
        else:
            update_rows(self.store, self.key, idx, vals)
        self._schema = self.store.schema(self.key)


def feature_store(store: Store, keys: list[str] | None = None, readers: dict[str, LayoutReader] | None = None) -> Any:
    """A GraphBolt ``BasicFeatureStore`` of the store's tables (or ``keys``), each under
    :func:`gb_key` (``(domain, type, name)``, type None for ``_``, as GraphBolt reads homogeneous graphs);
    ``readers`` maps a key to the reader serving its layout."""
    chosen = keys if keys is not None else [t["key"] for t in store.tables()]
    readers = readers or {}
    return gb.BasicFeatureStore({gb_key(k): FeatDBFeature(store, k, readers.get(k)) for k in chosen})


def gb_key(key: str) -> tuple[str, str | None, str]:
    """GraphBolt's ``(domain, type, name)`` of a featdb key; the homogeneous type ``_`` is GraphBolt's None."""
    domain, _, name = key.split("/")
    return domain, type_of(key), name


__all__ = ["FeatDBFeature", "feature_store", "gb_key"]

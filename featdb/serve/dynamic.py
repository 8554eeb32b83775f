"""An optional dynamic cache (cachetools LRU or LFU, byte budget) for rows outside the packed set."""

from __future__ import annotations

import threading
import time
from typing import Any

import cachetools
import numpy as np
from numpy.typing import NDArray

from ..errors import InvalidInputError


class RowCache:
    """Caches single rows by node id; reports hits, misses and evictions."""

    def __init__(self, capacity_bytes: int, policy: str, row_bytes: int) -> None:
        kinds = {"lru": cachetools.LRUCache, "lfu": cachetools.LFUCache}
        if policy not in kinds:
            raise InvalidInputError(f"cache policy {policy!r}: lru or lfu")
        self.row_bytes = row_bytes
        self._cache: cachetools.Cache[int, NDArray[Any]] = kinds[policy](
            maxsize=max(row_bytes, capacity_bytes), getsizeof=lambda v: row_bytes
        )
        self._lock = threading.Lock()
        self.hits = self.misses = self.evictions = 0

    def fill(self, ids: NDArray[Any], todo: NDArray[Any], out: NDArray[Any], stats: Any) -> NDArray[Any]:
        """Fill ``out[i]`` for cached ``ids[i]``, i in ``todo``; return the positions still missing."""
        t = time.perf_counter()
        missing = []
        with self._lock:
            for i in todo.tolist():
                row = self._cache.get(int(ids[i]))
                if row is None:
                    missing.append(i)
                else:
                    out[i] = row
        hits = len(todo) - len(missing)
        with self._lock:
            self.hits += hits
            self.misses += len(missing)
        stats.add("cache", hits, 0, time.perf_counter() - t)
        return np.asarray(missing, dtype=np.int64)

    def put(self, ids: NDArray[Any], rows: NDArray[Any]) -> None:
        with self._lock:
            for i, row in zip(ids.tolist(), rows, strict=True):
                if i in self._cache:
                    continue
                if self._cache.currsize + self.row_bytes > self._cache.maxsize:
                    self.evictions += 1
                self._cache[i] = row.copy()

    def as_dict(self) -> dict[str, int]:
        return {
            "hits": self.hits,
            "misses": self.misses,
            "evictions": self.evictions,
            "rows": len(self._cache),
            "bytes": int(self._cache.currsize),
        }

"""Per-tier serving statistics: rows, bytes read, time, hit rate, read amplification."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Any

TIERS = ("l1", "l2", "l3", "l4", "base", "cache")


@dataclass
class TierCounter:
    rows: int = 0
    bytes_read: int = 0  # from disk; 0 for memory tiers
    seconds: float = 0.0


@dataclass
class ServeStats:
    """Thread-safe counters for one reader."""

    row_bytes: int  # a row as served (decoded)
    stored_row_bytes: int = 0  # a row as the layout's tiers store it (0: row_bytes; the base table's is row_bytes)
    row_format: str = ""  # the layout's row format (featdb.rowformat)
    tiers: dict[str, TierCounter] = field(default_factory=lambda: {t: TierCounter() for t in TIERS})
    batches: int = 0
    caches: dict[str, Any] = field(default_factory=dict)  # name -> a cache with as_dict() (hits, misses, ...)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, tier: str, rows: int, nbytes: int, seconds: float) -> None:
        with self._lock:
            c = self.tiers[tier]
            c.rows += rows
            c.bytes_read += nbytes
            c.seconds += seconds

    def count_batch(self) -> None:
        with self._lock:
            self.batches += 1

    def as_dict(self) -> dict[str, Any]:
        with self._lock:
            total = sum(c.rows for c in self.tiers.values())
            disk_stored = sum(self.tiers[t].rows * self._stored(t) for t in ("l3", "l4", "base"))
            disk_bytes = sum(c.bytes_read for c in self.tiers.values())
            out: dict[str, Any] = {
                "batches": self.batches,
                "row_format": self.row_format,
                "row_bytes": self.row_bytes,  # a row as served
                "stored_row_bytes": self.stored_row_bytes or self.row_bytes,  # as the tiers and extents hold it
                "rows": total,
                "disk_bytes": disk_bytes,
                "read_amplification": _ratio(disk_bytes, disk_stored),
                "tiers": {},
                "caches": {name: c.as_dict() for name, c in self.caches.items()},
            }
            for name, c in self.tiers.items():
                out["tiers"][name] = {
                    "rows": c.rows,
                    "bytes": c.rows * self.row_bytes,  # as served, decoded
                    "stored_bytes": c.rows * self._stored(name),  # as the tier holds them
                    "bytes_read": c.bytes_read,
                    "hit_rate": _ratio(c.rows, total),
                    "seconds": round(c.seconds, 4),
                    "read_amplification": _ratio(c.bytes_read, c.rows * self._stored(name))
                    if name in ("l3", "l4", "base")
                    else None,
                }
            return out

    def _stored(self, tier: str) -> int:
        return self.row_bytes if tier in ("base", "cache") or not self.stored_row_bytes else self.stored_row_bytes

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2)

    def reset(self) -> None:
        with self._lock:
            self.tiers = {t: TierCounter() for t in TIERS}
            self.batches = 0


def _ratio(a: float, b: float) -> float:
    return round(a / b, 4) if b else 0.0

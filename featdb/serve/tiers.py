"""Hot-tier helpers: looking ids up in a sorted tier, tier budgets, where the device tier lives, and
reading rows by id through the tiers."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import ConfigError


def lookup(keys: NDArray[Any], ids: NDArray[Any]) -> tuple[NDArray[Any], NDArray[Any]]:
    if not len(keys):
        return np.zeros(len(ids), dtype=np.int64), np.zeros(len(ids), dtype=bool)
    slot = np.minimum(np.searchsorted(keys, ids), len(keys) - 1)
    return slot, keys[slot] == ids


def check_budget(tier: str, need: int, budget: int | None) -> None:
    if budget is not None and need > budget:
        raise ConfigError(
            f"the layout puts {need:,} bytes in the {tier} tier, but only {budget:,} bytes "
            f"are allowed: repack with a smaller --{tier}-cache"
        )


def resolve_device(device: str) -> str:
    if device not in ("auto", "cpu") and not device.startswith("cuda"):
        raise ConfigError(f"device {device!r}: auto, cpu or cuda[:N]")
    if device == "cpu":
        return "cpu"
    try:
        import torch
    except ImportError:
        if device == "auto":
            return "cpu"
        raise ConfigError("device 'cuda' needs torch installed") from None
    if not torch.cuda.is_available():
        if device == "auto":
            return "cpu"
        raise ConfigError("device 'cuda' asked for, but torch sees no CUDA device")
    return "cuda" if device == "auto" else device


def read_ids(r: Any, ids: NDArray[Any]) -> NDArray[Any]:
    """A :class:`~featdb.serve.reader.LayoutReader`'s rows for checked ids: hot tiers first (decoded
    from the layout's row format), then its dynamic cache, then the base table."""
    out = np.empty((len(ids), r.dim), dtype=r.dtype)
    done = np.zeros(len(ids), dtype=bool)
    for tier, keys, rows in (("l1", r.l1_ids, r.l1), ("l2", r.l2_ids, r.host)):
        slot, hit = lookup(keys, ids)
        if hit.any():
            t = time.perf_counter()
            src = rows[slot[hit]] if tier != "l1" or r.device == "cpu" else r.l1[slot[hit]].cpu().numpy()
            got = np.empty((len(src), r.dim), dtype=r.dtype)
            r.fmt.decode(src.view(np.uint8).reshape(len(src), r.srb), got)
            out[hit] = got
            done |= hit
            r.stats.add(tier, int(hit.sum()), 0, time.perf_counter() - t)
    rest = np.flatnonzero(~done)
    if len(rest) and r.cache is not None:
        rest = r.cache.fill(ids, rest, out, r.stats)
    if len(rest):
        t = time.perf_counter()
        rows = np.empty((len(rest), r.dim), dtype=r.dtype)
        nbytes = r.base.read_counted(ids[rest], rows)
        out[rest] = rows
        r.stats.add("base", len(rest), nbytes, time.perf_counter() - t)
        if r.cache is not None:
            r.cache.put(ids[rest], out[rest])
    return out

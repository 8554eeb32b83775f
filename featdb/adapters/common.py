"""What every adapter shares: table keys from a library's names, and ids from its index forms."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import InvalidIdsError
from ..store import check_key

HOMOGENEOUS = "_"
"""The type part of a homogeneous graph's table keys (``node/_/feat``)."""


def table_key(type_name: str | None, name: str, domain: str = "node") -> str:
    """The featdb key of ``(domain, type, name)``; ``None`` is the homogeneous type ``_``."""
    return check_key(f"{domain}/{HOMOGENEOUS if type_name is None else type_name}/{name}")


def type_of(key: str) -> str | None:
    """A key's type as the libraries name it: ``None`` for the homogeneous ``_``."""
    t = key.split("/")[1]
    return None if t == HOMOGENEOUS else t


def as_ids(index: Any, rows: int) -> tuple[NDArray[Any] | None, bool]:
    """(row ids as int64 numpy, whether the caller indexed with a scalar) from what a library passes:
    ``None`` or ``slice(None)`` (every row: ids None), a slice, an int, a list, a numpy array, a torch tensor
    (on any device)."""
    if index is None:
        return None, False
    if isinstance(index, slice):
        if index == slice(None):
            return None, False
        return np.arange(rows)[index], False
    if isinstance(index, (int, np.integer)) and not isinstance(index, bool):
        return np.asarray([int(index)], dtype=np.int64), True
    if hasattr(index, "detach"):  # a torch tensor
        index = index.detach().cpu().numpy()
    arr = np.asarray(index)
    if arr.dtype == bool:
        if arr.shape != (rows,):
            raise InvalidIdsError(f"a boolean mask must have one entry per row ({rows}), got shape {arr.shape}")
        return np.flatnonzero(arr), False
    return arr.reshape(-1) if arr.ndim == 0 else arr, False


def as_numpy(value: Any) -> NDArray[Any]:
    """A tensor (any device) or array-like as a numpy array."""
    if hasattr(value, "detach"):
        return np.asarray(value.detach().cpu().numpy())
    return np.asarray(value)

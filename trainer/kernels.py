"""Compiled index work of the feeding pipeline (numba, GIL released).

Relabelling layer 0 to the order featdb serves rows in takes numpy several
passes over a batch's edges (invert the order, permute the ids, gather the
sources); here it is one pass, with the permutation and bounds checked on the
way.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
from numpy.typing import NDArray


@numba.njit(cache=True, nogil=True)
def relabel_served(
    order: NDArray[Any],
    ids: NDArray[Any],
    src: NDArray[Any],
    dst_in_src: NDArray[Any],
    ids_out: NDArray[Any],
    src_out: NDArray[Any],
    dst_in_src_out: NDArray[Any],
) -> bool:  # pragma: no cover - compiled
    """Layer 0 relabelled so that new row ``k`` is old row ``order[k]``.

    Writes ``ids_out = ids[order]``, ``src_out = inv[src]`` and
    ``dst_in_src_out = inv[dst_in_src]`` where ``inv`` inverts ``order``.
    Returns False, with the outputs unspecified, if ``order`` is not a
    permutation of the sources or an index is out of range.
    """
    n = order.shape[0]
    inv = np.full(n, -1, np.int64)
    for k in range(n):
        o = order[k]
        if o < 0 or o >= n or inv[o] >= 0:
            return False
        inv[o] = k
        ids_out[k] = ids[o]
    for e in range(src.shape[0]):
        s = src[e]
        if s < 0 or s >= n:
            return False
        src_out[e] = inv[s]
    for d in range(dst_in_src.shape[0]):
        s = dst_in_src[d]
        if s < 0 or s >= n:
            return False
        dst_in_src_out[d] = inv[s]
    return True

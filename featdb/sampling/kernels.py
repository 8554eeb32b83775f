"""Compiled inner loops of offline sampling (numba; imported only where sampling runs).

Relabelling a sampled layer is one pass over its edges with a per-node slot
table; numpy needs about eight random-access passes for the same result.
"""

from __future__ import annotations

from typing import Any

import numba
from numpy.typing import NDArray


@numba.njit(cache=True, nogil=True)
def relabel(
    u: NDArray[Any],
    v: NDArray[Any],
    dst: NDArray[Any],
    slots: NDArray[Any],
    u_local: NDArray[Any],
    v_local: NDArray[Any],
    nodes: NDArray[Any],
) -> int:  # pragma: no cover - compiled
    """Local ids of the edges (u -> v); returns how many source nodes the layer has.

    The sources are ``dst`` in order, then every new node of ``u`` in order of
    first appearance; they are written to ``nodes``. ``slots`` (one entry per
    graph node) must be all -1 and is left so.
    """
    n = dst.shape[0]
    for i in range(n):
        slots[dst[i]] = i
        nodes[i] = dst[i]
    k = n
    for e in range(u.shape[0]):
        s = slots[u[e]]
        if s < 0:
            s = k
            slots[u[e]] = k
            nodes[k] = u[e]
            k += 1
        u_local[e] = s
    for e in range(v.shape[0]):
        v_local[e] = slots[v[e]]
    for i in range(k):
        slots[nodes[i]] = -1
    return k


@numba.njit(cache=True, nogil=True)
def count(ids: NDArray[Any], counts: NDArray[Any]) -> None:  # pragma: no cover - compiled
    """``counts[ids] += 1``, one pass."""
    for i in range(ids.shape[0]):
        counts[ids[i]] += 1

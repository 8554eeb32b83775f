"""The plain form of a sampled message-flow graph (MFG): numpy index arrays only.

A batch is a list of layers, outermost (input side) first. Layer ``l`` maps
its ``num_src`` source nodes to ``num_dst`` destination nodes with one entry
per sampled edge: ``src[e]`` and ``dst[e]`` are local indices. ``dst_in_src``
gives, for each destination node, its position among the layer's sources (so a
model can take a node's own representation, as SAGE's self term does). The
destinations of layer ``l`` are the sources of layer ``l + 1`` in the same
order; the destinations of the last layer are the batch's seeds. A batch
sampled from a typed graph also carries each edge's relation (``etype``).

The input rows of a batch may be served in any order (featdb puts disk rows
first so they can be read straight into place); :meth:`Batch.reordered`
relabels layer 0 to match.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True, slots=True)
class Layer:
    src: NDArray[Any]  # int32 or int64 [E], local source index
    dst: NDArray[Any]  # int32 or int64 [E], local destination index
    dst_in_src: NDArray[Any]  # int64 [num_dst]
    num_src: int
    num_dst: int
    etype: NDArray[Any] | None = None  # uint8 or int16 [E], each edge's relation (typed graphs only)


@dataclass(frozen=True, slots=True)
class Batch:
    seeds: NDArray[Any]  # int64 global ids of the output nodes
    input_ids: NDArray[Any]  # int64 global ids of layer 0's sources, in row order
    layers: tuple[Layer, ...]

    def reordered(self, order: NDArray[Any]) -> Batch:
        """The same batch with input rows permuted: new row ``k`` is old row ``order[k]``."""
        inv = np.empty(len(order), dtype=np.int64)
        inv[order] = np.arange(len(order), dtype=np.int64)
        first = self.layers[0]
        layer0 = Layer(inv[first.src], first.dst, inv[first.dst_in_src], first.num_src, first.num_dst, first.etype)
        return Batch(self.seeds, self.input_ids[order], (layer0, *self.layers[1:]))

    @property
    def num_edges(self) -> int:
        return sum(len(layer.src) for layer in self.layers)

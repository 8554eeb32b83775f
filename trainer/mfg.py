"""Message-flow graphs as torch tensors, and conversion from DGL blocks.

:mod:`featdb.sampling.mfg` holds the plain numpy form of a sampled batch; this
module moves it onto a torch device (:func:`to_torch`) for the models in
:mod:`trainer.models`, and builds the plain form from DGL blocks
(:func:`from_dgl_blocks`) so DGL's samplers can feed featdb. DGL is imported
lazily: nothing here needs it except :func:`from_dgl_blocks`, so the models run
on machines (e.g. the lent GPU machine) that have torch but no DGL.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from featdb.sampling import Batch, Layer

__all__ = [
    "TorchBatch",
    "TorchLayer",
    "from_dgl_blocks",
    "served",
    "synthetic_batch",
    "to_torch",
]


@dataclass(frozen=True, slots=True)
class TorchLayer:
    """One MFG layer on a device: int64 local indices, one entry per edge.

    ``src[e]`` and ``dst[e]`` index the layer's sources and destinations;
    ``dst_in_src[d]`` is destination ``d``'s position among the sources.
    """

    src: torch.Tensor  # int64 [E]
    dst: torch.Tensor  # int64 [E]
    dst_in_src: torch.Tensor  # int64 [num_dst]
    num_src: int
    num_dst: int
    etype: torch.Tensor | None = None  # int64 [E], each edge's relation (batches of typed graphs)

    @property
    def num_edges(self) -> int:
        """Number of sampled edges in this layer."""
        return int(self.src.shape[0])


@dataclass(frozen=True, slots=True)
class TorchBatch:
    """A batch on a device: layers outermost (input side) first, as in :class:`Batch`."""

    seeds: torch.Tensor  # int64 global ids of the output nodes
    input_ids: torch.Tensor  # int64 global ids of layer 0's sources, in row order
    layers: tuple[TorchLayer, ...]

    @property
    def device(self) -> torch.device:
        """The device the index tensors live on."""
        return self.seeds.device

    @property
    def num_inputs(self) -> int:
        """Rows the input feature matrix must have (layer 0's sources)."""
        return self.layers[0].num_src


def _index_tensor(array: npt.ArrayLike, device: torch.device, pin_memory: bool) -> torch.Tensor:
    """One int64 index array as a tensor on ``device``.

    Read-only arrays (memory-mapped sample sets) are copied first: torch does
    not wrap non-writable numpy buffers without a warning.
    """
    arr = np.ascontiguousarray(array, dtype=np.int64)
    if not arr.flags.writeable:
        arr = arr.copy()
    tensor = torch.from_numpy(arr)
    if device.type == "cpu":
        return tensor
    if pin_memory and device.type == "cuda":
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=tensor.is_pinned())


@functools.cache
def _kernels() -> Any:
    """The compiled kernels, or None where numba is not installed (imported on first use)."""
    try:
        from . import kernels
    except ImportError:
        return None
    return kernels


_BAD_ORDER = "order is not a permutation of layer 0's sources, or an index is out of range"


def served(batch: Batch, order: npt.ArrayLike) -> Batch:
    """``batch.reordered(order)`` with int64 layer-0 arrays, in one compiled pass.

    ``order`` is the order featdb served the input rows in (new row ``k`` is
    old row ``order[k]``). Without numba the same result comes from numpy.
    ``ValueError`` if ``order`` is not a permutation of layer 0's sources or
    an index of layer 0 is out of range.
    """
    first = batch.layers[0]
    order = np.ascontiguousarray(order, dtype=np.int64)
    if not len(order) == len(batch.input_ids) == first.num_src:
        raise ValueError(
            f"order has {len(order)} entries for {first.num_src} sources ({len(batch.input_ids)} input ids)"
        )
    if len(first.dst_in_src) != first.num_dst or len(first.src) != len(first.dst):
        raise ValueError("layer 0's arrays do not match its sizes")
    kernels = _kernels()
    if kernels is None:
        return _served_numpy(batch, order)
    ids = np.empty(first.num_src, dtype=np.int64)
    src = np.empty(len(first.src), dtype=np.int64)
    dst_in_src = np.empty(first.num_dst, dtype=np.int64)
    if not kernels.relabel_served(order, batch.input_ids, first.src, first.dst_in_src, ids, src, dst_in_src):
        raise ValueError(_BAD_ORDER)
    layer0 = Layer(src, first.dst.astype(np.int64), dst_in_src, first.num_src, first.num_dst, first.etype)
    return Batch(batch.seeds, ids, (layer0, *batch.layers[1:]))


def _served_numpy(batch: Batch, order: npt.NDArray[np.int64]) -> Batch:
    first = batch.layers[0]
    n = first.num_src
    for a in (order, first.src, first.dst_in_src):
        if len(a) and (int(a.min()) < 0 or int(a.max()) >= n):
            raise ValueError(_BAD_ORDER)
    if n and int(np.bincount(order, minlength=n).max()) != 1:
        raise ValueError(_BAD_ORDER)
    moved = batch.reordered(order)
    m = moved.layers[0]
    layer0 = Layer(m.src.astype(np.int64), m.dst.astype(np.int64), m.dst_in_src, n, m.num_dst, m.etype)
    return Batch(moved.seeds, moved.input_ids, (layer0, *moved.layers[1:]))


def to_torch(batch: Batch, device: torch.device | str = "cpu", *, pin_memory: bool = False) -> TorchBatch:
    """Move a plain batch onto ``device`` as int64 tensors.

    On CUDA, ``pin_memory=True`` pages-locks the host copies first so the
    transfers are issued with ``non_blocking=True`` and overlap compute; the
    caller must then synchronise (any kernel on the same stream does) before
    reusing host memory. On CPU the tensors share memory with writable arrays.
    """
    dev = torch.device(device)
    layers = tuple(
        TorchLayer(
            src=_index_tensor(layer.src, dev, pin_memory),
            dst=_index_tensor(layer.dst, dev, pin_memory),
            dst_in_src=_index_tensor(layer.dst_in_src, dev, pin_memory),
            num_src=int(layer.num_src),
            num_dst=int(layer.num_dst),
            etype=None if layer.etype is None else _index_tensor(layer.etype, dev, pin_memory),
        )
        for layer in batch.layers
    )
    return TorchBatch(
        seeds=_index_tensor(batch.seeds, dev, pin_memory),
        input_ids=_index_tensor(batch.input_ids, dev, pin_memory),
        layers=layers,
    )


def _as_numpy(tensor: Any) -> npt.NDArray[np.int64]:
    """A DGL/torch id tensor as a contiguous int64 numpy array."""
    return np.ascontiguousarray(tensor.detach().cpu().numpy(), dtype=np.int64)


def _layer_from_block(block: Any) -> Layer:
    """One DGL block as a plain :class:`Layer` (DGL lists dst nodes first among src)."""
    import dgl

    src, dst = block.edges(order="eid")
    num_dst = int(block.num_dst_nodes())
    return Layer(
        src=_as_numpy(src),
        dst=_as_numpy(dst),
        dst_in_src=np.arange(num_dst, dtype=np.int64),
        num_src=int(block.num_src_nodes()),
        num_dst=num_dst,
        etype=_as_numpy(block.edata[dgl.ETYPE]) if dgl.ETYPE in block.edata else None,
    )


def from_dgl_blocks(blocks: Sequence[Any]) -> Batch:
    """Convert DGL blocks (e.g. from ``dgl.dataloading.NeighborSampler``) to a plain batch.

    ``blocks`` is ordered input side first, as DGL's samplers return them.
    Raises ``ValueError`` if the list is empty or consecutive blocks do not chain.
    """
    import dgl  # lazy: the models and to_torch must work without DGL

    if len(blocks) == 0:
        raise ValueError("from_dgl_blocks needs at least one block")
    for i in range(len(blocks) - 1):
        if blocks[i].num_dst_nodes() != blocks[i + 1].num_src_nodes():
            raise ValueError(
                f"block {i} has {blocks[i].num_dst_nodes()} destinations but block {i + 1} "
                f"has {blocks[i + 1].num_src_nodes()} sources; blocks must chain"
            )
    return Batch(
        seeds=_as_numpy(blocks[-1].dstdata[dgl.NID]),
        input_ids=_as_numpy(blocks[0].srcdata[dgl.NID]),
        layers=tuple(_layer_from_block(block) for block in blocks),
    )


def synthetic_batch(num_seeds: int, fanouts: Sequence[int], num_nodes: int, seed: int = 0) -> Batch:
    """A random batch shaped like uniform neighbour sampling, for benchmarks and tests.

    ``fanouts`` is input side first, as in DGL (``[10, 10]``: every node gets
    10 sampled in-neighbours per layer). Neighbours are uniform over
    ``num_nodes`` global ids, duplicates merged, and each layer's destinations
    come first among its sources, as DGL orders them.
    """
    rng = np.random.default_rng(seed)
    dst_ids = rng.choice(num_nodes, size=num_seeds, replace=False).astype(np.int64)
    seeds = dst_ids
    layers: list[Layer] = []
    for fanout in reversed(list(fanouts)):
        num_dst = len(dst_ids)
        nbr_ids = rng.integers(0, num_nodes, size=num_dst * fanout, dtype=np.int64)
        # Local ids: destinations first, then the new neighbours in first-seen order.
        all_ids = np.concatenate([dst_ids, nbr_ids])
        uniq, first = np.unique(all_ids, return_index=True)
        order = np.argsort(first, kind="stable")
        src_ids = uniq[order]
        rank = np.empty(len(uniq), dtype=np.int64)
        rank[order] = np.arange(len(uniq), dtype=np.int64)
        src = rank[np.searchsorted(uniq, nbr_ids)]
        dst = np.repeat(np.arange(num_dst, dtype=np.int64), fanout)
        layers.append(Layer(src, dst, np.arange(num_dst, dtype=np.int64), len(src_ids), num_dst))
        dst_ids = src_ids
    return Batch(seeds=seeds, input_ids=dst_ids, layers=tuple(reversed(layers)))

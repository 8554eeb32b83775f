"""The sampler's primitives: an epoch's seed batches, DGL graphs over the stored CSC arrays, one
batch sampled by DGL and relabelled into a plain MFG (DGL and torch imported lazily)."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import InvalidInputError
from .mfg import Batch, Layer


def epoch_batches(seeds: NDArray[Any], batch_size: int, seed: int, epoch: int) -> list[NDArray[Any]]:
    """The epoch's shuffled seed batches (the last one may be short)."""
    rng = np.random.default_rng([seed, epoch])
    perm = seeds[rng.permutation(len(seeds))]
    return [perm[i : i + batch_size] for i in range(0, len(perm), batch_size)]


def eval_batches(seeds: NDArray[Any], batch_size: int) -> list[NDArray[Any]]:
    """An evaluation split's batches: its ids in stored order, no shuffle (the last may be short)."""
    return [seeds[i : i + batch_size] for i in range(0, len(seeds), batch_size)]


def dgl_graph(
    indptr: NDArray[Any], indices: NDArray[Any], etypes: NDArray[Any] | None = None, per_relation: bool = False
) -> Any:
    """A DGL graph over the CSC arrays without copying them (memory-mapped arrays stay mapped);
    edge ids are implicit (0..E-1), not materialised. ``etypes`` (each edge's relation) becomes
    the edge data ``dgl.ETYPE``, which sampled frontiers and blocks then carry.

    ``per_relation`` (a typed graph) numbers the edges relation by relation instead, as DGL's
    per-relation sampler (``sample_etype_neighbors``) needs: 8 bytes per edge for the edge ids and
    one relation per edge id (:func:`relation_edge_ids`); :func:`sample_batch` then samples each
    layer's fanout per relation."""
    import dgl
    import torch

    eids = torch.empty(0, dtype=torch.int64)
    if per_relation:
        if etypes is None:
            raise InvalidInputError("sampling per relation needs a graph with edge types (ingest-ogb, synth-mag)")
        ids, etypes = relation_edge_ids(np.asarray(etypes).reshape(-1))
        eids = torch.from_numpy(ids)
    g = dgl.graph(("csc", (torch.from_numpy(indptr), torch.from_numpy(indices), eids)), num_nodes=len(indptr) - 1)
    if etypes is not None:
        g.edata[dgl.ETYPE] = torch.from_numpy(np.asarray(etypes).reshape(-1))
    return g


def relation_edge_ids(etypes: NDArray[Any], chunk: int = 1 << 20) -> tuple[NDArray[np.int64], NDArray[Any]]:
    """Edge ids that number the edges relation by relation (relation 0's first, each relation's
    in stored order), and the relation of each edge id (sorted). Works a chunk at a time: besides
    the two results, memory is a few chunk-sized arrays."""
    relations = int(etypes.max()) + 1 if len(etypes) else 1
    starts = range(0, len(etypes), chunk)
    per_chunk = [np.bincount(etypes[lo : lo + chunk], minlength=relations) for lo in starts]
    counts = np.sum(per_chunk, axis=0, dtype=np.int64) if per_chunk else np.zeros(relations, dtype=np.int64)
    next_id = np.concatenate(([0], np.cumsum(counts)[:-1]))
    ids = np.empty(len(etypes), dtype=np.int64)
    for lo, in_chunk in zip(starts, per_chunk, strict=True):
        t = etypes[lo : lo + chunk].astype(np.int64)
        order = np.argsort(t, kind="stable")
        ts = t[order]
        first = np.searchsorted(ts, ts, side="left")  # each edge's rank among its relation's edges here
        ids[lo + order] = next_id[ts] + np.arange(len(ts)) - first
        next_id += in_chunk
    return ids, np.repeat(np.arange(len(counts), dtype=etypes.dtype), counts)


def relation_offsets(graph: Any) -> list[int]:
    """The first edge id of every relation up to the highest one present (and then the edge count) in a
    :func:`dgl_graph` built per relation; ``[0, 0]`` for a graph without edges (DGL needs a fanout
    for at least one relation)."""
    import dgl

    by_id = graph.edata[dgl.ETYPE].numpy()
    top = int(by_id[-1]) if len(by_id) else 0
    return np.searchsorted(by_id, np.arange(top + 2)).tolist()  # type: ignore[no-any-return]


def relation_frontier(graph: Any, dst: Any, offsets: list[int], fanout: int, copy_edata: bool = True) -> Any:
    """DGL's in-neighbour sample of ``dst`` (a tensor) with ``fanout`` edges per relation, in a
    :func:`dgl_graph` built per relation with these :func:`relation_offsets`."""
    import dgl
    import torch

    per = torch.full((len(offsets) - 1,), fanout, dtype=torch.int64)
    return dgl.sampling.sample_etype_neighbors(graph, dst, offsets, per, copy_ndata=False, copy_edata=copy_edata)


def blocks_to_batch(blocks: list[Any]) -> Batch:
    """Plain numpy form of DGL blocks (input side first)."""
    import dgl

    layers = []
    for b in blocks:
        src, dst = b.edges(order="eid")
        layers.append(
            Layer(
                src.numpy().astype(np.int64),
                dst.numpy().astype(np.int64),
                np.arange(b.num_dst_nodes(), dtype=np.int64),
                int(b.num_src_nodes()),
                int(b.num_dst_nodes()),
                b.edata[dgl.ETYPE].numpy() if dgl.ETYPE in b.edata else None,
            )
        )
    return Batch(
        blocks[-1].dstdata[dgl.NID].numpy().astype(np.int64),
        blocks[0].srcdata[dgl.NID].numpy().astype(np.int64),
        tuple(layers),
    )


def sample_batch(
    graph: Any,
    seeds: NDArray[Any],
    fanouts: tuple[int, ...],
    scratch: NDArray[Any],
    offsets: list[int] | None = None,
) -> Batch:
    """One batch: DGL samples each layer's in-neighbours; numpy relabels them into an MFG.

    Layers are sampled from the seeds outward (``fanouts[-1]`` for the seeds'
    layer, as DGL's NeighborSampler does). A layer's sources are its
    destinations first, then the newly reached nodes.
    ``scratch`` is an int32 (int64 past 2**31 nodes) array of ``num_nodes`` entries, all -1, left so.
    ``offsets`` (:func:`relation_offsets` of a graph built per relation): each layer's fanout is
    sampled per relation, as DGL samples a heterogeneous graph.
    """
    import dgl
    import torch

    dst = seeds.astype(np.int64)
    layers: list[Layer] = []
    typed = dgl.ETYPE in graph.edata  # copy_edata: the frontier carries each sampled edge's relation
    for fanout in reversed(fanouts):
        if offsets is not None:
            frontier = relation_frontier(graph, torch.from_numpy(dst), offsets, fanout)
        else:
            frontier = dgl.sampling.sample_neighbors(
                graph, torch.from_numpy(dst), fanout, copy_ndata=False, copy_edata=typed
            )
        u, v = (x.numpy() for x in frontier.edges(order="eid"))
        src_nodes, u_local, v_local = _relabel(u, v, dst, scratch)
        etype = frontier.edata[dgl.ETYPE].numpy() if typed else None
        layers.append(Layer(u_local, v_local, np.arange(len(dst), dtype=np.int64), len(src_nodes), len(dst), etype))
        dst = src_nodes
    return Batch(seeds.astype(np.int64), dst, tuple(reversed(layers)))


def _relabel(
    u: NDArray[Any], v: NDArray[Any], dst: NDArray[Any], slots: NDArray[Any]
) -> tuple[NDArray[Any], NDArray[Any], NDArray[Any]]:
    """(source nodes, local u, local v): sources are ``dst``, then the new nodes of ``u``."""
    from .kernels import relabel

    u_local = np.empty(len(u), dtype=np.int32)
    v_local = np.empty(len(v), dtype=np.int32)
    nodes = np.empty(len(dst) + len(u), dtype=np.int64)
    k = relabel(u, v, dst, slots, u_local, v_local, nodes)
    return nodes[:k].copy(), u_local, v_local

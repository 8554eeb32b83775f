"""A seeded generator of node-classification graphs, written straight into a store.

The model (all of it reproducible from ``seed``):

- **Communities.** Nodes fall into about ``nodes / community_size`` communities
  whose sizes follow a power law. Each community occupies a contiguous id range
  (like a real graph after locality reordering) and has one class; classes are
  dealt round-robin over a shuffled community order.
- **Degrees.** Each node sends a Pareto-distributed number of edges (exponent
  2.2, mean ``avg_degree / 2``). Targets inside a community are drawn with a
  Zipf-like preference for the community's first ids, so in-degrees follow a
  power law and each community has a few hubs. Every edge is stored in both
  directions, self-loops dropped and repeats merged, so the mean degree is a
  little under ``avg_degree``.
- **Homophily.** A target stays in the source's community with probability
  ``homophily``; otherwise it is a node of a random community of the same class
  with probability ``SAME_CLASS``, else of any community (size-weighted).
- **Features.** ``x_v = mu[class(v)] + noise * N(0, I)`` with unit-norm random
  class centroids ``mu``: one row alone is a weak class signal, the mean over a
  node's neighbours is a strong one, so a GNN clearly beats an MLP.
- **Labels** are the community's class, except that a fraction ``label_noise``
  of nodes take a uniformly random class instead; their features follow their
  own label, so they disagree with their neighbourhood (this is what keeps a
  GNN below 100 %). **Splits** are random node fractions.

Work is done in fixed blocks of node ids, each with its own generator derived
from ``(seed, stream, block)``, so the output does not depend on the memory
budget. Edges are generated twice (the CSC build counts, then places) and
never held whole in memory; features are generated once and streamed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import InvalidInputError
from ..graph import (
    DEFAULT_BUDGET,
    LABEL_KEY,
    SPLIT_KEYS,
    SPLITS,
    GraphWriter,
    build_csc,
    make_graph_doc,
    write_rows,
)
from ..progress import Progress
from ..store import Store, check_key
from ..tables import Schema, parse_dtype

EDGE_BLOCK = 1 << 14  # nodes per edge-generation block (fixed: part of the output's definition)
FEAT_BLOCK_ELEMS = 1 << 21  # feature values per feature block
DEGREE_EXPONENT = 2.2  # Pareto exponent of out-degrees
DEGREE_CAP = 200  # cap on one node's out-degree, as a multiple of the mean
COMMUNITY_EXPONENT = 2.0  # Pareto exponent of community sizes
COMMUNITY_CAP = 30.0  # cap on one community's size, as a multiple of the mean
HUB_SKEW = 0.95  # Zipf exponent of target choice inside a community
SAME_CLASS = 0.5  # chance a cross-community edge stays within the class
PROGRESS_PASSES = 3  # progress totals PROGRESS_PASSES * nodes: features, edge count, edge place
_FEATURES, _EDGES, _SPLITS, _MODEL, _LABELS = 2, 1, 3, 0, 4  # rng streams


@dataclass(frozen=True)
class SynthModel:
    """The community-level description of a synthetic graph (O(communities + classes·dim))."""

    nodes: int
    classes: int
    starts: NDArray[Any]  # int64 [K+1], community k holds ids [starts[k], starts[k+1])
    comm_class: NDArray[Any]  # int64 [K]
    centroids: NDArray[Any]  # float32 [classes, dim], unit rows
    by_class: NDArray[Any]  # community ids ordered by class
    by_class_cum: NDArray[Any]  # cumulative sizes in that order
    class_lo: NDArray[Any]  # int64 [classes], cumulative size before each class's first community
    class_size: NDArray[Any]  # int64 [classes]

    @property
    def sizes(self) -> NDArray[Any]:
        return np.diff(self.starts)

    def community_of(self, ids: NDArray[Any]) -> NDArray[Any]:
        return np.searchsorted(self.starts, ids, side="right") - 1

    def community_class(self, lo: int, hi: int) -> NDArray[Any]:
        classes: NDArray[Any] = self.comm_class[self.community_of(np.arange(lo, hi, dtype=np.int64))]
        return classes


def node_labels(model: SynthModel, seed: int, label_noise: float, lo: int, hi: int) -> NDArray[Any]:
    """Labels of nodes ``[lo, hi)``: the community class, random for a ``label_noise`` share."""
    out = model.community_class(lo, hi)
    if label_noise <= 0:
        return out
    for b in range(lo // EDGE_BLOCK, -(-hi // EDGE_BLOCK)):
        b_lo = b * EDGE_BLOCK
        b_hi = min(model.nodes, b_lo + EDGE_BLOCK)
        rng = np.random.default_rng([seed, _LABELS, b])
        flip = rng.random(b_hi - b_lo) < label_noise
        other = rng.integers(0, model.classes, b_hi - b_lo)
        a, z = max(lo, b_lo), min(hi, b_hi)
        sel = flip[a - b_lo : z - b_lo]
        out[a - lo : z - lo][sel] = other[a - b_lo : z - b_lo][sel]
    return out


def make_model(nodes: int, dim: int, classes: int, seed: int, community_size: int) -> SynthModel:
    rng = np.random.default_rng([seed, _MODEL])
    k = int(min(nodes, max(2 * classes, round(nodes / community_size))))
    raw = np.minimum(COMMUNITY_CAP, rng.pareto(COMMUNITY_EXPONENT - 1, k) + 1.0)
    sizes = _apportion(raw, nodes)
    starts = np.concatenate(([0], np.cumsum(sizes))).astype(np.int64)
    comm_class = (rng.permutation(k) % classes).astype(np.int64)
    mu = rng.standard_normal((classes, dim))
    mu /= np.maximum(np.linalg.norm(mu, axis=1, keepdims=True), 1e-12)
    by_class = np.argsort(comm_class, kind="stable")
    by_class_cum = np.cumsum(sizes[by_class])
    class_size = np.bincount(comm_class, weights=sizes, minlength=classes).astype(np.int64)
    class_lo = np.concatenate(([0], np.cumsum(class_size)[:-1])).astype(np.int64)
    return SynthModel(
        nodes, classes, starts, comm_class, mu.astype(np.float32), by_class, by_class_cum, class_lo, class_size
    )


def _apportion(weights: NDArray[Any], total: int) -> NDArray[Any]:
    """Integer sizes >= 1 summing to ``total``, proportional to ``weights`` (largest remainder)."""
    k = len(weights)
    share = (total - k) * weights / weights.sum()
    sizes = np.floor(share).astype(np.int64)
    short = total - k - int(sizes.sum())
    sizes[np.argsort(sizes - share, kind="stable")[:short]] += 1
    out: NDArray[Any] = sizes + 1
    return out


def _zipf_rank(size: NDArray[Any], u: NDArray[Any]) -> NDArray[Any]:
    """Ranks in [0, size) drawn with probability about proportional to (rank + 1) ** -HUB_SKEW."""
    e = 1.0 - HUB_SKEW
    r = np.floor((1.0 + u * ((size + 1.0) ** e - 1.0)) ** (1.0 / e)) - 1.0
    ranks: NDArray[Any] = np.clip(r.astype(np.int64), 0, size - 1)
    return ranks


def block_edges(
    model: SynthModel, seed: int, block: int, avg_degree: float, homophily: float
) -> tuple[NDArray[Any], NDArray[Any]]:
    """The out-edges of nodes ``[block * EDGE_BLOCK, ...)`` (one direction, no self-loops)."""
    lo = block * EDGE_BLOCK
    hi = min(model.nodes, lo + EDGE_BLOCK)
    rng = np.random.default_rng([seed, _EDGES, block])
    mean = avg_degree / 2.0
    xm = mean * (DEGREE_EXPONENT - 1.0) / DEGREE_EXPONENT
    x = xm * (1.0 - rng.random(hi - lo)) ** (-1.0 / DEGREE_EXPONENT)
    cap = max(1.0, DEGREE_CAP * mean)
    deg = np.minimum(np.floor(x + rng.random(hi - lo)), cap).astype(np.int64)
    src = np.repeat(np.arange(lo, hi, dtype=np.int64), deg)
    comm = np.repeat(model.community_of(np.arange(lo, hi, dtype=np.int64)), deg)
    m = len(src)
    stay = rng.random(m) < homophily
    same = rng.random(m) < SAME_CLASS
    u = rng.random(m)
    target = comm.copy()
    cls = model.comm_class[comm[~stay & same]]
    pos = model.class_lo[cls] + np.floor(u[~stay & same] * model.class_size[cls]).astype(np.int64)
    target[~stay & same] = model.by_class[np.searchsorted(model.by_class_cum, pos, side="right")]
    anyc = ~stay & ~same
    target[anyc] = model.community_of(np.floor(u[anyc] * model.nodes).astype(np.int64))
    sizes = model.sizes[target]
    dst = model.starts[target] + _zipf_rank(sizes, rng.random(m))
    keep = dst != src
    return src[keep], dst[keep]


def block_features(
    model: SynthModel, seed: int, block: int, rows: int, noise: float, label_noise: float, dtype: np.dtype[Any]
) -> NDArray[Any]:
    lo = block * rows
    hi = min(model.nodes, lo + rows)
    rng = np.random.default_rng([seed, _FEATURES, block])
    x = rng.standard_normal((hi - lo, model.centroids.shape[1]), dtype=np.float32)
    x *= np.float32(noise)
    x += model.centroids[node_labels(model, seed, label_noise, lo, hi)]
    return x if dtype == np.float32 else x.astype(dtype)


def block_splits(model: SynthModel, seed: int, block: int, fracs: tuple[float, float, float]) -> list[NDArray[Any]]:
    lo = block * EDGE_BLOCK
    hi = min(model.nodes, lo + EDGE_BLOCK)
    u = np.random.default_rng([seed, _SPLITS, block]).random(hi - lo)
    edges = np.cumsum((0.0, *fracs))
    return [lo + np.flatnonzero((u >= edges[i]) & (u < edges[i + 1])) for i in range(3)]


def _check(
    nodes: int,
    avg_degree: float,
    dim: int,
    classes: int,
    homophily: float,
    noise: float,
    fracs: tuple[float, float, float],
    label_noise: float,
) -> None:
    numbers = {"avg_degree": avg_degree, "homophily": homophily, "noise": noise, "label_noise": label_noise}
    numbers.update(zip(("train_frac", "valid_frac", "test_frac"), fracs, strict=True))
    for name, value in numbers.items():
        if not math.isfinite(value):
            raise InvalidInputError(f"{name} must be a finite number, got {value}")
    if nodes < 1 or dim < 1 or classes < 1:
        raise InvalidInputError(f"nodes, dim and classes must be >= 1 (got {nodes}, {dim}, {classes})")
    if classes > nodes:
        raise InvalidInputError(f"{classes} classes need at least as many nodes (got {nodes})")
    if avg_degree < 0 or noise < 0:
        raise InvalidInputError("avg_degree and noise must not be negative")
    for name, value in (("homophily", homophily), ("label_noise", label_noise)):
        if not 0.0 <= value <= 1.0:
            raise InvalidInputError(f"{name} must lie in [0, 1], got {value}")
    if min(fracs) < 0 or sum(fracs) > 1.0 + 1e-9:
        raise InvalidInputError(f"split fractions {fracs} must be >= 0 and sum to at most 1")


def synth(
    store: Store,
    nodes: int,
    avg_degree: float = 15.0,
    dim: int = 128,
    classes: int = 16,
    homophily: float = 0.8,
    noise: float = 0.6,
    seed: int = 0,
    train_frac: float = 0.1,
    valid_frac: float = 0.05,
    test_frac: float = 0.05,
    memory_budget: int = DEFAULT_BUDGET,
    progress: Progress = None,
    feat_key: str = "node/_/feat",
    dtype: str = "float32",
    *,
    community_size: int = 1000,
    label_noise: float = 0.15,
    replace: bool = False,
) -> dict[str, Any]:
    """Generate a graph, labels, splits and the feature table ``feat_key``; returns the graph doc.

    ``progress`` gets node counts and totals ``PROGRESS_PASSES * nodes``.
    """
    nodes, dim, classes = int(nodes), int(dim), int(classes)
    fracs = (float(train_frac), float(valid_frac), float(test_frac))
    _check(nodes, avg_degree, dim, classes, homophily, noise, fracs, label_noise)
    check_key(feat_key)
    np_dtype = parse_dtype(dtype, "feature dtype")
    if np_dtype.kind != "f":
        raise InvalidInputError(f"feature dtype must be a float type, got {dtype!r}")
    started = time.perf_counter()
    model = make_model(nodes, dim, classes, seed, community_size)
    blocks = -(-nodes // EDGE_BLOCK)
    with GraphWriter(store, replace=replace) as gw:
        gw.check_free(feat_key)
        _write_features(gw, model, seed, noise, label_noise, np_dtype, feat_key, progress)
        with gw.writer(LABEL_KEY, Schema("int64", nodes, 1)) as w:
            for lo in range(0, nodes, EDGE_BLOCK):
                w.write(node_labels(model, seed, label_noise, lo, min(nodes, lo + EDGE_BLOCK)))
        sizes = _write_splits(gw, model, seed, blocks, fracs)

        def edge_chunks() -> Iterator[tuple[NDArray[Any], NDArray[Any]]]:
            for b in range(blocks):
                s, d = block_edges(model, seed, b, avg_degree, homophily)
                if progress:
                    progress(min(nodes, (b + 1) * EDGE_BLOCK) - b * EDGE_BLOCK)
                yield np.concatenate((s, d)), np.concatenate((d, s))

        stored = build_csc(edge_chunks, nodes, store, memory_budget, dedup=True, table_writer=gw.writer)
        params = {
            "nodes": nodes,
            "avg_degree": avg_degree,
            "dim": dim,
            "classes": classes,
            "homophily": homophily,
            "noise": noise,
            "seed": seed,
            "train_frac": train_frac,
            "valid_frac": valid_frac,
            "test_frac": test_frac,
            "community_size": community_size,
            "label_noise": label_noise,
            "communities": len(model.comm_class),
            "dtype": np_dtype.name,
            "seconds": round(time.perf_counter() - started, 3),
        }
        doc = make_graph_doc(
            num_nodes=nodes,
            num_edges=stored,
            num_classes=classes,
            num_labeled=nodes,
            split_sizes=sizes,
            source="synth",
            params=params,
            symmetric=True,
            sorted_=True,
            dedup=True,
            features=feat_key,
            feat_dim=dim,
        )
        gw.publish(doc)
    return doc


def _write_features(
    gw: GraphWriter,
    model: SynthModel,
    seed: int,
    noise: float,
    label_noise: float,
    dtype: np.dtype[Any],
    feat_key: str,
    progress: Progress,
) -> None:
    dim = model.centroids.shape[1]
    rows = max(1, FEAT_BLOCK_ELEMS // dim)
    with gw.writer(feat_key, Schema(dtype.name, model.nodes, dim)) as w:
        for b in range(-(-model.nodes // rows)):
            x = block_features(model, seed, b, rows, noise, label_noise, dtype)
            w.write(x)
            if progress:
                progress(len(x))


def _write_splits(
    gw: GraphWriter, model: SynthModel, seed: int, blocks: int, fracs: tuple[float, float, float]
) -> dict[str, int]:
    """Two cheap passes per split: count, then write (a table's row count comes first)."""
    counts = np.zeros(3, dtype=np.int64)
    for b in range(blocks):
        counts += [len(ids) for ids in block_splits(model, seed, b, fracs)]
    for i, name in enumerate(SPLITS):
        with gw.writer(SPLIT_KEYS[name], Schema("int64", int(counts[i]), 1)) as w:
            for b in range(blocks):
                write_rows(w, block_splits(model, seed, b, fracs)[i])
    return {name: int(counts[i]) for i, name in enumerate(SPLITS)}

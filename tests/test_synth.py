"""The synthetic generator: determinism, shapes, structure, and a class signal needing the graph."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import featdb
from featdb.errors import AlreadyExistsError, InvalidInputError, InvalidKeyError
from featdb.graph import load_graph
from featdb.ingest.synth import PROGRESS_PASSES, synth


def make(tmp_path: Path, name: str, **kw: Any) -> tuple[Any, dict[str, Any]]:
    args = {"nodes": 6000, "avg_degree": 10, "dim": 16, "classes": 8, "seed": 1, "community_size": 200}
    args.update(kw)
    store = featdb.create(tmp_path / name)
    return store, synth(store, **args)


def contents(store: Any) -> dict[str, np.ndarray]:
    g = load_graph(store)
    return {
        "indptr": g.indptr,
        "indices": g.indices,
        "labels": g.labels,
        "train": g.train,
        "valid": g.valid,
        "test": g.test,
        "feat": store.read_all(g.info["features"]),
    }


def test_deterministic_and_independent_of_budget(tmp_path: Path) -> None:
    a, _ = make(tmp_path, "a", memory_budget=1)
    b, _ = make(tmp_path, "b", memory_budget=1 << 30)
    c, _ = make(tmp_path, "c", seed=2)
    ca, cb, cc = contents(a), contents(b), contents(c)
    for k in ca:
        np.testing.assert_array_equal(ca[k], cb[k], err_msg=k)
    assert not np.array_equal(ca["feat"], cc["feat"])
    assert not np.array_equal(ca["indices"], cc["indices"])


def test_shapes_and_doc(tmp_path: Path) -> None:
    seen: list[int] = []
    store, doc = make(tmp_path, "s", progress=seen.append)
    g = load_graph(store)
    n = 6000
    assert sum(seen) == PROGRESS_PASSES * n
    assert store.schema("node/_/feat").dtype == "float32"
    assert store.read_all("node/_/feat").shape == (n, 16)
    assert g.labels.shape == (n,) and g.labels.min() >= 0 and g.labels.max() < 8
    assert len(np.unique(g.labels)) == 8
    assert len(g.indptr) == n + 1
    assert g.indptr[-1] == len(g.indices) == g.num_edges == doc["num_edges"]
    splits = np.concatenate([g.train, g.valid, g.test])
    assert len(np.unique(splits)) == len(splits)  # disjoint
    assert abs(len(g.train) - 0.1 * n) < 0.03 * n and abs(len(g.test) - 0.05 * n) < 0.02 * n
    assert doc["source"] == "synth" and doc["features"] == "node/_/feat" and doc["feat_dim"] == 16
    assert doc["num_classes"] == 8 and doc["params"]["seed"] == 1
    sizes = (doc["num_train"], doc["num_valid"], doc["num_test"])
    assert sizes == (len(g.train), len(g.valid), len(g.test))
    assert 0.7 * 10 < g.num_edges / n <= 10.5
    assert [t["key"] for t in store.tables()] == ["node/_/feat"]
    assert store.verify() == []


def test_graph_is_simple_symmetric_and_sorted(tmp_path: Path) -> None:
    store, _ = make(tmp_path, "s")
    g = load_graph(store)
    dst = np.repeat(np.arange(g.num_nodes), np.diff(g.indptr))
    src = g.indices
    assert not np.any(src == dst)  # no self-loops
    fwd = dst * g.num_nodes + src
    assert np.all(np.diff(fwd) > 0)  # sorted per node and no duplicates
    rev = np.sort(src * g.num_nodes + dst)
    np.testing.assert_array_equal(rev, fwd)  # every edge has its reverse


def test_locality_and_skew(tmp_path: Path) -> None:
    store, _ = make(tmp_path, "s", nodes=20000, community_size=500)
    g = load_graph(store)
    deg = np.diff(g.indptr)
    dst = np.repeat(np.arange(g.num_nodes), deg)
    near = np.abs(g.indices - dst) < 2000
    assert near.mean() > 0.7  # most edges stay inside a community: a contiguous id range
    assert deg.max() > 10 * deg.mean()  # power-law tail: hubs
    top = np.sort(deg)[::-1][: len(deg) // 10].sum() / deg.sum()
    assert top > 0.25  # the 10 % best-connected nodes hold a large share of the edges


def test_float16_and_custom_key(tmp_path: Path) -> None:
    store, doc = make(tmp_path, "s", dtype="float16", feat_key="node/item/x", nodes=500, classes=3)
    assert store.schema("node/item/x").dtype == "float16"
    assert doc["features"] == "node/item/x"


def test_bad_arguments(tmp_path: Path) -> None:
    store = featdb.create(tmp_path / "s")
    for kw in (
        {"nodes": 0},
        {"classes": 0},
        {"homophily": 1.5},
        {"train_frac": 0.9, "valid_frac": 0.2},
        {"dtype": "int32"},
        {"label_noise": -0.1},
        {"nodes": 3, "classes": 5},
        {"noise": float("nan")},
        {"noise": float("inf")},
        {"avg_degree": float("nan")},
        {"train_frac": float("nan")},
        {"test_frac": float("inf")},
    ):
        args = {"nodes": 100, "avg_degree": 4, "dim": 4, "classes": 3, **kw}
        with pytest.raises(InvalidInputError):
            synth(store, **args)
    with pytest.raises(InvalidKeyError):
        synth(store, 100, 4, 4, 3, feat_key="graph/x/feat")
    assert store.tables(include_internal=True) == [] and store.catalog.get("graph") is None


def state(store: Any) -> tuple[Any, ...]:
    files = sorted(t["file"] for t in store.tables(include_internal=True))
    return files, store.catalog.get("graph")


def test_existing_graph_or_table_is_kept(tmp_path: Path) -> None:
    store, _ = make(tmp_path, "s", nodes=300, classes=3)
    before = state(store)
    with pytest.raises(AlreadyExistsError):
        synth(store, 300, 4, 4, 3)
    other = featdb.create(tmp_path / "o")
    other.write_table("node/_/feat", np.zeros((2, 2), np.float32))
    with pytest.raises(AlreadyExistsError, match="node/_/feat"):
        synth(other, 300, 4, 4, 3)
    assert other.catalog.get("graph") is None and len(other.tables(include_internal=True)) == 1
    assert state(store) == before
    doc = synth(store, 400, 4, 4, 3, replace=True)
    assert load_graph(store).num_nodes == 400 == doc["num_nodes"]
    assert store.verify() == []


# ----------------------------------------------------------------------------- the class signal
def nearest_centroid(x: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray) -> float:
    classes = np.unique(y[train])
    cent = np.stack([x[train][y[train] == c].mean(0) for c in classes])
    d = (x[test] ** 2).sum(1)[:, None] - 2 * x[test] @ cent.T + (cent**2).sum(1)[None]
    return float((classes[d.argmin(1)] == y[test]).mean())


def neighbour_mean(g: Any, x: np.ndarray) -> np.ndarray:
    deg = np.diff(g.indptr)
    sums = np.add.reduceat(x[g.indices], np.minimum(g.indptr[:-1], len(g.indices) - 1), axis=0)
    sums[deg == 0] = 0
    return sums / np.maximum(deg, 1)[:, None]


def test_class_signal_needs_the_graph(tmp_path: Path) -> None:
    store, _ = make(tmp_path, "s", nodes=30000, avg_degree=15, dim=32, classes=10, community_size=500)
    g = load_graph(store)
    x = store.read_all("node/_/feat").astype(np.float64)
    raw = nearest_centroid(x, g.labels, g.train, g.test)
    hop1 = nearest_centroid(neighbour_mean(g, x), g.labels, g.train, g.test)
    assert raw > 2.5 / 10  # well above chance (10 %) ...
    assert raw < 0.7  # ... but weak
    assert hop1 >= raw + 0.10  # one hop of mean aggregation wins by >= 10 points


def softmax_regression(
    x: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray, classes: int, epochs: int = 300, lr: float = 0.5
) -> float:
    """Full-batch multinomial logistic regression in numpy (a linear 'MLP' baseline)."""
    mu, sd = x[train].mean(0), x[train].std(0) + 1e-6
    z = (x - mu) / sd
    w = np.zeros((z.shape[1], classes))
    b = np.zeros(classes)
    onehot = np.eye(classes)[y[train]]
    for _ in range(epochs):
        logits = z[train] @ w + b
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        grad = (p - onehot) / len(train)
        w -= lr * (z[train].T @ grad + 1e-4 * w)
        b -= lr * grad.sum(0)
    return float(((z[test] @ w + b).argmax(1) == y[test]).mean())


@pytest.mark.slow
def test_graph_features_beat_node_features_default_params(tmp_path: Path) -> None:
    """With the defaults (16 classes, noise 0.6), a linear model on a node's own row stays
    weak while the same model on SGC-style propagated rows (self, 1-hop, 2-hop means) wins
    by well over 10 points: the class signal needs the graph."""
    store = featdb.create(tmp_path / "s")
    synth(store, 100_000, dim=32, seed=3)
    g = load_graph(store)
    x = store.read_all("node/_/feat")
    h1 = neighbour_mean(g, x)
    h2 = neighbour_mean(g, h1)
    own = softmax_regression(x, g.labels, g.train, g.test, g.num_classes)
    prop = softmax_regression(np.hstack([x, h1, h2]), g.labels, g.train, g.test, g.num_classes)
    assert 0.3 < own < 0.65
    assert prop >= own + 0.15

"""The stored graph: bounded-memory CSC build, .npy and OGB ingest, validation, atomicity."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import featdb
from featdb.errors import (
    AlreadyExistsError,
    GraphNotFoundError,
    IdsOutOfRangeError,
    InvalidInputError,
    SchemaMismatchError,
)
from featdb.graph import (
    CSC_PHASES,
    INDICES_KEY,
    INDPTR_KEY,
    build_csc,
    graph_info,
    load_graph,
    remove_stale_staging,
    stale_staging,
)
from featdb.ingest import ingest_graph, ingest_ogb


@pytest.fixture()
def store(tmp_path: Path) -> Any:
    with featdb.create(tmp_path / "store") as s:
        yield s


def reference_csc(src: np.ndarray, dst: np.ndarray, n: int, dedup: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """CSC by plain sorting: order edges by (dst, src)."""
    order = np.lexsort((src, dst))
    s, d = src[order], dst[order]
    if dedup and len(s):
        keep = np.concatenate(([True], (s[1:] != s[:-1]) | (d[1:] != d[:-1])))
        s, d = s[keep], d[keep]
    indptr = np.concatenate(([0], np.cumsum(np.bincount(d, minlength=n)))).astype(np.int64)
    return indptr, s.astype(np.int64)


def chunked(src: np.ndarray, dst: np.ndarray, size: int) -> Any:
    def gen() -> Any:
        for lo in range(0, len(src), size):
            yield src[lo : lo + size], dst[lo : lo + size]

    return gen


def read_csc(store: Any) -> tuple[np.ndarray, np.ndarray]:
    return store.read_all(INDPTR_KEY).reshape(-1), store.read_all(INDICES_KEY).reshape(-1)


def snapshot(store: Any) -> tuple[Any, ...]:
    """Everything a failed ingest must leave unchanged."""
    tables = sorted((t["key"], t["file"]) for t in store.tables(include_internal=True))
    files = sorted(
        p.relative_to(store.root).as_posix() for p in store.root.rglob("*") if p.is_file() and "catalog" not in p.parts
    )
    return tables, store.catalog.get("graph"), sorted(store.files()), files


# ----------------------------------------------------------------------------- build_csc
@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("dedup", [False, True])
def test_csc_matches_reference(store: Any, seed: int, dedup: bool) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 400))
    e = int(rng.integers(0, 4000))
    hot = rng.integers(0, n, max(1, n // 10))  # repeats and skew: duplicates guaranteed
    src = np.where(rng.random(e) < 0.3, rng.choice(hot, e), rng.integers(0, n, e))
    tail = rng.integers(0, n // 2 + 1, e)  # above n/2, only `hot` nodes get edges: isolated ones
    dst = np.where(rng.random(e) < 0.3, rng.choice(hot, e), tail)
    stored = build_csc(chunked(src, dst, 333), n, store, memory_budget=1, dedup=dedup)
    indptr, indices = read_csc(store)
    ref_ptr, ref_idx = reference_csc(src, dst, n, dedup)
    assert stored == len(ref_idx)
    np.testing.assert_array_equal(indptr, ref_ptr)
    np.testing.assert_array_equal(indices, ref_idx)


def test_tiny_budget_equals_big_budget(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    n, e = 3000, 20000
    src, dst = rng.integers(0, n, e), rng.integers(0, n, e)
    results = []
    for i, budget in enumerate((1, 1 << 30)):
        with featdb.create(tmp_path / f"s{i}") as s:
            for dedup in (False, True):
                keys = {"indptr_key": f"graph/t{int(dedup)}/indptr", "indices_key": f"graph/t{int(dedup)}/indices"}
                build_csc(chunked(src, dst, 7000), n, s, memory_budget=budget, dedup=dedup, **keys)
                results.append((s.read_all(keys["indptr_key"]), s.read_all(keys["indices_key"])))
            assert not any((s.root / "tmp").iterdir())  # the scratch file is gone
    for a, b in zip(results[:2], results[2:], strict=True):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])


def test_unsorted_keeps_input_order(store: Any) -> None:
    src = np.array([5, 1, 3, 1, 0])
    dst = np.array([2, 2, 0, 2, 2])
    build_csc(chunked(src, dst, 2), 6, store, sort=False)
    indptr, indices = read_csc(store)
    np.testing.assert_array_equal(indptr, [0, 1, 1, 5, 5, 5, 5])
    np.testing.assert_array_equal(indices, [3, 5, 1, 1, 0])


def test_progress_counts_every_phase(store: Any) -> None:
    src, dst = np.arange(5000) % 97, np.arange(5000) % 89
    seen: list[int] = []
    build_csc(chunked(src, dst, 1000), 100, store, memory_budget=1, progress=seen.append, dedup=True)
    assert sum(seen) == CSC_PHASES * 5000


def test_empty_graph(store: Any) -> None:
    assert build_csc(chunked(np.zeros(0, np.int64), np.zeros(0, np.int64), 10), 4, store) == 0
    indptr, indices = read_csc(store)
    np.testing.assert_array_equal(indptr, np.zeros(5))
    assert indices.size == 0


def test_changing_edge_source_is_detected(store: Any) -> None:
    calls = {"n": 0}

    def flaky() -> Any:
        calls["n"] += 1
        yield np.array([0, 1, 2]), (np.array([1, 1, 1]) if calls["n"] == 1 else np.array([2, 2, 2]))

    with pytest.raises(InvalidInputError, match="second pass"):
        build_csc(flaky, 3, store)


def test_build_csc_rejects_bad_ids(store: Any) -> None:
    with pytest.raises(IdsOutOfRangeError, match="destination id 5"):
        build_csc(chunked(np.array([0, 1]), np.array([1, 5]), 1), 5, store)
    with pytest.raises(IdsOutOfRangeError, match="source id -1"):
        build_csc(chunked(np.array([0, -1]), np.array([1, 2]), 1), 5, store)
    with pytest.raises(SchemaMismatchError):
        build_csc(chunked(np.array([0.0, 1.0]), np.array([1, 2]), 2), 5, store)
    assert store.tables(include_internal=True) == []


# ----------------------------------------------------------------------------- ingest_graph
def write_dataset(tmp_path: Path, n: int = 500, e: int = 3000, seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    src, dst = rng.integers(0, n, e), rng.integers(0, n, e)
    labels = rng.integers(0, 7, n)
    labels[rng.random(n) < 0.2] = -1
    labeled = np.flatnonzero(labels >= 0)
    perm = rng.permutation(labeled)
    splits = {"train": perm[:100], "valid": perm[100:150], "test": perm[150:200]}
    np.save(tmp_path / "edges_2xE.npy", np.stack([src, dst]).astype(np.int32))
    np.save(tmp_path / "edges_Ex2.npy", np.stack([src, dst], axis=1))
    np.save(tmp_path / "edges_F.npy", np.asfortranarray(np.stack([src, dst], axis=1)))
    np.save(tmp_path / "labels.npy", labels)
    np.savez(tmp_path / "split.npz", **splits)
    return {"n": n, "src": src, "dst": dst, "labels": labels, "splits": splits}


def test_ingest_graph_layouts_and_symmetry(tmp_path: Path) -> None:
    data = write_dataset(tmp_path)
    n, src, dst = data["n"], data["src"], data["dst"]
    sym_ref = reference_csc(np.concatenate((src, dst)), np.concatenate((dst, src)), n)
    for i, name in enumerate(("edges_2xE.npy", "edges_Ex2.npy", "edges_F.npy")):
        with featdb.create(tmp_path / f"s{i}") as s:
            doc = ingest_graph(
                s,
                tmp_path / name,
                labels_path=tmp_path / "labels.npy",
                split_path=tmp_path / "split.npz",
                memory_budget=1,
            )
            g = load_graph(s)
            np.testing.assert_array_equal(g.indptr, sym_ref[0])
            np.testing.assert_array_equal(g.indices, sym_ref[1])
            np.testing.assert_array_equal(g.labels, data["labels"])
            for k in ("train", "valid", "test"):
                np.testing.assert_array_equal(g.split(k), data["splits"][k])
            assert g.num_nodes == n and g.num_edges == 2 * len(src) == doc["num_edges"]
            assert g.num_classes == doc["num_classes"] == data["labels"].max() + 1
            assert doc["num_labeled"] == int((data["labels"] >= 0).sum())
            assert (doc["num_train"], doc["num_valid"], doc["num_test"]) == (100, 50, 50)
            assert doc["source"] == "edges" and doc["symmetric"] and doc["sorted"]
            assert graph_info(s) == doc
            assert s.verify() == []
    with featdb.create(tmp_path / "directed") as s:
        ingest_graph(s, tmp_path / "edges_2xE.npy", num_nodes=n, symmetric=False)
        indptr, indices = read_csc(s)
        ref = reference_csc(src, dst, n)
        np.testing.assert_array_equal(indptr, ref[0])
        np.testing.assert_array_equal(indices, ref[1])


def test_ingest_infers_num_nodes_and_defaults(tmp_path: Path, store: Any) -> None:
    np.save(tmp_path / "e.npy", np.array([[0, 1, 1], [1, 2, 9]]))
    ingest_graph(store, tmp_path / "e.npy", symmetric=False, dedup=True)
    g = load_graph(store)
    assert g.num_nodes == 10 and g.num_classes == 0
    assert (g.labels == -1).all() and len(g.labels) == 10
    assert len(g.train) == len(g.valid) == len(g.test) == 0
    np.testing.assert_array_equal(g.in_neighbors(2), [1])


def test_float_labels_nan_and_mask_splits(tmp_path: Path, store: Any) -> None:
    np.save(tmp_path / "e.npy", np.array([[0, 1], [1, 2], [2, 3]]))
    np.save(tmp_path / "y.npy", np.array([[1.0], [np.nan], [0.0], [3.0]]))
    np.savez(
        tmp_path / "s.npz",
        train=np.array([True, False, True, False]),
        val=np.array([3]),
        test=np.array([], dtype=np.int64),
    )
    doc = ingest_graph(store, tmp_path / "e.npy", labels_path=tmp_path / "y.npy", split_path=tmp_path / "s.npz")
    g = load_graph(store, mmap=True)
    np.testing.assert_array_equal(g.labels, [1, -1, 0, 3])
    np.testing.assert_array_equal(g.train, [0, 2])
    np.testing.assert_array_equal(g.valid, [3])
    assert doc["num_classes"] == 4 and doc["num_labeled"] == 3


BAD_CASES = {
    "3xE": (lambda p: np.save(p / "e.npy", np.zeros((3, 5), np.int64)), {}, SchemaMismatchError),
    "1-D": (lambda p: np.save(p / "e.npy", np.zeros(6, np.int64)), {}, SchemaMismatchError),
    "float": (lambda p: np.save(p / "e.npy", np.zeros((2, 5))), {}, SchemaMismatchError),
    "too-big": (lambda p: np.save(p / "e.npy", np.array([[0, 1], [1, 10]])), {"num_nodes": 10}, IdsOutOfRangeError),
    "negative": (lambda p: np.save(p / "e.npy", np.array([[0, -1], [1, 2]])), {"num_nodes": 10}, IdsOutOfRangeError),
    "not-npy": (lambda p: (p / "e.npy").write_bytes(b"hello"), {}, InvalidInputError),
    "missing": (lambda p: None, {}, InvalidInputError),
    "labels-len": (
        lambda p: np.save(p / "y.npy", np.zeros(3, np.int64)),
        {"labels_path": "y.npy", "num_nodes": 10},
        SchemaMismatchError,
    ),
    "labels-neg": (lambda p: np.save(p / "y.npy", np.full(10, -2)), {"labels_path": "y.npy"}, InvalidInputError),
    "labels-frac": (lambda p: np.save(p / "y.npy", np.full(10, 0.5)), {"labels_path": "y.npy"}, InvalidInputError),
    "split-key": (lambda p: np.savez(p / "s.npz", train=[1], test=[2]), {"split_path": "s.npz"}, InvalidInputError),
    "split-range": (
        lambda p: np.savez(p / "s.npz", train=[1], valid=[2], test=[10]),
        {"split_path": "s.npz"},
        IdsOutOfRangeError,
    ),
    "split-unlabeled": (
        lambda p: (
            np.save(p / "y.npy", np.array([0] * 9 + [-1])),
            np.savez(p / "s.npz", train=[1], valid=[2], test=[9]),
        ),
        {"split_path": "s.npz", "labels_path": "y.npy"},
        InvalidInputError,
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
@pytest.mark.parametrize("with_graph", [False, True])
def test_bad_input_changes_nothing(tmp_path: Path, store: Any, case: str, with_graph: bool) -> None:
    src_dir = tmp_path / "in"
    src_dir.mkdir()
    np.save(src_dir / "good.npy", np.array([[0, 1, 2], [1, 2, 9]]))
    if with_graph:  # a failed replace must leave the old graph whole
        ingest_graph(store, src_dir / "good.npy")
    before = snapshot(store)
    make, kwargs, err = BAD_CASES[case]
    make(src_dir)
    if not (src_dir / "e.npy").exists() and case != "missing":
        (src_dir / "e.npy").write_bytes((src_dir / "good.npy").read_bytes())
    kwargs = {k: (src_dir / v if k.endswith("_path") else v) for k, v in kwargs.items()}
    with pytest.raises(err):
        ingest_graph(store, src_dir / "e.npy", memory_budget=1, replace=True, **kwargs)
    assert snapshot(store) == before
    if with_graph:
        assert load_graph(store).num_edges == 6


def test_existing_graph_needs_replace(tmp_path: Path, store: Any) -> None:
    np.save(tmp_path / "a.npy", np.array([[0, 1], [1, 2]]))
    np.save(tmp_path / "b.npy", np.array([[0], [4]]))
    ingest_graph(store, tmp_path / "a.npy")
    old_files = set(store.files())
    before = snapshot(store)
    with pytest.raises(AlreadyExistsError):
        ingest_graph(store, tmp_path / "b.npy")
    assert snapshot(store) == before
    load_graph(store)  # a cached reader must not outlive the replace
    ingest_graph(store, tmp_path / "b.npy", replace=True)
    g = load_graph(store)
    assert g.num_nodes == 5 and g.num_edges == 2
    assert not old_files & set(store.files())
    on_disk = {p.relative_to(store.root).as_posix() for p in (store.root / "tables").rglob("rows.*")}
    assert 2 * len(list((store.root / "tables").iterdir())) == len(on_disk)  # old tables' folders are gone
    assert on_disk == set(store.files())
    assert store.verify() == []


def test_failure_midway_removes_staged_tables(tmp_path: Path, store: Any) -> None:
    np.save(tmp_path / "e.npy", np.arange(20000).reshape(2, -1) % 97)
    before = snapshot(store)
    calls: list[int] = []

    def boom(k: int) -> None:
        calls.append(k)
        if len(calls) == 12:  # labels and splits are staged, the CSC is half built
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ingest_graph(store, tmp_path / "e.npy", memory_budget=1, progress=boom)
    assert snapshot(store) == before


def test_stale_staging_is_removable(tmp_path: Path, store: Any) -> None:
    store.write_table("graph/stage-999999999-1/0", np.zeros((4, 1), np.int64), internal=True)
    live = f"graph/stage-{os.getpid()}-2/0"
    store.write_table(live, np.zeros((4, 1), np.int64), internal=True)
    assert stale_staging(store) == ["graph/stage-999999999-1/0"]
    assert remove_stale_staging(store) == ["graph/stage-999999999-1/0"]
    assert [t["key"] for t in store.tables(include_internal=True)] == [live]
    assert len(list((store.root / "tables").iterdir())) == 1


def test_load_graph_without_graph(store: Any) -> None:
    with pytest.raises(GraphNotFoundError):
        load_graph(store)
    with pytest.raises(KeyError):  # the builtin a caller would catch
        graph_info(store)


def test_readonly_store_refuses(tmp_path: Path) -> None:
    featdb.create(tmp_path / "s").close()
    np.save(tmp_path / "e.npy", np.array([[0], [1]]))
    with featdb.open(tmp_path / "s") as s, pytest.raises(PermissionError):
        ingest_graph(s, tmp_path / "e.npy")


# ----------------------------------------------------------------------------- OGB folders
def write_gz(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt") as f:
        f.write("".join(line + "\n" for line in lines))


def make_ogb(root: Path, with_count: bool = True) -> dict[str, Any]:
    rng = np.random.default_rng(3)
    n, e = 40, 120
    src, dst = rng.integers(0, n, e), rng.integers(0, n, e)
    feat = rng.standard_normal((n, 5)).astype(np.float32)
    labels = rng.integers(0, 4, n).astype(float)
    labels[[3, 7]] = np.nan
    write_gz(root / "raw/edge.csv.gz", [f"{a},{b}" for a, b in zip(src, dst, strict=True)])
    write_gz(root / "raw/node-feat.csv.gz", [",".join(f"{v:.9g}" for v in row) for row in feat])
    write_gz(root / "raw/node-label.csv.gz", ["nan" if np.isnan(v) else str(int(v)) for v in labels])
    if with_count:
        write_gz(root / "raw/num-node-list.csv.gz", [str(n)])
    splits = {"train": np.arange(10, 30), "valid": np.arange(30, 35), "test": np.arange(35, 40)}
    for k, ids in splits.items():
        write_gz(root / f"split/time/{k}.csv.gz", [str(i) for i in ids])
    return {"n": n, "src": src, "dst": dst, "feat": feat, "labels": labels, "splits": splits}


@pytest.mark.parametrize("with_count", [True, False])
def test_ingest_ogb(tmp_path: Path, store: Any, with_count: bool, monkeypatch: Any) -> None:
    import featdb.ingest.ogb as graph_mod

    monkeypatch.setattr(graph_mod, "CSV_BLOCK", 64)  # many small blocks: lines cut at block edges
    data = make_ogb(tmp_path / "ogbn-tiny", with_count)
    seen: list[int] = []
    doc = ingest_ogb(store, tmp_path / "ogbn-tiny", memory_budget=1, progress=seen.append)
    g = load_graph(store)
    n, src, dst = data["n"], data["src"], data["dst"]
    ref = reference_csc(np.concatenate((src, dst)), np.concatenate((dst, src)), n)
    np.testing.assert_array_equal(g.indptr, ref[0])
    np.testing.assert_array_equal(g.indices, ref[1])
    np.testing.assert_array_equal(g.labels, np.nan_to_num(data["labels"], nan=-1).astype(np.int64))
    for k, ids in data["splits"].items():
        np.testing.assert_array_equal(g.split(k), ids)
    np.testing.assert_array_equal(store.read_all("node/_/feat"), data["feat"])
    assert doc["features"] == "node/_/feat" and doc["feat_dim"] == 5 and doc["source"] == "ogb"
    assert doc["params"]["split"] == "time"
    assert sum(seen) == 2 * len(src) + 2 * n  # edge lines per pass, label and feature lines once
    assert [t["key"] for t in store.tables()] == ["node/_/feat"]
    assert store.verify() == []


def test_ingest_ogb_errors_change_nothing(tmp_path: Path, store: Any) -> None:
    root = tmp_path / "ogb"
    make_ogb(root)
    before = snapshot(store)
    (root / "split/time/test.csv.gz").unlink()
    with pytest.raises(InvalidInputError, match=r"test\.csv\.gz"):
        ingest_ogb(store, root)
    assert snapshot(store) == before
    write_gz(root / "split/time/test.csv.gz", ["1", "x"])
    with pytest.raises(InvalidInputError):
        ingest_ogb(store, root)
    write_gz(root / "split/time/test.csv.gz", ["1"])
    write_gz(root / "raw/node-feat.csv.gz", ["1,2", "3,4"])  # 2 rows for 40 nodes
    with pytest.raises(SchemaMismatchError):
        ingest_ogb(store, root)
    write_gz(root / "raw/node-feat.csv.gz", ["1,2"] * 39 + ["1,2,3"])
    with pytest.raises(InvalidInputError):
        ingest_ogb(store, root, memory_budget=1)
    assert snapshot(store) == before
    with pytest.raises(InvalidInputError, match=r"no raw/edge\.csv\.gz"):
        ingest_ogb(store, tmp_path)
    write_gz(root / "split/other/train.csv.gz", ["1"])
    with pytest.raises(InvalidInputError, match="several splits"):
        ingest_ogb(store, root)
    assert snapshot(store) == before


def test_ogb_feature_table_clash(tmp_path: Path, store: Any) -> None:
    make_ogb(tmp_path / "ogb")
    store.write_table("node/_/feat", np.zeros((3, 2), np.float32))
    before = snapshot(store)
    with pytest.raises(AlreadyExistsError, match="node/_/feat"):
        ingest_ogb(store, tmp_path / "ogb")
    assert snapshot(store) == before
    ingest_ogb(store, tmp_path / "ogb", feat_key="node/paper/feat")
    assert store.schema("node/paper/feat").rows == 40


def test_core_imports_without_torch_or_dgl() -> None:
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['dgl'] = None\n"
        "import featdb.graph, featdb.ingest.synth; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr

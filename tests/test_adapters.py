"""The GraphBolt and PyG adapters, against the libraries' own documented interfaces (no mocks of them):
a GraphBolt sampling + feature-fetch pipeline and PyG's FeatureStore consumers read what store.read reads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import featdb
from featdb.adapters import table_key, type_of
from featdb.errors import (
    ConfigError,
    IdsOutOfRangeError,
    InvalidInputError,
    ReadOnlyError,
    SchemaMismatchError,
    TableNotFoundError,
)
from featdb.serve import open_reader
from featdb.updates import drop_table, update_rows

torch = pytest.importorskip("torch")
gb = pytest.importorskip("dgl.graphbolt")
pytestmark = pytest.mark.gnn

FEAT = "node/_/feat"


@pytest.fixture(scope="module")
def synth_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("adapters") / "store"
    with featdb.create(path) as st:
        featdb.synth(st, nodes=2000, dim=8, classes=4, seed=0)
        st.write_table("node/item/emb", np.arange(300 * 4, dtype=np.float32).reshape(300, 4))
    return path


@pytest.fixture
def st(synth_store: Path, tmp_path: Path) -> Any:
    """A private copy of the module's store (tests write to it)."""
    import shutil

    shutil.copytree(synth_store, tmp_path / "store")
    with featdb.open(tmp_path / "store", mode="a") as s:
        yield s


def test_keys_name_tables_the_same_way_in_both_libraries() -> None:
    assert table_key(None, "feat") == "node/_/feat" == table_key("_", "feat")
    assert table_key("paper", "x") == "node/paper/x" and type_of("node/paper/x") == "paper"
    assert type_of(FEAT) is None
    with pytest.raises(featdb.errors.InvalidKeyError):
        table_key("../x", "feat")


# -- GraphBolt ---------------------------------------------------------------------------------
def test_graphbolt_feature_reads_sizes_and_describes(st: featdb.Store) -> None:
    from featdb.adapters.graphbolt import FeatDBFeature

    f = FeatDBFeature(st, FEAT)
    assert isinstance(f, gb.Feature)
    base = st.read_all(FEAT)
    ids = torch.tensor([5, 1, 5, 1999])
    got = f.read(ids)
    assert isinstance(got, torch.Tensor) and torch.equal(got, torch.from_numpy(base[[5, 1, 5, 1999]]))
    assert torch.equal(f.read(), torch.from_numpy(base))
    assert f.size() == torch.Size([8]) and f.count() == 2000
    assert f.metadata() == {"key": FEAT, "dtype": "float32", "rows": 2000}
    assert FeatDBFeature(st, FEAT, metadata={"num_classes": 4}).metadata()["num_classes"] == 4
    with pytest.raises(IdsOutOfRangeError):
        f.read(torch.tensor([2000]))
    with pytest.raises(TableNotFoundError):
        FeatDBFeature(st, "node/_/nope")


def test_graphbolt_basic_feature_store_and_update(st: featdb.Store) -> None:
    from featdb.adapters.graphbolt import feature_store

    fs = feature_store(st)
    assert isinstance(fs, gb.BasicFeatureStore)
    assert set(fs.keys()) == {("node", None, "feat"), ("node", "item", "emb")}
    assert fs.size("node", "item", "emb") == torch.Size([4])
    fs.update("node", "item", "emb", torch.full((2, 4), -1.0), torch.tensor([7, 3]))
    want = np.arange(300 * 4, dtype=np.float32).reshape(300, 4)
    want[[7, 3]] = -1.0
    np.testing.assert_array_equal(st.read_all("node/item/emb"), want)
    assert torch.equal(fs.read("node", "item", "emb", torch.tensor([3, 4])), torch.from_numpy(want[[3, 4]]))
    fs.update("node", "item", "emb", torch.zeros(10, 2))  # ids None: the whole table
    assert st.schema("node/item/emb").rows == 10 and fs.size("node", "item", "emb") == torch.Size([2])
    assert st.verify() == []


@pytest.mark.parametrize("workers", [0, 1])
def test_a_graphbolt_pipeline_fetches_the_rows_store_read_reads(st: featdb.Store, workers: int) -> None:
    from featdb.adapters.graphbolt import feature_store

    g = featdb.load_graph(st)
    graph = gb.fused_csc_sampling_graph(
        torch.from_numpy(g.indptr.astype(np.int64)), torch.from_numpy(g.indices.astype(np.int64))
    )
    seeds = gb.ItemSet(torch.from_numpy(g.train[:300].astype(np.int64)), names="seed_nodes")
    datapipe = gb.ItemSampler(seeds, batch_size=100).sample_neighbor(graph, [5, 5])
    datapipe = datapipe.fetch_feature(feature_store(st, [FEAT]), node_feature_keys=["feat"])
    batches = 0
    for mb in gb.DataLoader(datapipe, num_workers=workers):
        ids = mb.input_nodes.numpy()
        assert len(ids) > len(mb.seed_nodes)  # the seeds and their sampled neighbours
        assert torch.equal(mb.node_features["feat"], torch.from_numpy(st.read(FEAT, ids)))
        batches += 1
    assert batches == -(-min(300, len(g.train)) // 100)


def test_graphbolt_reads_through_a_layout_take_the_hot_tier(st: featdb.Store) -> None:
    from featdb.adapters.graphbolt import FeatDBFeature

    featdb.sample(st, featdb.SampleConfig("train", fanouts=(5, 5), batch_size=128, epochs=1))
    featdb.pack(st, "train", FEAT, featdb.Budgets(host_cache=200 * 32))
    with open_reader(st, sample_set="train") as reader:
        f = FeatDBFeature(st, FEAT, reader=reader)
        ids = torch.from_numpy(np.concatenate([reader.l2_ids[:50], [0, 1, 2]]))
        assert torch.equal(f.read(ids), torch.from_numpy(st.read(FEAT, ids.numpy())))
        assert reader.stats.as_dict()["tiers"]["l2"]["rows"] >= 50
        with pytest.raises(ConfigError, match="serves table"):
            FeatDBFeature(st, "node/item/emb", reader=reader)


# -- row updates and removal (both adapters write through these) ------------------------------------
def test_update_rows_is_a_crash_safe_switch_that_makes_a_packed_layout_stale(st: featdb.Store) -> None:
    featdb.sample(st, featdb.SampleConfig("train", fanouts=(5,), batch_size=256, epochs=1))
    featdb.pack(st, "train", FEAT, featdb.Budgets())
    before = st.read_all(FEAT)
    doc = update_rows(st, FEAT, [9, 4, 9], np.stack([np.ones(8), np.zeros(8), np.full(8, 2.0)]), memory_budget=64 << 20)
    assert doc["updated_rows"] == 2
    want = before.copy()
    want[4], want[9] = 0.0, 2.0  # the last write of a repeated id wins
    np.testing.assert_array_equal(st.read_all(FEAT), want)
    with pytest.raises(ConfigError, match="replaced after the layout was packed: repack"):
        open_reader(st, sample_set="train")
    featdb.pack(st, "train", FEAT, featdb.Budgets())
    with open_reader(st, sample_set="train") as r:
        np.testing.assert_array_equal(r.read([4, 9]), want[[4, 9]])
    assert st.verify() == []
    with pytest.raises(SchemaMismatchError):
        update_rows(st, FEAT, [1], np.ones((1, 3)))
    with pytest.raises(IdsOutOfRangeError):
        update_rows(st, FEAT, [2000], np.ones((1, 8)))
    with pytest.raises(InvalidInputError, match="what the current layout serves"):
        drop_table(st, FEAT)
    drop_table(st, "node/item/emb")
    assert not st.has_table("node/item/emb") and st.verify() == []


def test_update_rows_streams_the_table_in_chunks_within_the_budget(st: featdb.Store) -> None:
    rows = np.random.default_rng(3).standard_normal((300_000, 4)).astype(np.float32)  # 4.6 MiB
    st.write_table("node/big/x", rows)
    ids = np.array([0, 99_999, 150_000, 299_999, 5])
    vals = np.arange(20, dtype=np.float32).reshape(5, 4)
    doc = update_rows(st, "node/big/x", ids, vals, memory_budget=3 << 20)  # chunks of about 1.5 MiB
    assert doc["memory"]["parts"]["two table chunks"] < 4 << 20
    rows[ids] = vals
    np.testing.assert_array_equal(st.read_all("node/big/x"), rows)
    with pytest.raises(featdb.errors.BudgetExceededError, match="two table chunks"):
        update_rows(st, "node/big/x", ids, vals, memory_budget=1 << 20)
    np.testing.assert_array_equal(st.read_all("node/big/x"), rows)  # a refusal changes nothing


# -- PyG ---------------------------------------------------------------------------------------------
pyg = pytest.importorskip("torch_geometric")


def test_pyg_feature_store_every_documented_index_form(st: featdb.Store) -> None:
    from torch_geometric.data import FeatureStore, TensorAttr

    from featdb.adapters.pyg import FeatDBFeatureStore

    fs = FeatDBFeatureStore(st)
    assert isinstance(fs, FeatureStore)
    base = torch.from_numpy(st.read_all(FEAT))
    ids = [3, 1, 3]
    forms: list[tuple[Any, Any]] = [
        (None, base),
        (slice(None), base),
        (slice(10, 20, 3), base[10:20:3]),
        (7, base[7]),
        (ids, base[ids]),
        (torch.tensor(ids), base[ids]),
        (torch.arange(2000) % 7 == 0, base[::7]),
    ]
    for index, want in forms:
        assert torch.equal(fs.get_tensor(group_name=None, attr_name="feat", index=index), want), index
    assert torch.equal(fs[None, "feat", torch.tensor(ids)], base[ids])
    assert torch.equal(fs[TensorAttr("_", "feat", torch.tensor(ids))], base[ids])
    assert torch.equal(fs.view(group_name=None).feat[torch.tensor(ids)], base[ids])
    # (numpy indexes are documented too, but PyG 2.5.3's own TensorAttr cannot hold one: it compares
    # the index with != to tell whether it is set)
    assert fs.get_tensor_size(None, "feat") == (2000, 8)
    assert fs.get_tensor_size(None, "feat", torch.tensor(ids)) == (3, 8)
    assert fs.get_tensor_size(None, "nope") is None
    with pytest.raises(KeyError):
        fs.get_tensor(None, "nope", None)
    with pytest.raises(IdsOutOfRangeError):
        fs.get_tensor(None, "feat", torch.tensor([2000]))
    attrs = {(a.group_name, a.attr_name) for a in fs.get_all_tensor_attrs()}
    assert attrs == {(None, "feat"), ("item", "emb")} and len(fs) == 2


def test_pyg_multi_get_reads_each_table_once(st: featdb.Store, monkeypatch: pytest.MonkeyPatch) -> None:
    from torch_geometric.data import TensorAttr

    from featdb.adapters.pyg import FeatDBFeatureStore

    fs = FeatDBFeatureStore(st)
    calls: list[str] = []
    real = st.read
    monkeypatch.setattr(st, "read", lambda key, ids: (calls.append(key), real(key, ids))[1])
    attrs = [
        TensorAttr(None, "feat", torch.tensor([1, 2])),
        TensorAttr("item", "emb", torch.tensor([5])),
        TensorAttr(None, "feat", torch.tensor([2, 9, 9])),
    ]
    got = fs.multi_get_tensor(attrs)
    assert sorted(calls) == [FEAT, "node/item/emb"]
    assert torch.equal(got[2], torch.from_numpy(real(FEAT, [2, 9, 9])))
    assert torch.equal(got[1], torch.from_numpy(real("node/item/emb", [5])))
    with pytest.raises(KeyError):
        fs.multi_get_tensor([TensorAttr(None, "feat", None), TensorAttr(None, "nope", None)])


def test_pyg_put_update_remove(st: featdb.Store) -> None:
    from featdb.adapters.pyg import FeatDBFeatureStore

    fs = FeatDBFeatureStore(st)
    assert fs.put_tensor(torch.ones(50, 3), group_name="user", attr_name="emb", index=None)
    assert fs.get_tensor_size("user", "emb") == (50, 3)
    fs["user", "emb", torch.tensor([4, 2])] = torch.zeros(2, 3)  # rows of an existing table
    got = fs["user", "emb", None]
    assert got[[2, 4]].sum() == 0 and got.sum() == 48 * 3
    assert fs.update_tensor(torch.full((2, 3), 5.0), "user", "emb", torch.tensor([0, 1]))
    assert fs["user", "emb", torch.tensor([0, 1, 2])].tolist() == [[5.0] * 3, [5.0] * 3, [0.0] * 3]
    with pytest.raises(InvalidInputError, match="put the whole tensor"):
        fs["new", "x", torch.tensor([3])] = torch.ones(1, 2)
    assert fs.remove_tensor("user", "emb", None) and not st.has_table("node/user/emb")
    assert not fs.remove_tensor("user", "emb", None)
    assert st.verify() == []


def test_pyg_graph_store_and_consumers_read_the_stored_graph_and_rows(st: featdb.Store) -> None:
    from torch_geometric.data import EdgeAttr, GraphStore
    from torch_geometric.loader.utils import filter_custom_store
    from torch_geometric.sampler import NeighborSampler

    from featdb.adapters.pyg import FeatDBFeatureStore, FeatDBGraphStore

    fs, gs = FeatDBFeatureStore(st, keys=[FEAT]), FeatDBGraphStore(st)  # the graph's own node tables
    assert isinstance(gs, GraphStore)
    g = featdb.load_graph(st)
    indptr, indices = torch.from_numpy(g.indptr.astype(np.int64)), torch.from_numpy(g.indices.astype(np.int64))
    row, colptr, _ = gs.csc()
    assert torch.equal(row, indices) and torch.equal(colptr, indptr)
    src, dst = gs.get_edge_index(EdgeAttr(None, "coo", is_sorted=True))
    assert torch.equal(src, indices) and torch.equal(torch.bincount(dst, minlength=g.num_nodes), indptr.diff())
    rowptr, col = gs.get_edge_index(EdgeAttr(None, "csr"))
    for u in (0, 17, 1999):  # out-neighbours of u: the destinations of edges whose source is u
        assert sorted(col[rowptr[u] : rowptr[u + 1]].tolist()) == sorted(dst[src == u].tolist())
    with pytest.raises(ReadOnlyError):
        gs.put_edge_index((src, dst), EdgeAttr(None, "coo"))
    with pytest.warns(UserWarning):  # PyG warns that it samples without pyg-lib's fast paths
        sampler = NeighborSampler((fs, gs), num_neighbors=[5, 5])
    assert torch.equal(sampler.colptr, indptr) and torch.equal(sampler.row, indices) and not sampler.is_hetero
    nodes = torch.tensor([5, 2, 9, 1999])
    data = filter_custom_store(fs, gs, nodes, torch.tensor([0, 1]), torch.tensor([1, 2]), None)
    assert torch.equal(data.feat, torch.from_numpy(st.read(FEAT, nodes.numpy()))) and data.num_nodes == 4


def test_pyg_neighbor_loader_when_pyg_lib_is_there(st: featdb.Store) -> None:
    import torch_geometric.typing as pyg_typing

    if not (pyg_typing.WITH_PYG_LIB or pyg_typing.WITH_TORCH_SPARSE):
        pytest.skip("PyG's NeighborLoader needs pyg-lib or torch-sparse, which do not install with torch 2.2.1 here")
    from torch_geometric.loader import NeighborLoader

    from featdb.adapters.pyg import FeatDBFeatureStore, FeatDBGraphStore

    loader = NeighborLoader(
        (FeatDBFeatureStore(st, keys=[FEAT]), FeatDBGraphStore(st)),
        num_neighbors=[5, 5],
        input_nodes=torch.arange(64),
        batch_size=32,
    )
    for batch in loader:
        assert torch.equal(batch.feat, torch.from_numpy(st.read(FEAT, batch.n_id.numpy())))

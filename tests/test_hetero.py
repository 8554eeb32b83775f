"""Typed graphs: edge types through the CSC build, ingest and sampling; the R-GCN and its loaders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import featdb
from featdb.cli import cli
from featdb.errors import AlreadyExistsError, BudgetExceededError, IdsOutOfRangeError, SchemaMismatchError
from featdb.graph import ETYPES_KEY, build_csc
from featdb.ingest.synth_hetero import write_mag_folder
from featdb.sampling.format import decode, encode_parts
from featdb.sampling.mfg import Batch, Layer
from tests.helpers import assert_one_error_line

torch = pytest.importorskip("torch")
pytest.importorskip("dgl")

from trainer.cli import main as train_main  # noqa: E402
from trainer.hetero import RGCN, RGCNConv, TypedFeatDBLoader, TypedTables  # noqa: E402
from trainer.mfg import TorchLayer, to_torch  # noqa: E402

pytestmark = pytest.mark.gnn


def _triples(g: featdb.Graph) -> np.ndarray:
    dst = np.repeat(np.arange(g.num_nodes), np.diff(g.indptr))
    return np.stack([g.indices, dst, g.etypes], 1)


def _sorted_rows(a: np.ndarray) -> np.ndarray:
    return a[np.lexsort(a.T[::-1])]


@pytest.mark.parametrize("dedup", [False, True])
def test_typed_csc_stores_each_edge_type_beside_its_source(
    store: featdb.Store, rng: np.random.Generator, dedup: bool
) -> None:
    n, e, types = 50, 3000, 5
    src, dst, et = rng.integers(0, n, e), rng.integers(0, n, e), rng.integers(0, types, e)
    halves = [(src[:1000], dst[:1000], et[:1000]), (src[1000:], dst[1000:], et[1000:])]
    stored = build_csc(lambda: iter(halves), n, store, 1 << 16, dedup=dedup, edge_types=types)
    indptr, indices = store.read_all("graph/csc/indptr").ravel(), store.read_all("graph/csc/indices").ravel()
    etypes = store.read_all(ETYPES_KEY).ravel()
    assert etypes.dtype == np.uint8 and stored == len(indices) == len(etypes)
    want = np.stack([src, dst, et], 1)
    if dedup:
        want = np.unique(want, axis=0)
    got = np.stack([indices, np.repeat(np.arange(n), np.diff(indptr)), etypes], 1)
    np.testing.assert_array_equal(_sorted_rows(got), _sorted_rows(want))
    for v in range(n):  # each neighbour list sorted by (source, type)
        run = got[indptr[v] : indptr[v + 1]]
        assert (np.diff(run[:, 0] * types + run[:, 2]) >= (1 if dedup else 0)).all()


def test_typed_csc_refuses_bad_types(store: featdb.Store) -> None:
    one = np.array([0, 1])
    with pytest.raises(IdsOutOfRangeError, match="edge type"):
        build_csc(lambda: iter([(one, one, np.array([0, 3]))]), 2, store, edge_types=3)
    with pytest.raises(SchemaMismatchError, match="expected"):
        build_csc(lambda: iter([(one, one)]), 2, store, edge_types=3)
    with pytest.raises(SchemaMismatchError, match="shape"):
        build_csc(lambda: iter([(one, one, np.array([0]))]), 2, store, edge_types=3)
    huge = np.array([2**62, 1])  # encoded with its type it would wrap onto a real node
    with pytest.raises(IdsOutOfRangeError, match="source id"):
        build_csc(lambda: iter([(huge, one, np.array([0, 1]))]), 10, store, edge_types=4)
    with pytest.raises(featdb.errors.InvalidInputError, match="62-bit"):
        build_csc(lambda: iter([(one, one, one)]), 2**61, store, edge_types=4)


def test_typed_sample_records_round_trip() -> None:
    def layer(etype: np.ndarray | None) -> Layer:
        return Layer(np.array([0, 1], np.int32), np.array([0, 0], np.int32), np.arange(1), 2, 1, etype)

    for et, want in ((np.array([1, 255]), np.uint8), (np.array([1, 300]), np.int16)):
        batch = Batch(np.array([5]), np.array([5, 7]), (layer(et), layer(et)))
        got = decode(b"".join(p.tobytes() for p in encode_parts(batch, np.dtype("<i4"))), np.dtype("<i4"))
        assert all(lay.etype.dtype == want and (lay.etype == et).all() for lay in got.layers)
    untyped = Batch(np.array([5]), np.array([5, 7]), (layer(None),))
    assert (
        decode(b"".join(p.tobytes() for p in encode_parts(untyped, np.dtype("<i4"))), np.dtype("<i4")).layers[0].etype
        is None
    )
    with pytest.raises(featdb.FeatDBError, match="all carry"):
        encode_parts(Batch(np.array([5]), np.array([5, 7]), (layer(None), layer(np.array([0, 1])))), np.dtype("<i4"))


@pytest.fixture
def mag(tmp_path: Path) -> Path:
    write_mag_folder(tmp_path / "mag", papers=600, classes=4, noise=0.5, seed=3)
    return tmp_path / "mag"


def test_ingest_stores_relations_and_sampled_edges_carry_them(store: featdb.Store, mag: Path) -> None:
    doc = featdb.ingest_ogb(store, mag)
    names = doc["edge_types"]
    assert len(names) == 2 * len(doc["relations"]) and names[0] == "author___affiliated_with___institution"
    assert names[len(doc["relations"])] == "institution___rev_affiliated_with___author"
    g = featdb.load_graph(store)
    triples = _triples(g)
    spans = doc["node_types"]
    for t, name in enumerate(names):  # every edge joins the node types its relation names
        src_t, _, dst_t = name.split("___")
        mine = triples[triples[:, 2] == t]
        assert len(mine) and (mine[:, 0] >= spans[src_t][0]).all() and (mine[:, 0] < spans[src_t][1]).all()
        assert (mine[:, 1] >= spans[dst_t][0]).all() and (mine[:, 1] < spans[dst_t][1]).all()
    featdb.sample(store, featdb.SampleConfig("s", fanouts=(4, 4), batch_size=100, epochs=1))
    known = {tuple(x) for x in triples.tolist()}
    with featdb.SampleSet(store, "s") as ss:
        assert ss.doc["edge_types"] == names
        b = ss.batch(0)
        nodes = b.input_ids
        for layer in b.layers:  # each sampled edge is a stored (source, destination, type) triple
            assert layer.etype is not None and len(layer.etype) == len(layer.src)
            for u, v, t in zip(nodes[layer.src], nodes[layer.dst], layer.etype, strict=True):
                assert (u, v, t) in known
            nodes = nodes[: layer.num_dst]


def test_rgcn_layer_matches_dgl_relgraphconv(rng: np.random.Generator) -> None:
    import dgl
    from dgl.nn import RelGraphConv

    num_src, num_dst, e, rels = 30, 10, 120, 3
    src, dst = torch.from_numpy(rng.integers(0, num_src, e)), torch.from_numpy(rng.integers(0, num_dst, e))
    et = torch.from_numpy(rng.integers(0, rels, e))
    ours = RGCNConv(8, 5, rels)
    layer = TorchLayer(src, dst, torch.arange(num_dst), num_src, num_dst, et)
    theirs = RelGraphConv(8, 5, rels, regularizer=None, self_loop=True)
    with torch.no_grad():
        theirs.linear_r.W.copy_(ours.weight)
        theirs.loop_weight.copy_(ours.loop_weight)
        theirs.h_bias.copy_(torch.rand(5))
        ours.bias.copy_(theirs.h_bias)
    count = torch.bincount(dst * rels + et, minlength=num_dst * rels).float()
    norm = (1.0 / count[dst * rels + et]).unsqueeze(1)  # a mean per (destination, relation)
    block = dgl.create_block((src, dst), num_src_nodes=num_src, num_dst_nodes=num_dst)
    h = torch.randn(num_src, 8)
    torch.testing.assert_close(ours(layer, h), theirs(block, h, et, norm), rtol=1e-5, atol=1e-5)


def _typed_store(tmp_path: Path, mag: Path, *sample_args: str) -> str:
    root = str(tmp_path / "st")
    runner = CliRunner()
    for args in (
        ["ingest-ogb", root, str(mag), "-q"],
        ["sample", root, "--name", "s", "--fanouts", "4,4", "--batch-size", "64", "--epochs", "2", "-q", *sample_args],
        ["trace", "split", root, "--sample-set", "s", "-q"],
        *(["pack", root, "--trace", f"s.{t}", "-q"] for t in ("author", "field_of_study", "paper")),
    ):
        r = runner.invoke(cli, args)
        assert r.exit_code == 0, (args, r.output)
    return root


def test_featdb_and_in_memory_feed_an_rgcn_the_same_rows(tmp_path: Path, mag: Path) -> None:
    root = _typed_store(tmp_path, mag)
    shown = CliRunner().invoke(cli, ["info", root]).output
    assert "edge types (8): author___affiliated_with___institution" in shown and "paper [" in shown
    with featdb.open(root) as st:
        loader = TypedFeatDBLoader(st, "s", torch.device("cpu"), 2, featdb.node_labels(st))
        tables = TypedTables(st, loader.types, mmap=False)
        assert loader.types.dims == (32, 16, 0, 64) and loader.types.num_relations == 8
        try:
            for split in ("valid", "test"):
                ep = loader.eval_epoch(split)
                assert ep is not None
                for mfg, x, y, release in ep.items:
                    ids = mfg.input_ids.numpy()
                    padded = tables.gather(ids)  # grouped by type: each type's rows one after another
                    counts = np.bincount(loader.types.of_ids(ids), minlength=len(x)).tolist()
                    at = 0
                    for rows, dim, n in zip(x, loader.types.dims, counts, strict=True):
                        if rows is not None:
                            torch.testing.assert_close(rows, padded[at : at + n, :dim], rtol=0, atol=0)
                        at += n
                    assert (mfg.layers[0].etype is not None) and torch.equal(y, torch.from_numpy(st_labels(st, mfg)))
                    release()
                ep.close()
            # the model's fast path (rows grouped by type, as featdb serves them) and its general path
            # (rows in sampled order, as the baseline gathers them) compute the same logits
            model = RGCN(loader.types, 16, 4, 2, 0.0).eval()
            ep = loader.eval_epoch("valid")
            assert ep is not None
            mfg, x, _, release = next(ep.items)
            raw = loader.ss.batch(int(loader.ss.part_batches("valid")[0]))
            grouped = torch.bucketize(mfg.input_ids, model.bounds, right=True)
            sampled = torch.bucketize(torch.from_numpy(raw.input_ids), model.bounds, right=True)
            assert (grouped[1:] >= grouped[:-1]).all() and not (sampled[1:] >= sampled[:-1]).all()
            with torch.no_grad():
                want = model(to_torch(raw), tables.gather(raw.input_ids))
                torch.testing.assert_close(model(mfg, x), want, rtol=1e-4, atol=1e-5)
            release()
            ep.close()  # mid-epoch: every read buffer comes back
            for reader in loader.readers.values():
                assert reader.pool.available == reader.pool.count
            stats = loader.serve_stats()
            assert set(stats["tables"]) == {"author", "field_of_study", "paper"} and stats["tiers"]["l4"]["rows"] > 0
        finally:
            loader.close()


def st_labels(st: featdb.Store, mfg: object) -> np.ndarray:
    return np.asarray(featdb.node_labels(st)[mfg.seeds.numpy()], dtype=np.int64)  # type: ignore[attr-defined]


@pytest.mark.parametrize("per_relation", [False, True])
def test_featdb_train_rgcn_learns_on_both_loaders(tmp_path: Path, mag: Path, per_relation: bool) -> None:
    root = _typed_store(tmp_path, mag, *(["--per-relation"] if per_relation else []))
    accs = {}
    for loader in ("featdb", "in-memory"):
        args = [root, "--sample-set", "s", "--model", "rgcn", "--hidden", "32", "--epochs", "2", "--json"]
        r = CliRunner().invoke(train_main, [*args, "--loader", loader, "--checkpoint", str(tmp_path / f"{loader}.pt")])
        assert r.exit_code == 0, r.output
        out = json.loads(r.output[r.output.index("{") :])
        accs[loader] = out["test_acc"]
        if loader == "featdb":
            assert out["memory"]["peak_rss_bytes"] <= out["memory"]["budget_bytes"]
            assert out["read_amplification"] is not None
    assert min(accs.values()) > 0.5, accs  # 4 classes: chance is 0.25


def test_rgcn_refuses_untyped_graphs_and_unpacked_types(tmp_path: Path, mag: Path) -> None:
    root = str(tmp_path / "plain")
    runner = CliRunner()
    assert runner.invoke(cli, ["synth", root, "--nodes", "500", "--dim", "4", "-q"]).exit_code == 0
    assert runner.invoke(cli, ["sample", root, "--name", "s", "--fanouts", "3", "-q"]).exit_code == 0
    r = runner.invoke(train_main, [root, "--sample-set", "s", "--model", "rgcn"])
    assert_one_error_line(r, "no node and edge types")
    typed = str(tmp_path / "typed")
    assert runner.invoke(cli, ["ingest-ogb", typed, str(mag), "-q"]).exit_code == 0
    assert runner.invoke(cli, ["sample", typed, "--name", "s", "--fanouts", "3", "-q"]).exit_code == 0
    r = runner.invoke(train_main, [typed, "--sample-set", "s", "--model", "rgcn"])
    assert_one_error_line(r, "featdb trace split")


def test_synth_mag_is_seeded_and_refuses_what_it_cannot_do(tmp_path: Path) -> None:
    a, b = write_mag_folder(tmp_path / "a", papers=100, seed=1), write_mag_folder(tmp_path / "b", papers=100, seed=1)
    assert a == b
    for f in (tmp_path / "a").rglob("*.gz"):
        assert f.read_bytes() == (tmp_path / "b" / f.relative_to(tmp_path / "a")).read_bytes()
    with pytest.raises(AlreadyExistsError):
        write_mag_folder(tmp_path / "a", papers=100)
    with pytest.raises(BudgetExceededError, match="synth-mag"):
        write_mag_folder(tmp_path / "c", papers=10**7, memory_budget=1 << 20)
    r = CliRunner().invoke(cli, ["synth-mag", str(tmp_path / "d"), "--papers", "50", "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["nodes"]["paper"] == 50


def test_traces_split_from_an_earlier_sampling_are_refused(tmp_path: Path, mag: Path) -> None:
    root = _typed_store(tmp_path, mag)
    runner = CliRunner()
    assert runner.invoke(cli, ["gc", root, "--sample-set", "s", "-q"]).exit_code == 0
    again = ["sample", root, "--name", "s", "--fanouts", "4,4", "--batch-size", "64", "--seed", "7", "-q"]
    assert runner.invoke(cli, again).exit_code == 0
    r = runner.invoke(train_main, [root, "--sample-set", "s", "--model", "rgcn", "--epochs", "1"])
    assert_one_error_line(r, "not split from sample set 's' as it is now")
    r = runner.invoke(train_main, [root, "--model", "rgcn", "--dist", str(tmp_path / "ip.txt")])
    assert r.exit_code == 2 and "partitions do not keep edge types" in r.output


def test_an_untyped_graph_replacing_a_typed_one_takes_its_edge_types_away(store: featdb.Store, mag: Path) -> None:
    featdb.ingest_ogb(store, mag)
    etypes_file = store.root / str(store.table_info(ETYPES_KEY)["file"])
    assert etypes_file.exists()
    featdb.synth(store, 300, 4, 8, 3, seed=1, replace=True)
    assert not store.has_table(ETYPES_KEY) and not etypes_file.exists()
    assert featdb.load_graph(store).etypes is None
    assert store.verify() == []


def _per_relation_ok(nodes: np.ndarray, layers: list[tuple[np.ndarray, np.ndarray, np.ndarray, int]],
                     degree: dict[tuple[int, int], int], fanout: int) -> int:  # fmt: skip
    """Every (destination, relation) got min(fanout, its in-degree in that relation) edges; returns
    how many pairs had more in-edges than the fanout (where per-relation sampling shows)."""
    capped = 0
    for _src, dst, etype, num_dst in layers:
        got: dict[tuple[int, int], int] = {}
        for v, t in zip(nodes[dst].tolist(), etype.tolist(), strict=True):
            got[(v, t)] = got.get((v, t), 0) + 1
        for v in nodes[:num_dst].tolist():
            for (w, t), deg in ((k, d) for k, d in degree.items() if k[0] == v):
                assert got.get((w, t), 0) == min(fanout, deg), (w, t, deg, got.get((w, t)))
                capped += deg > fanout
        nodes = nodes[:num_dst]
    return capped


def test_per_relation_sampling_takes_each_layers_fanout_per_relation(tmp_path: Path, mag: Path) -> None:
    from featdb.sampling import dgl_graph
    from trainer.loaders import relation_sampler

    with featdb.create(tmp_path / "s") as st:
        featdb.ingest_ogb(st, mag)
        g = featdb.load_graph(st)
        triples = _triples(g)
        degree: dict[tuple[int, int], int] = {}
        for _, v, t in triples.tolist():
            degree[(v, t)] = degree.get((v, t), 0) + 1
        featdb.sample(st, featdb.SampleConfig("rel", (3, 3), 50, 1, per_relation=True, eval_splits=()))
        with featdb.SampleSet(st, "rel") as ss:
            assert ss.doc["per_relation"] is True
            b = ss.batch(0)
        layers = [(ly.src, ly.dst, ly.etype, ly.num_dst) for ly in b.layers]
        known = {tuple(x) for x in triples.tolist()}
        for (src, dst, etype, _), nodes in ((layers[0], b.input_ids), (layers[1], b.input_ids)):
            assert {(u, v, t) for u, v, t in zip(nodes[src], nodes[dst], etype, strict=True)} <= known
        assert _per_relation_ok(b.input_ids, layers, degree, 3) > 0
        # the baselines' DGL sampler draws the same way
        dg = dgl_graph(g.indptr, g.indices, g.etypes, per_relation=True)
        seeds = torch.from_numpy(np.asarray(g.train[:50], dtype=np.int64))
        _, _, blocks = relation_sampler([3, 3], dg).sample_blocks(dg, seeds)
        import dgl

        ids = blocks[0].srcdata[dgl.NID].numpy()
        blk = []
        for blkk in blocks:
            s_, d_ = (x.numpy() for x in blkk.edges(order="eid"))
            blk.append((s_, d_, blkk.edata[dgl.ETYPE].numpy(), blkk.num_dst_nodes()))
        assert _per_relation_ok(ids, blk, degree, 3) > 0
    r = CliRunner().invoke(cli, ["synth", str(tmp_path / "u"), "--nodes", "300", "--dim", "4", "-q"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(cli, ["sample", str(tmp_path / "u"), "--name", "x", "--fanouts", "2", "--per-relation"])
    assert_one_error_line(r, "edge types")


def test_per_relation_sampling_of_a_graph_without_edges_gives_empty_layers() -> None:
    from featdb.sampling import dgl_graph, relation_offsets
    from featdb.sampling.sampler import sample_batch

    g = dgl_graph(np.zeros(6, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.uint8), True)
    assert relation_offsets(g) == [0, 0]
    b = sample_batch(g, np.array([1, 3]), (2, 2), np.full(5, -1, dtype=np.int32), relation_offsets(g))
    assert [len(ly.src) for ly in b.layers] == [0, 0] and b.input_ids.tolist() == [1, 3]

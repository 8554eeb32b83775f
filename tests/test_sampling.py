"""Offline sampling: stored MFGs are what DGL sampled; counts, shuffles, errors, corruption."""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pytest
from helpers import (
    FEAT,
    base_rows,
    catalog_state,
    flip_byte,
    leaked_files,
    make_layout,
    make_sample_set,
    make_synth_store,
    torch_threads,
    tree,
)

import featdb
from featdb.errors import (
    AlreadyExistsError,
    CorruptDataError,
    FeatDBError,
    GraphNotFoundError,
    InvalidInputError,
    NotFoundError,
    SampleSetNotFoundError,
)
from featdb.graph import load_graph
from featdb.ingest import ingest_graph
from featdb.io import crc32_blocks
from featdb.sampling.mfg import Batch
from featdb.sampling.offline import (
    SampleConfig,
    dgl_graph,
    epoch_batches,
    iter_sampled,
    parse_fanouts,
    sample,
)
from featdb.sampling.sampleset import SampleSet
from featdb.serve.reader import open_reader

dgl = pytest.importorskip("dgl")
torch = pytest.importorskip("torch")

pytestmark = pytest.mark.gnn

CFG = SampleConfig("tr", (3, 5), 96, 3, seed=5, eval_splits=())  # input-side fanout 3, seed-side fanout 5


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def sampled(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A store with one sample set, and the DGL blocks of re-running the same sampling."""
    st = make_synth_store(tmp_path_factory.mktemp("sampling") / "s", nodes=2500, dim=12, seed=3)
    with torch_threads(1):
        sample(st, CFG)
    g = load_graph(st)
    calls: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (nodes asked, edge src, edge dst)
    real = dgl.sampling.sample_neighbors

    def record(graph: Any, nodes: Any, fanout: int, **kw: Any) -> Any:
        frontier = real(graph, nodes, fanout, **kw)
        u, v = frontier.edges(order="eid")
        calls.append((nodes.numpy().copy(), u.numpy().copy(), v.numpy().copy()))
        return frontier

    with mock.patch.object(dgl.sampling, "sample_neighbors", record), torch_threads(1):
        epochs = [e for e, _ in iter_sampled(dgl_graph(g.indptr, g.indices), g.train, CFG)]
    k = len(CFG.fanouts)
    recorded = [calls[i * k : (i + 1) * k][::-1] for i in range(len(epochs))]  # input side first
    ss = SampleSet(st, "tr")
    yield st, ss, g, list(zip(epochs, recorded, strict=True))
    ss.close()
    st.close()


def _edge_keys(src: np.ndarray, dst: np.ndarray, n: int) -> np.ndarray:
    return np.sort(dst.astype(np.int64) * n + src.astype(np.int64))


def _stored_layers(batch: Batch) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Per layer (global source ids, global destination ids, global edge src, global edge dst)."""
    out = []
    src_ids = batch.input_ids
    for layer in batch.layers:
        assert len(src_ids) == layer.num_src
        dst_ids = src_ids[layer.dst_in_src]
        assert len(dst_ids) == layer.num_dst
        out.append((src_ids, dst_ids, src_ids[layer.src], dst_ids[layer.dst]))
        src_ids = dst_ids  # the next layer's sources are this layer's destinations, in order
    return out


# --------------------------------------------------------------------------- the stored MFG
def test_stored_mfg_has_exactly_the_edges_dgl_sampled(sampled: Any) -> None:
    _, ss, g, rerun = sampled
    n = g.num_nodes
    assert ss.num_batches == len(rerun) == CFG.epochs * ss.batches_per_epoch
    for b, (epoch, frontiers) in enumerate(rerun):
        stored = ss.batch(b)
        assert ss.epoch_of(b) == epoch
        np.testing.assert_array_equal(stored.seeds, frontiers[-1][0])
        np.testing.assert_array_equal(ss.input_ids(b), stored.input_ids)
        assert len(stored.layers) == len(frontiers) == len(CFG.fanouts)
        for (src_ids, dst_ids, es, ed), (asked, u, v) in zip(_stored_layers(stored), frontiers, strict=True):
            np.testing.assert_array_equal(dst_ids, asked)  # destinations are the nodes DGL sampled for
            np.testing.assert_array_equal(src_ids[: len(dst_ids)], dst_ids)  # DGL's dst-first convention
            assert set(src_ids.tolist()) == set(asked.tolist()) | set(u.tolist())
            np.testing.assert_array_equal(_edge_keys(es, ed, n), _edge_keys(u, v, n))
        assert len(np.unique(stored.input_ids)) == len(stored.input_ids)


def test_sampled_edges_are_graph_edges_with_the_layer_fanout(sampled: Any) -> None:
    _, ss, g, _ = sampled
    n = g.num_nodes
    graph_edges = np.sort(np.repeat(np.arange(n), np.diff(g.indptr)) * n + g.indices)
    indeg = np.diff(g.indptr)
    for b in range(ss.num_batches):
        for fanout, (_, dst_ids, es, ed) in zip(CFG.fanouts, _stored_layers(ss.batch(b)), strict=True):
            keys = ed * n + es
            pos = np.searchsorted(graph_edges, keys)
            assert (graph_edges[np.minimum(pos, len(graph_edges) - 1)] == keys).all(), "edge not in graph"
            per_dst = np.bincount(np.searchsorted(np.sort(dst_ids), ed), minlength=len(dst_ids))
            want = np.minimum(indeg[np.sort(dst_ids)], fanout)  # DGL samples without replacement
            np.testing.assert_array_equal(per_dst, want)


def test_seeds_follow_the_epoch_shuffle_and_cover_the_split(sampled: Any) -> None:
    _, ss, g, _ = sampled
    orders = []
    for e in range(ss.epochs):
        bids = ss.epoch_batches(e)
        assert len(bids) == ss.batches_per_epoch
        want = epoch_batches(g.train, CFG.batch_size, CFG.seed, e)
        assert len(want) == len(bids)
        for b, seeds in zip(bids.tolist(), want, strict=True):
            np.testing.assert_array_equal(ss.batch(b).seeds, seeds)
        order = np.concatenate([ss.batch(b).seeds for b in bids.tolist()])
        np.testing.assert_array_equal(np.sort(order), np.sort(g.train))
        orders.append(order)
    for i in range(len(orders)):
        for j in range(i + 1, len(orders)):
            assert not np.array_equal(orders[i], orders[j]), f"epochs {i} and {j} share a shuffle"


def test_epoch_batches_is_a_pure_function_of_seed_and_epoch() -> None:
    ids = np.arange(1000, 1500, dtype=np.int64)
    a = epoch_batches(ids, 64, seed=1, epoch=0)
    np.testing.assert_array_equal(np.concatenate(a), np.concatenate(epoch_batches(ids, 64, 1, 0)))
    assert [len(x) for x in a] == [64] * 7 + [52]
    assert not np.array_equal(np.concatenate(a), np.concatenate(epoch_batches(ids, 64, 1, 1)))
    assert not np.array_equal(np.concatenate(a), np.concatenate(epoch_batches(ids, 64, 2, 0)))


def test_counts_equal_a_recount_over_the_trace(sampled: Any) -> None:
    _, ss, g, _ = sampled
    trace = list(ss.trace())
    assert [b for b, _ in trace] == list(range(ss.num_batches))
    recount = np.bincount(np.concatenate([ids for _, ids in trace]), minlength=g.num_nodes)
    np.testing.assert_array_equal(ss.counts(), recount)
    assert ss.counts().sum() == ss.doc["input_rows"] == ss.num_inputs().sum()
    np.testing.assert_array_equal(ss.num_inputs(), [len(ids) for _, ids in trace])
    for got, (_, ids) in zip(ss.inputs_of([2, 0, 1]), [trace[2], trace[0], trace[1]], strict=True):
        np.testing.assert_array_equal(got, ids)


def test_sampling_with_one_thread_is_reproducible(sampled: Any, tmp_path: Path) -> None:
    st, ss, _, _ = sampled
    make_sample_set(st, "again", CFG.fanouts, CFG.batch_size, 1, CFG.seed)
    with SampleSet(st, "again") as again:
        assert len(again.part_batches("train")) == ss.batches_per_epoch
        for b in again.part_batches("train"):
            np.testing.assert_array_equal(again.batch(int(b)).seeds, ss.batch(int(b)).seeds)
            np.testing.assert_array_equal(again.input_ids(b), ss.input_ids(b))


def test_sampling_is_reproducible_for_a_seed_with_several_threads(tmp_path: Path) -> None:
    with make_synth_store(tmp_path / "s", nodes=2500, dim=4, seed=3) as st, torch_threads(2):
        sample(st, SampleConfig("a", (5, 5), 64, 2, seed=1))
        sample(st, SampleConfig("b", (5, 5), 64, 2, seed=1))
        with SampleSet(st, "a") as a, SampleSet(st, "b") as b:
            for i in range(a.num_batches):
                np.testing.assert_array_equal(a.input_ids(i), b.input_ids(i))


def test_sampling_processes_write_their_own_segments_and_the_same_samples(sampled: Any) -> None:
    st, ss, _, _ = sampled
    ticks: list[int] = []
    with torch_threads(2):
        sample(
            st,
            SampleConfig("procs", CFG.fanouts, CFG.batch_size, CFG.epochs, CFG.seed, eval_splits=()),
            progress=ticks.append,
            workers=2,
        )
        assert torch.get_num_threads() == 2
    with SampleSet(st, "procs") as par:
        assert par.num_batches == ss.num_batches
        assert len(par.doc["segments"]) == 2 * CFG.epochs > len(ss.doc["segments"])
        assert sorted(set(par.index[:, 0].tolist())) == list(range(2 * CFG.epochs))
        for b in range(ss.num_batches):
            one, two = ss.batch(b), par.batch(b)
            assert par.epoch_of(b) == ss.epoch_of(b)
            np.testing.assert_array_equal(two.seeds, one.seeds)
            np.testing.assert_array_equal(two.input_ids, one.input_ids)
            for x, y in zip(one.layers, two.layers, strict=True):
                np.testing.assert_array_equal(x.src, y.src)
                np.testing.assert_array_equal(x.dst, y.dst)
        np.testing.assert_array_equal(par.counts(), ss.counts())
        assert sum(ticks) == ss.num_batches


def test_in_process_sampling_restores_the_torch_thread_count(tmp_path: Path) -> None:
    with make_synth_store(tmp_path / "s", nodes=500, dim=4, seed=1) as st, torch_threads(2):
        sample(st, SampleConfig("a", (3,), 64, 1, eval_splits=()), workers=1)
        assert torch.get_num_threads() == 2


def test_epoch_batches_of_a_stored_set_are_its_epochs_in_order(sampled: Any) -> None:
    _, ss, _, _ = sampled
    got = np.concatenate([ss.epoch_batches(e) for e in range(ss.epochs)])
    np.testing.assert_array_equal(got, np.arange(ss.num_batches))
    with pytest.raises(IndexError):
        ss.epoch_batches(ss.epochs)


# --------------------------------------------------------------------------- aggregation
def _dgl_blocks(frontiers: list[tuple[np.ndarray, np.ndarray, np.ndarray]], n: int) -> list[Any]:
    """DGL's own blocks (dgl.to_block) for the recorded frontiers, input side first."""
    blocks = []
    for asked, u, v in frontiers:
        fg = dgl.graph((torch.from_numpy(u), torch.from_numpy(v)), num_nodes=n)
        blocks.append(dgl.to_block(fg, dst_nodes=torch.from_numpy(asked)))
    return blocks


def _align(h: Any, have: np.ndarray, want: np.ndarray) -> Any:
    """Rows of ``h`` (ordered by node ids ``have``) reordered to node ids ``want``."""
    order = np.argsort(have)
    return h[torch.from_numpy(order[np.searchsorted(have[order], want)])]


def _numpy_mean(layer: Any, h: np.ndarray) -> np.ndarray:
    out = np.zeros((layer.num_dst, h.shape[1]), dtype=np.float64)
    np.add.at(out, layer.dst, h[layer.src].astype(np.float64))
    deg = np.bincount(layer.dst, minlength=layer.num_dst)
    return out / np.maximum(deg, 1)[:, None]


def test_mean_aggregation_over_the_plain_form_matches_dgl_sageconv(sampled: Any) -> None:
    """Numpy mean over the stored edges == dgl.nn.SAGEConv('mean') with identity weights."""
    st, ss, _, rerun = sampled
    x = base_rows(st).astype(np.float64)
    dim = x.shape[1]
    conv = dgl.nn.SAGEConv(dim, dim, "mean").double()
    with torch.no_grad():
        conv.fc_self.weight.zero_()
        conv.fc_neigh.weight.copy_(torch.eye(dim, dtype=torch.float64))
        if getattr(conv, "bias", None) is not None:
            conv.bias.zero_()
        if conv.fc_self.bias is not None:
            conv.fc_self.bias.zero_()
    for b in (0, ss.num_batches // 2, ss.num_batches - 1):
        stored = ss.batch(b)
        blocks = _dgl_blocks(rerun[b][1], x.shape[0])
        # each side in its own node order (ours vs dgl.to_block's); compare per layer by global id
        h_ours, h_dgl = x[stored.input_ids], torch.from_numpy(x[blocks[0].srcdata[dgl.NID].numpy()])
        prev = None
        for (_, dst_ids, _, _), layer, block in zip(_stored_layers(stored), stored.layers, blocks, strict=True):
            h_ours = _numpy_mean(layer, h_ours)
            with torch.no_grad():
                h_dgl = conv(block, _align(h_dgl, prev, block.srcdata[dgl.NID].numpy()) if prev is not None else h_dgl)
            prev = block.dstdata[dgl.NID].numpy()
            np.testing.assert_array_equal(prev, dst_ids)
            np.testing.assert_allclose(h_ours, h_dgl.numpy(), rtol=1e-10, atol=1e-10)


def test_trainer_sage_over_served_rows_matches_dgl_sageconv(sampled: Any, tmp_path: Path) -> None:
    """Two SAGE layers over served rows and the relabelled MFG == DGL's SAGEConv on its blocks."""
    models = pytest.importorskip("trainer.models")
    to_torch = pytest.importorskip("trainer.mfg").to_torch
    st, ss, _, rerun = sampled
    x = base_rows(st)
    dims = [x.shape[1], 8, 4]
    theirs = [dgl.nn.SAGEConv(i, o, "mean") for i, o in itertools.pairwise(dims)]
    ours = [models.SAGEConv(i, o) for i, o in itertools.pairwise(dims)]
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for t, o in zip(theirs, ours, strict=True):
            for p in t.parameters():
                p.copy_(torch.randn(p.shape, generator=gen))
            o.load_state_dict(t.state_dict())
    root = tmp_path / "copy"
    shutil.copytree(st.root, root)
    with featdb.open(root, mode="a") as st2:
        make_layout(st2, "tr", host_cache=40 * x.shape[1] * 4, max_blowup=2.0)
        with open_reader(st2, sample_set="tr") as reader, SampleSet(st2, "tr") as ss2:
            reader.attach(ss2)
            for b in (0, 1, ss.num_batches - 1):
                blocks = _dgl_blocks(rerun[b][1], x.shape[0])
                with reader.read_batch(b) as served:
                    mfg = to_torch(reader.batch(b, served.order))
                    np.testing.assert_array_equal(mfg.input_ids.numpy(), served.input_ids)
                    h_ours = torch.from_numpy(served.rows.copy())
                with torch.no_grad():
                    h_dgl = torch.from_numpy(x[blocks[0].srcdata[dgl.NID].numpy()])
                    prev = None
                    for t, o, layer, block in zip(theirs, ours, mfg.layers, blocks, strict=True):
                        src = block.srcdata[dgl.NID].numpy()
                        h_in = _align(h_dgl, prev, src) if prev is not None else h_dgl
                        h_ours, h_dgl = o(layer, h_ours), t(block, h_in)
                        prev = block.dstdata[dgl.NID].numpy()
                np.testing.assert_allclose(h_ours.numpy(), h_dgl.numpy(), rtol=1e-5, atol=1e-5)


def test_reordered_batch_relabels_layer_zero() -> None:
    rng = np.random.default_rng(0)
    from featdb.sampling.mfg import Layer

    l0 = Layer(np.array([0, 3, 4, 2, 1]), np.array([0, 0, 1, 1, 2]), np.arange(3), 5, 3)
    l1 = Layer(np.array([1, 2]), np.array([0, 0]), np.arange(1), 3, 1)
    batch = Batch(np.array([10]), np.array([10, 11, 12, 13, 14]), (l0, l1))
    h = rng.standard_normal((5, 3))
    order = np.array([3, 0, 4, 1, 2])
    rb = batch.reordered(order)
    np.testing.assert_array_equal(rb.input_ids, batch.input_ids[order])
    np.testing.assert_allclose(_numpy_mean(rb.layers[0], h[order]), _numpy_mean(l0, h))
    np.testing.assert_array_equal(rb.input_ids[rb.layers[0].dst_in_src], batch.input_ids[:3])


# --------------------------------------------------------------------------- bad input
@pytest.fixture
def small(tmp_path: Path) -> Any:
    with make_synth_store(tmp_path / "s", nodes=800, dim=4, seed=1) as st:
        make_sample_set(st, "taken", (3,), 64, 1)
        yield st


def _samples_dirs(st: featdb.Store) -> list[str]:
    d = st.root / "samples"
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


BAD_CONFIGS = [
    pytest.param(dict(fanouts=(0,)), InvalidInputError, id="fanout-0"),
    pytest.param(dict(fanouts=(5, -2)), InvalidInputError, id="fanout-negative"),
    pytest.param(dict(fanouts=()), InvalidInputError, id="no-fanouts"),
    pytest.param(dict(batch_size=0), InvalidInputError, id="batch-size-0"),
    pytest.param(dict(epochs=0), InvalidInputError, id="epochs-0"),
    pytest.param(dict(split="training"), InvalidInputError, id="unknown-split"),
    pytest.param(dict(name="a/b"), InvalidInputError, id="bad-name"),
    pytest.param(dict(name=""), InvalidInputError, id="empty-name"),
    pytest.param(dict(name="taken"), AlreadyExistsError, id="name-clash"),
]


@pytest.mark.parametrize(("change", "error"), BAD_CONFIGS)
def test_bad_config_raises_and_changes_nothing(small: Any, change: dict[str, Any], error: type) -> None:
    before, dirs, files = catalog_state(small), _samples_dirs(small), tree(small.root / "samples")
    cfg = SampleConfig(**({"name": "new", "fanouts": (3, 3), "batch_size": 32, "epochs": 1} | change))
    with pytest.raises(error) as exc:
        sample(small, cfg)
    assert isinstance(exc.value, FeatDBError) and str(exc.value)
    assert catalog_state(small) == before
    assert _samples_dirs(small) == dirs == ["taken"]
    assert tree(small.root / "samples") == files


@pytest.mark.parametrize("text", ["10,,x", "x", "", " , ", "10;10", "1.5"])
def test_malformed_fanouts_text_is_rejected(text: str) -> None:
    with pytest.raises(InvalidInputError, match="fanouts"):
        parse_fanouts(text)


def test_fanouts_text_parses() -> None:
    assert parse_fanouts("10,15,20") == (10, 15, 20)
    assert parse_fanouts(" 5, -1 ") == (5, -1)


def test_fanouts_with_an_empty_entry_are_rejected() -> None:
    with pytest.raises(InvalidInputError):
        parse_fanouts("10,,10")


def test_missing_graph_raises_and_changes_nothing(tmp_path: Path) -> None:
    with featdb.create(tmp_path / "s") as st:
        st.write_table(FEAT, np.zeros((10, 2), dtype=np.float32))
        before = catalog_state(st)
        with pytest.raises(GraphNotFoundError):
            sample(st, SampleConfig("x", (2,), 4, 1))
        assert catalog_state(st) == before
        assert _samples_dirs(st) == []


def test_empty_split_raises_not_found(tmp_path: Path) -> None:
    edges = np.array([[0, 1, 2, 3], [1, 2, 3, 0]], dtype=np.int64)
    np.save(tmp_path / "e.npy", edges)
    with featdb.create(tmp_path / "s") as st:
        ingest_graph(st, tmp_path / "e.npy", num_nodes=4)  # no split file: every split is empty
        before = catalog_state(st)
        with pytest.raises(NotFoundError, match="split"):
            sample(st, SampleConfig("x", (2,), 4, 1, split="valid"))
        assert catalog_state(st) == before
        assert _samples_dirs(st) == []


def test_read_only_store_refuses_to_sample(small: Any) -> None:
    small.close()  # one LMDB handle per store per process
    with featdb.open(small.root, mode="r") as ro:
        with pytest.raises(featdb.errors.ReadOnlyError):
            sample(ro, SampleConfig("new", (3,), 32, 1))
        assert _samples_dirs(ro) == ["taken"]


def _interrupt_after(n: int) -> Any:
    calls = []

    def progress(k: int) -> None:
        calls.append(k)
        if len(calls) == n:
            raise KeyboardInterrupt

    return progress


def test_interrupted_sampling_leaves_nothing_behind(small: Any) -> None:
    before = catalog_state(small)
    with leaked_files() as leaks, torch_threads(1), pytest.raises(KeyboardInterrupt):
        sample(small, SampleConfig("new", (3, 3), 32, 2), progress=_interrupt_after(3))
    del leaks  # the unclosed segment file is the separate, xfailed bug below
    assert catalog_state(small) == before
    assert _samples_dirs(small) == ["taken"]


def test_interrupted_sampling_closes_its_segment_file(small: Any) -> None:
    with leaked_files() as leaks, torch_threads(1), pytest.raises(KeyboardInterrupt):
        sample(small, SampleConfig("new", (3, 3), 32, 2), progress=_interrupt_after(3))
    assert leaks == []


def test_a_failing_sampling_process_fails_the_run_and_leaves_nothing_behind(small: Any) -> None:
    import featdb.sampling.offline as offline

    before = catalog_state(small)

    def broken(epoch: int, i: int, seeds: np.ndarray) -> Any:
        if i == 3:
            raise RuntimeError("sampler crashed (simulated)")
        return real(epoch, i, seeds)

    real = offline._sample_one
    with mock.patch.object(offline, "_sample_one", broken), pytest.raises(RuntimeError, match="simulated"):
        sample(small, SampleConfig("new", (3, 3), 32, 2), workers=2)  # forked workers inherit the patch
    assert catalog_state(small) == before
    assert _samples_dirs(small) == ["taken"]


def test_failed_catalog_write_leaves_nothing_behind(small: Any) -> None:
    before = catalog_state(small)
    real_write = small.catalog.write

    def failing(fn: Any) -> Any:
        raise featdb.errors.CatalogError("disk full (simulated)")

    with (
        torch_threads(1),
        mock.patch.object(small.catalog, "write", failing),
        pytest.raises(featdb.errors.CatalogError),
    ):
        sample(small, SampleConfig("new", (3,), 32, 1))
    assert small.catalog.write == real_write
    assert catalog_state(small) == before
    assert _samples_dirs(small) == ["taken"]


def test_gc_during_sampling_leaves_the_run_alone(small: Any) -> None:
    from featdb.layout.gc import drop_orphans

    def progress(n: int) -> None:
        drop_orphans(small)  # `featdb gc` in another process while this run writes

    with leaked_files(), torch_threads(1):
        sample(small, SampleConfig("new", (3,), 32, 2), progress=progress)
    assert _samples_dirs(small) == ["new", "taken"]


def test_unknown_sample_set_and_batch_out_of_range(small: Any) -> None:
    with pytest.raises(SampleSetNotFoundError):
        SampleSet(small, "nope")
    with SampleSet(small, "taken") as ss:
        with pytest.raises(IndexError):
            ss.batch(ss.num_batches)
        with pytest.raises(IndexError):
            ss.input_ids(-1)


# --------------------------------------------------------------------------- corruption
def test_corrupt_segment_byte_is_caught_by_batch_and_verify(small: Any) -> None:
    with SampleSet(small, "taken") as ss:
        assert ss.num_batches >= 3
        _, off, length, _, _, _ = (int(v) for v in ss.index[1])
        seg = small.root / ss.doc["path"] / ss.doc["segments"][0]
        good0 = ss.batch(0)
    assert small.verify() == []
    flip_byte(seg, off + length - 3)  # inside batch 1's last layer
    with SampleSet(small, "taken") as ss:
        with pytest.raises(CorruptDataError, match="checksum"):
            ss.batch(1)
        np.testing.assert_array_equal(ss.batch(0).input_ids, good0.input_ids)  # others still read
    problems = small.verify()
    assert len(problems) == 1 and f"{ss.doc['path']}/{ss.doc['segments'][0]}" in problems[0]


def test_corrupt_input_ids_are_caught_by_the_trace_read(small: Any) -> None:
    """The planner reads only record heads; their own checksum catches a flipped input id."""
    with SampleSet(small, "taken") as ss:
        _, off, _, _, _, _ = (int(v) for v in ss.index[1])
        seg = small.root / ss.doc["path"] / ss.doc["segments"][0]
        n_layers = len(ss.doc["fanouts"])
        n_seeds = len(ss.batch(1).seeds)
        good = ss.input_ids(1)
    flip_byte(seg, off + 32 + 24 * n_layers + (n_seeds + 1) * ss.id_dtype.itemsize)  # input id 1
    with SampleSet(small, "taken") as ss:
        with pytest.raises(CorruptDataError, match=r"head .* fails its checksum"):
            ss.input_ids(1)
        with pytest.raises(CorruptDataError):
            list(ss.trace())
        assert len(ss.input_ids(0)) > 0 and len(good) > 0


def test_sample_sets_without_head_checksums_still_read(small: Any) -> None:
    """Sets written before the head checksum: five index columns, heads read unchecked."""
    doc = small.catalog.get("sampleset/taken")
    path = small.root / doc["path"] / "index.i64"
    with SampleSet(small, "taken") as ss:
        want = [ss.input_ids(b) for b in range(ss.num_batches)]
        first = ss.batch(0)
    five = np.fromfile(path, dtype=np.int64).reshape(-1, 6)[:, :5].tobytes()
    path.write_bytes(five)
    legacy = {k: v for k, v in doc.items() if k != "index_columns"}
    rec = {"size": len(five), "crcs": crc32_blocks(five), "kind": "samples"}  # as such a set recorded it

    def txn(t: Any) -> None:
        t.put("sampleset/taken", legacy)
        t.put(f"file/{doc['path']}/index.i64", rec)

    small.catalog.write(txn)
    with SampleSet(small, "taken") as ss:
        assert ss.index.shape[1] == 5
        for b, ids in enumerate(want):
            np.testing.assert_array_equal(ss.input_ids(b), ids)
        np.testing.assert_array_equal(ss.batch(0).input_ids, first.input_ids)


def test_truncated_index_is_reported_as_corrupt(small: Any) -> None:
    doc = small.catalog.get("sampleset/taken")
    index = small.root / doc["path"] / "index.i64"
    index.write_bytes(index.read_bytes()[:-40])
    with pytest.raises(CorruptDataError):
        SampleSet(small, "taken")
    assert any("index.i64" in p for p in small.verify())


# --------------------------------------------------------------------------- evaluation parts
def test_evaluation_splits_are_parts_of_the_set_in_split_order(tmp_path: Path) -> None:
    """By default the other splits are sampled once each after the training epochs: each part's
    batches hold its split's ids in stored order, counts cover every part, and the samples do not
    depend on the number of sampling processes."""
    st = make_synth_store(tmp_path / "s", nodes=1500, dim=8, seed=2)
    parts = {}
    for workers in (1, 2):
        doc = sample(st, SampleConfig(f"ev{workers}", (3, 3), 40, 2, seed=3), workers=workers)
        mem = doc["memory"]
        assert mem["peak_rss_bytes"] > 0 and mem["charged_bytes"] <= mem["budget_bytes"]
        g = load_graph(st)
        with SampleSet(st, f"ev{workers}") as ss:
            bpe = ss.batches_per_epoch
            assert ss.parts["train"] == (0, 2 * bpe) and doc["parts"]["train"] == [0, 2 * bpe]
            lo = 2 * bpe
            for split in ("valid", "test"):
                ids = g.split(split)
                part = ss.part_batches(split)
                assert part[0] == lo and len(part) == -(-len(ids) // 40)
                np.testing.assert_array_equal(np.concatenate([ss.batch(int(b)).seeds for b in part]), ids)
                lo = int(part[-1]) + 1
            assert lo == ss.num_batches
            counts = np.zeros(g.num_nodes, dtype=np.int64)
            for b in range(ss.num_batches):
                np.add.at(counts, ss.input_ids(b), 1)
            np.testing.assert_array_equal(ss.counts(), counts)
            parts[workers] = [ss.batch(b).input_ids for b in range(ss.num_batches)]
    for a, b in zip(parts[1], parts[2], strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_budget_too_small_for_sampling_is_refused_naming_the_parts(tmp_path: Path) -> None:
    from featdb.errors import BudgetExceededError

    st = make_synth_store(tmp_path / "s", nodes=800, dim=8, seed=2)
    with pytest.raises(BudgetExceededError, match=r"runtime.*sampling processes"):
        sample(st, SampleConfig("tiny", (3,), 40, 1), memory_budget=64 << 20)
    assert st.catalog.get("sampleset/tiny") is None
    assert not list((st.root / "samples").glob("tiny*")) if (st.root / "samples").exists() else True

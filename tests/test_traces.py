"""Access traces: adding (Python and CLI), crash safety, checks, packing from a trace and serving its batches."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

import featdb
from featdb.cli import cli
from featdb.errors import (
    AlreadyExistsError,
    ConfigError,
    CorruptDataError,
    IdsOutOfRangeError,
    InvalidIdsError,
    InvalidInputError,
    StaleDataError,
    TableNotFoundError,
    TraceNotFoundError,
)
from featdb.layout import Budgets
from featdb.serve import open_reader
from featdb.traces import Trace, add_trace, list_traces, open_trace_source
from tests.helpers import assert_one_error_line, assert_rows_equal, catalog_state, flip_byte, tree

KEY = "item/_/emb"
ROWS, DIM = 3000, 16


def zipf_batches(rng: np.random.Generator, n: int, size: int = 200, rows: int = ROWS) -> list[np.ndarray]:
    return [(rng.zipf(1.3, size) - 1) % rows for _ in range(n)]


@pytest.fixture
def emb_store(store: featdb.Store, rng: np.random.Generator) -> featdb.Store:
    store.write_table(KEY, rng.standard_normal((ROWS, DIM)).astype(np.float32))
    return store


def served(reader: Any, b: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows in the trace's id order, those ids) for batch ``b``."""
    with reader.read_batch(b) as br:
        rows = np.empty_like(br.rows)
        rows[br.order] = br.rows
        ids = np.empty_like(br.input_ids)
        ids[br.order] = br.input_ids
    return rows, ids


def test_add_stores_distinct_sorted_ids_and_counts(emb_store: featdb.Store, rng: np.random.Generator) -> None:
    batches = zipf_batches(rng, 12)
    doc = add_trace(emb_store, "clicks", KEY, batches, epochs=3)
    assert doc["batches"] == 12 and doc["epochs"] == 3 and doc["lookups"] == 12 * 200
    with Trace(emb_store, "clicks") as t:
        assert (t.num_batches, t.batches_per_epoch, t.table, t.num_nodes) == (12, 4, KEY, ROWS)
        assert t.groups() == [(0, 4), (4, 8), (8, 12)]
        want = np.zeros(ROWS, dtype=np.int32)
        for b, ids in enumerate(batches):
            np.testing.assert_array_equal(t.input_ids(b), np.unique(ids))
            want[np.unique(ids)] += 1
        np.testing.assert_array_equal(t.counts(), want)
    assert [d["name"] for d in list_traces(emb_store)] == ["clicks"]
    assert emb_store.verify() == []


@pytest.mark.parametrize(
    ("batches", "error", "fragment"),
    [
        ([np.array([1, 2]), np.array([ROWS])], IdsOutOfRangeError, "batch 1"),
        ([np.array([1.5])], InvalidIdsError, "batch 0"),
        ([np.array([], dtype=np.int64)] * 2, InvalidInputError, "holds 2 batches but no row id"),
        ([], InvalidInputError, "holds no batch"),
        ([np.array([1])] * 3, InvalidInputError, "2 equal epochs"),
    ],
)
def test_bad_batches_change_nothing(
    emb_store: featdb.Store, batches: list[np.ndarray], error: type, fragment: str
) -> None:
    before, files = catalog_state(emb_store), tree(emb_store.root)
    with pytest.raises(error, match=fragment):
        add_trace(emb_store, "bad", KEY, iter(batches), epochs=2 if len(batches) == 3 else 1)
    assert catalog_state(emb_store) == before
    assert {k for k in tree(emb_store.root) if not k.startswith("locks")} == {
        k for k in files if not k.startswith("locks")
    } | {"traces/"}


def test_batches_that_read_no_row_of_the_table_are_served_empty(emb_store: featdb.Store) -> None:
    """(one table of several, e.g. one node type's: a batch may read none of its rows)"""
    batches = [np.array([3, 1, 3]), np.array([], dtype=np.int64), np.array([900, 5]), np.zeros(0, dtype=np.int32)]
    assert add_trace(emb_store, "t", KEY, batches)["empty_batches"] == 2
    base = emb_store.read_all(KEY)
    for budgets in (Budgets(), Budgets(host_cache=DIM * 4), Budgets(max_blowup=0.0)):
        featdb.pack(emb_store, None, None, budgets, trace="t")
        with open_reader(emb_store, trace="t") as r:
            for b in r.epoch_order(range(4), np.random.default_rng(0)):
                rows, ids = served(r, b)
                np.testing.assert_array_equal(ids, np.unique(batches[b]))
                assert rows.shape == (len(ids), DIM)
                if len(ids):
                    assert_rows_equal(rows, base[ids])
    assert emb_store.verify() == []


def test_names_tables_and_duplicates_are_checked(emb_store: featdb.Store) -> None:
    with pytest.raises(InvalidInputError, match="trace name"):
        add_trace(emb_store, "../x", KEY, [np.array([1])])
    with pytest.raises(TableNotFoundError):
        add_trace(emb_store, "t", "item/_/nope", [np.array([1])])
    add_trace(emb_store, "t", KEY, [np.array([1])])
    with pytest.raises(AlreadyExistsError, match="featdb gc --trace t"):
        add_trace(emb_store, "t", KEY, [np.array([2])])
    with pytest.raises(TraceNotFoundError):
        Trace(emb_store, "missing")


def test_a_damaged_batch_is_caught_on_read_and_by_verify(emb_store: featdb.Store) -> None:
    add_trace(emb_store, "t", KEY, [np.arange(10), np.arange(100, 120)])
    flip_byte(emb_store.root / "traces/t/ids.bin", 4 * 12)
    with Trace(emb_store, "t") as t:
        np.testing.assert_array_equal(t.input_ids(0), np.arange(10))
        with pytest.raises(CorruptDataError, match="batch 1"):
            t.input_ids(1)
    assert any("traces/t/ids.bin" in p for p in emb_store.verify())


def test_a_replaced_table_with_other_rows_makes_the_trace_stale(emb_store: featdb.Store) -> None:
    add_trace(emb_store, "t", KEY, [np.arange(10)])
    emb_store.write_table(KEY, np.zeros((50, DIM), dtype=np.float32), replace=True)
    with pytest.raises(StaleDataError, match="--trace t --force"):
        Trace(emb_store, "t")


def test_sources_npz_and_folder_read_the_same(tmp_path: Path, rng: np.random.Generator) -> None:
    batches = zipf_batches(rng, 5, size=37)
    np.savez_compressed(tmp_path / "t.npz", ids=np.concatenate(batches), offsets=np.arange(6) * 37)
    (tmp_path / "dir").mkdir()
    for i, b in enumerate(batches):
        np.save(tmp_path / "dir" / f"batch-{i:03d}.npy", b.astype(np.int32))
    for src in (tmp_path / "t.npz", tmp_path / "dir"):
        n, it = open_trace_source(src)
        got = list(it)
        assert n == 5 and len(got) == 5
        for a, b in zip(got, batches, strict=True):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    ("arrays", "fragment"),
    [
        ({"ids": np.arange(4)}, "no array offsets"),
        ({"ids": np.arange(4), "offsets": np.array([0, 5])}, "ends at 5"),
        ({"ids": np.arange(4), "offsets": np.array([0, 3, 2, 4])}, "never decrease"),
        ({"ids": np.arange(4.0), "offsets": np.array([0, 4])}, "1-D integer array"),
    ],
)
def test_bad_npz_sources_are_refused(tmp_path: Path, arrays: dict[str, np.ndarray], fragment: str) -> None:
    np.savez(tmp_path / "t.npz", **arrays)
    with pytest.raises(InvalidInputError, match=fragment):
        _n, it = open_trace_source(tmp_path / "t.npz")
        list(it)


def test_not_a_trace_source(tmp_path: Path) -> None:
    (tmp_path / "x.txt").write_text("1 2 3")
    for p in (tmp_path / "x.txt", tmp_path / "missing.npz", tmp_path):
        with pytest.raises(InvalidInputError):
            open_trace_source(p)


@pytest.mark.parametrize("budgets", [Budgets(host_cache=16 * 64 * 20), Budgets(max_blowup=0.5), Budgets()])
def test_pack_a_trace_and_serve_its_batches(
    emb_store: featdb.Store, rng: np.random.Generator, budgets: Budgets
) -> None:
    batches = zipf_batches(rng, 16)
    add_trace(emb_store, "clicks", KEY, batches, epochs=2)
    doc = featdb.pack(emb_store, None, None, budgets, trace="clicks")
    assert doc["trace"] == "clicks" and doc["table"] == KEY and doc["sample_set"] == ""
    base = emb_store.read_all(KEY)
    with open_reader(emb_store, trace="clicks") as r:
        for b in r.epoch_order(range(16), np.random.default_rng(0)):
            rows, ids = served(r, b)
            np.testing.assert_array_equal(ids, np.unique(batches[b]))
            assert_rows_equal(rows, base[ids])
        stats = r.stats.as_dict()
    assert stats["batches"] == 16
    assert emb_store.verify() == []


def test_the_reader_checks_the_layout_is_this_trace(emb_store: featdb.Store, rng: np.random.Generator) -> None:
    add_trace(emb_store, "a", KEY, zipf_batches(rng, 4))
    add_trace(emb_store, "b", KEY, zipf_batches(rng, 4))
    featdb.pack(emb_store, None, None, Budgets(), trace="a")
    with pytest.raises(ConfigError, match="packed for trace 'a', not trace 'b'"):
        open_reader(emb_store, trace="b")
    featdb.gc(emb_store, traces=["a"], force=True)
    add_trace(emb_store, "a", KEY, zipf_batches(rng, 4))
    with pytest.raises(ConfigError, match="added again"):
        open_reader(emb_store, trace="a")
    with pytest.raises(ConfigError, match="exactly one"):
        featdb.pack(emb_store, "train", None, Budgets(), trace="a")
    with pytest.raises(ConfigError, match="reads table"):
        featdb.pack(emb_store, None, "node/_/x", Budgets(), trace="a")


def test_gc_keeps_the_trace_the_layout_serves(emb_store: featdb.Store, rng: np.random.Generator) -> None:
    add_trace(emb_store, "a", KEY, zipf_batches(rng, 4))
    add_trace(emb_store, "old", KEY, zipf_batches(rng, 4))
    featdb.pack(emb_store, None, None, Budgets(), trace="a")
    with pytest.raises(InvalidInputError, match="trace 'a' is what the current layout serves"):
        featdb.gc(emb_store, traces=["old", "a"])
    assert {d["name"] for d in list_traces(emb_store)} == {"a", "old"}
    with pytest.raises(TraceNotFoundError):
        featdb.gc(emb_store, traces=["nope"])
    res = featdb.gc(emb_store, traces=["old"])
    assert res["traces"] == ["old"] and not (emb_store.root / "traces/old").exists()
    (emb_store.root / "traces/crashed.partial-1").mkdir()
    assert "traces/crashed.partial-1" in featdb.gc(emb_store)["orphans"]
    assert emb_store.verify() == []


def test_cli_trace_add_pack_info_gc(emb_store: featdb.Store, tmp_path: Path, rng: np.random.Generator) -> None:
    batches = zipf_batches(rng, 6)
    np.savez(tmp_path / "t.npz", ids=np.concatenate(batches), offsets=np.arange(7) * 200)
    root = str(emb_store.root)
    emb_store.close()
    run = CliRunner().invoke
    res = run(cli, ["trace", "add", root, str(tmp_path / "t.npz"), "--name", "clicks", "--table", KEY, "--json"])
    assert res.exit_code == 0, res.output
    added = json.loads(res.output)
    assert added["batches"] == 6 and added["lookups"] == 1200 and added["memory"]["peak_rss_bytes"] > 0
    res = run(cli, ["pack", root, "--trace", "clicks", "--host-cache", "32KiB", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["trace"] == "clicks"
    info = json.loads(run(cli, ["info", root, "--json"]).output)
    assert [t["name"] for t in info["traces"]] == ["clicks"] and info["layout"]["trace"] == "clicks"
    assert "trace=clicks" in run(cli, ["info", root]).output
    assert json.loads(run(cli, ["trace", "list", root, "--json"]).output)[0]["table"] == KEY
    assert_one_error_line(run(cli, ["gc", root, "--trace", "clicks"]), "what the current layout serves")
    assert_one_error_line(run(cli, ["pack", root]), "exactly one of --sample-set and --trace")
    assert_one_error_line(run(cli, ["pack", root, "--trace", "nope"]), "TraceNotFoundError")
    res = run(cli, ["trace", "add", root, str(tmp_path / "t.npz"), "--name", "c2", "--table", "x/_/y"])
    assert_one_error_line(res, "TableNotFoundError")


def test_the_recommendation_example_trains_on_the_same_rows_in_every_mode(tmp_path: Path) -> None:
    """tools/rec_example.py at toy size: every mode serves the same rows (the same losses), featdb
    reads fewer bytes than the naive memory map."""
    import subprocess
    import sys

    tool = Path(__file__).resolve().parent.parent / "tools" / "rec_example.py"
    argv = [sys.executable, str(tool), str(tmp_path / "rec"), "--rows", "50000", "--dim", "32", "--batches", "12"]
    argv += ["--samples", "64", "--lookups", "8", "--host-cache", "128KiB", "--cap", "0", "--json"]
    res = json.loads(subprocess.run(argv, capture_output=True, text=True, check=True, timeout=300).stdout)
    runs = res["runs"]
    assert set(runs) == {"featdb", "mmap", "direct"} and all("loss_last_10" in r for r in runs.values()), runs
    assert len({(r["loss_first_10"], r["loss_last_10"]) for r in runs.values()}) == 1
    assert runs["featdb"]["rows_served"] == res["build"]["trace"]["ids"]
    assert runs["featdb"]["featdb_tiers_rows"]["l2"] > 0 and res["build"]["layout"]["blowup"] > 0
    assert runs["featdb"]["featdb_counted_bytes"] < runs["direct"]["featdb_counted_bytes"]


SERVE_ALL = """
import json, sys, numpy as np, featdb
root, trace = sys.argv[1], sys.argv[2]
with featdb.open(root) as st, featdb.open_reader(st, trace=trace) as r:
    t = featdb.Trace(st, trace)
    base = st.read_all(t.table)
    for b in range(t.num_batches):
        with r.read_batch(b) as br:
            assert np.array_equal(br.rows, base[br.input_ids]), b
    s = r.stats.as_dict()
    print(json.dumps({"table": r.doc["table"], "gen": r.generation, "rows": s["rows"], "batches": s["batches"]}))
"""


def test_two_tables_packed_and_served_at_once_from_two_processes(
    emb_store: featdb.Store, rng: np.random.Generator
) -> None:
    import subprocess
    import sys

    users = "user/_/emb"
    emb_store.write_table(users, rng.standard_normal((500, 8)).astype(np.float32))
    add_trace(emb_store, "items", KEY, zipf_batches(rng, 10))
    add_trace(emb_store, "users", users, zipf_batches(rng, 10, size=50, rows=500))
    first = featdb.pack(emb_store, None, None, Budgets(host_cache=DIM * 4 * 100), trace="items")
    second = featdb.pack(emb_store, None, None, Budgets(), trace="users")
    layouts = featdb.info(emb_store)["layouts"]
    assert {t: lay["id"] for t, lay in layouts.items()} == {KEY: first["id"], users: second["id"]}
    assert featdb.gc(emb_store)["removed"] == []  # each table's current layout is kept
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", SERVE_ALL, str(emb_store.root), name], stdout=subprocess.PIPE, text=True
        )
        for name in ("items", "users")
    ]
    outs = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    for out, name, doc in zip(outs, ("items", "users"), (first, second), strict=True):
        with Trace(emb_store, name) as t:
            assert out["gen"] == doc["id"] and out["table"] == t.table and out["batches"] == t.num_batches
            assert out["rows"] == int(t.num_inputs().sum())  # each process's statistics are its own table's
    with open_reader(emb_store, table=users) as r:
        assert r.generation == second["id"]
    third = featdb.pack(emb_store, None, None, Budgets(), trace="items")  # repacking one table
    assert featdb.gc(emb_store)["removed"] == [first["id"]]  # frees its old layout, not the other table's
    assert set(generation_ids(emb_store)) == {second["id"], third["id"]} and emb_store.verify() == []
    assert "layout of user/_/emb" in CliRunner().invoke(cli, ["info", str(emb_store.root)]).output


def generation_ids(st: featdb.Store) -> list[str]:
    return [doc["id"] for _, doc in st.catalog.scan("generation/")]


def test_a_sample_set_reader_finds_its_table_layout_after_another_table_is_packed(
    store: featdb.Store, rng: np.random.Generator
) -> None:
    featdb.synth(store, nodes=2000, dim=8, classes=4, seed=0)
    featdb.sample(store, featdb.SampleConfig("train", fanouts=(5,), batch_size=256, epochs=1))
    gnn = featdb.pack(store, "train", "node/_/feat", Budgets())
    store.write_table(KEY, rng.standard_normal((ROWS, DIM)).astype(np.float32))
    add_trace(store, "clicks", KEY, zipf_batches(rng, 4))
    featdb.pack(store, None, None, Budgets(), trace="clicks")  # now the last packed
    with open_reader(store, sample_set="train") as r:  # what featdb-train opens
        assert r.generation == gnn["id"] and r.doc["table"] == "node/_/feat"
        with featdb.SampleSet(store, "train") as ss:
            r.attach(ss)
            with r.read_batch(0) as br:
                assert_rows_equal(br.rows, store.read("node/_/feat", br.input_ids))


def test_one_trace_per_node_type_from_one_sample_set(store: featdb.Store) -> None:
    """A graph whose ids are grouped by type (DGL's to_homogeneous order), one table per type:
    each type's trace packed and served on its own table, together they serve every batch."""
    from featdb.traces import traces_by_type

    featdb.synth(store, nodes=2000, dim=8, classes=4, seed=0)
    feat = store.read_all("node/_/feat")
    store.write_table("node/paper/feat", feat[:1200])
    store.write_table("node/author/feat", feat[1200:])
    featdb.sample(store, featdb.SampleConfig("train", fanouts=(5, 5), batch_size=128, epochs=2))
    types = {"paper": (0, 1200, "node/paper/feat"), "author": (1200, 2000, "node/author/feat")}
    with pytest.raises(InvalidInputError, match="overlap"):
        traces_by_type(store, "train", {**types, "x": (1100, 1300, "node/paper/feat")})
    docs = traces_by_type(store, "train", types)
    assert set(docs) == {"paper", "author"} and len(list_traces(store)) == 2
    with featdb.SampleSet(store, "train") as ss:
        n, parts = ss.num_batches, ss.parts
        wanted = [ss.input_ids(b) for b in range(n)]
    with Trace(store, "train.paper") as t:
        assert t.groups()[-1][1] == n and len(t.groups()) == 2 + sum(1 for p in parts if p != "train")
    for t in types:
        featdb.pack(store, None, None, Budgets(host_cache=100 * 32), trace=f"train.{t}")
    with open_reader(store, trace="train.paper") as papers, open_reader(store, trace="train.author") as authors:
        for b in range(n):
            rows_p, ids_p = served(papers, b)
            rows_a, ids_a = served(authors, b)
            got = np.concatenate([ids_p, ids_a + 1200])
            np.testing.assert_array_equal(np.sort(got), np.sort(wanted[b]))
            assert_rows_equal(np.concatenate([rows_p, rows_a]), feat[got])
    with pytest.raises(AlreadyExistsError):
        traces_by_type(store, "train", types)
    assert store.verify() == []


def test_cli_trace_split(store: featdb.Store) -> None:
    featdb.synth(store, nodes=1000, dim=4, classes=2, seed=0)
    feat = store.read_all("node/_/feat")
    store.write_table("node/paper/feat", feat[:700])
    store.write_table("node/author/feat", feat[700:])
    featdb.sample(store, featdb.SampleConfig("s", fanouts=(3,), batch_size=200, epochs=1))
    root = str(store.root)
    store.close()
    run = CliRunner().invoke
    types = ["--type", "paper=0:700:node/paper/feat", "--type", "author=700:1000:node/author/feat"]
    res = run(cli, ["trace", "split", root, "--sample-set", "s", *types, "--prefix", "t", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert {d["name"] for d in out.values()} == {"t.paper", "t.author"}
    assert_one_error_line(
        run(cli, ["trace", "split", root, "--sample-set", "s", "--type", "paper=0"]), "NAME=LO:HI:TABLE"
    )
    bad = ["--type", "paper=0:600:node/paper/feat"]
    assert_one_error_line(run(cli, ["trace", "split", root, "--sample-set", "s", *bad]), "700 rows")


def write_mag_like(root: Path, rng: np.random.Generator) -> dict[str, int]:
    """A tiny heterogeneous OGB folder in ogbn-mag's layout."""
    import gzip

    counts = {"author": 300, "field_of_study": 20, "paper": 500}

    def csv(path: Path, arr: np.ndarray, fmt: str = "%d") -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with gzip.open(path, "wt") as f:
            np.savetxt(f, arr, fmt=fmt, delimiter=",")

    raw = root / "raw"
    raw.mkdir(parents=True)
    with gzip.open(raw / "num-node-dict.csv.gz", "wt") as f:
        f.write("paper,author,field_of_study\n500,300,20\n")  # not in name order: featdb sorts
    csv(raw / "node-feat/paper/node-feat.csv.gz", rng.standard_normal((500, 4)), "%.6f")
    csv(raw / "node-feat/author/node-feat.csv.gz", rng.standard_normal((300, 4)), "%.6f")
    csv(raw / "node-label/paper/node-label.csv.gz", rng.integers(0, 3, (500, 1)))
    rels = {"author___writes___paper": (300, 500), "paper___cites___paper": (500, 500)}
    rels["paper___has_topic___field_of_study"] = (500, 20)
    for name, (ns, nd) in rels.items():
        csv(
            raw / "relations" / name / "edge.csv.gz",
            np.stack([rng.integers(0, ns, 2000), rng.integers(0, nd, 2000)], 1),
        )
    perm = rng.permutation(500)
    for name, ids in (("train", perm[:300]), ("valid", perm[300:400]), ("test", perm[400:])):
        csv(root / "split/time/paper" / f"{name}.csv.gz", ids.reshape(-1, 1))
    return counts


def test_a_heterogeneous_ogb_folder_is_sampled_split_by_type_packed_and_served(
    store: featdb.Store, tmp_path: Path, rng: np.random.Generator
) -> None:
    write_mag_like(tmp_path / "mag", rng)
    doc = featdb.ingest_ogb(store, tmp_path / "mag")
    assert doc["node_types"] == {"author": [0, 300], "field_of_study": [300, 320], "paper": [320, 820]}
    assert doc["num_nodes"] == 820 and doc["num_edges"] == 2 * 3 * 2000 and doc["num_train"] == 300
    assert store.schema("node/paper/feat").rows == 500 and not store.has_table("node/field_of_study/feat")
    g = featdb.load_graph(store)
    assert (g.labels[:320] == -1).all() and (g.labels[320:] >= 0).all() and (g.train >= 320).all()
    featdb.sample(store, featdb.SampleConfig("train", fanouts=(5, 5), batch_size=64, epochs=1))
    root = str(store.root)
    store.close()
    res = CliRunner().invoke(cli, ["trace", "split", root, "--sample-set", "train", "--json"])  # types from the graph
    assert res.exit_code == 0, res.output
    assert set(json.loads(res.output)) == {"author", "paper"}
    with featdb.open(root, mode="a") as st:
        for t in ("author", "paper"):
            featdb.pack(st, None, None, Budgets(host_cache=50 * 16), trace=f"train.{t}")
        with featdb.SampleSet(st, "train") as ss, open_reader(st, trace="train.paper") as pr:
            for b in range(ss.num_batches):
                rows, ids = served(pr, b)
                want = ss.input_ids(b)
                np.testing.assert_array_equal(ids + 320, np.sort(want[(want >= 320) & (want < 820)]))
                assert_rows_equal(rows, st.read("node/paper/feat", ids))
        assert st.verify() == []

"""Layout: the pure planner, the batched packer and generations (crash safety, pins, gc, verify).

The central property: whatever the graph, budgets, blowup cap, policy, memory
budget and row shape, every batch served from the packed layout is
byte-identical to the base table's rows of its input ids, the realised blowup
respects the cap, and the planner's predictions are what serving measures.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pytest
from helpers import (
    FEAT,
    PLAN_KEYS,
    assert_rows_equal,
    catalog_state,
    flip_byte,
    gen_dir,
    leaked_files,
    make_layout,
    make_sample_set,
    make_synth_store,
    realised_blowup,
    shared_only,
    tree,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import featdb
from featdb.errors import (
    CatalogError,
    ConfigError,
    InvalidInputError,
    LayoutNotFoundError,
    SampleSetNotFoundError,
    SchemaMismatchError,
    TableNotFoundError,
)
from featdb.layout import generation
from featdb.layout import pack as pack_mod
from featdb.layout.budget import plan, segment_rows, uniform_bounds
from featdb.layout.document import SEG_COLS
from featdb.layout.pack import pack
from featdb.layout.plan import L1, L2, L4, Budgets, hot_sets
from featdb.sampling.sampleset import SampleSet
from featdb.serve.reader import open_reader
from featdb.store import Store

pytest.importorskip("dgl")  # sampling needs DGL; the planner tests below need nothing

TINY_DIR = Path(__file__).resolve().parent.parent / ".test-tmp"


# --------------------------------------------------------------------------- helpers
def serve_all(
    st: Store, sample_set: str, base: np.ndarray, epoch_seed: int | None = None, **open_kw: Any
) -> dict[str, Any]:
    """Read every batch once (in id order, or in ``epoch_order``), check rows against the base
    table, return a fresh reader's stats."""
    with open_reader(st, sample_set=sample_set, **open_kw) as r, SampleSet(st, sample_set) as ss:
        assert r.num_batches == ss.num_batches
        order = list(range(r.num_batches))
        if epoch_seed is not None:
            order = r.epoch_order(order, np.random.default_rng(epoch_seed))
            assert sorted(order) == list(range(r.num_batches))
        for b in order:
            ids = ss.input_ids(b)
            with r.read_batch(b) as br:
                assert np.array_equal(np.sort(br.order), np.arange(len(ids))), "order is a permutation"
                assert_rows_equal(br.rows, base[ids[br.order]])
        return r.stats.as_dict()


def check_layout(st: Store, doc: dict[str, Any], base: np.ndarray, budgets: Budgets) -> None:
    """The invariants every packed generation must satisfy."""
    rb = base.dtype.itemsize * base.shape[1]
    n = len(base)
    gdir = gen_dir(st, doc["id"])
    assert doc["l1_rows"] * rb <= budgets.device_cache
    assert doc["l2_rows"] * rb <= budgets.host_cache
    blowup = realised_blowup(gdir, n)
    assert blowup == pytest.approx(doc["blowup"], abs=1e-4)
    if budgets.max_blowup is not None:
        assert blowup <= budgets.max_blowup + 1e-9
    if budgets.policy in ("hot-only", "none"):
        assert blowup == 0.0
    stats = serve_all(st, doc["sample_set"], base)
    pred = doc["predictions"]
    assert stats["rows"] == pred["requested_rows"]
    tiers = stats["tiers"]
    assert tiers["l1"]["rows"] == pred["rows_per_tier"]["l1"]
    assert tiers["l2"]["rows"] == pred["rows_per_tier"]["l2"]
    assert tiers["l4"]["rows"] == pred["rows_per_tier"]["l4"]
    assert tiers["l3"]["rows"] + tiers["base"]["rows"] == pred["rows_per_tier"]["l3"]
    assert stats["disk_bytes"] == pred["disk_bytes_per_pass"]
    assert stats["read_amplification"] == pytest.approx(doc["predicted_amplification"], abs=1e-3)
    assert sum(t["hit_rate"] for t in tiers.values()) == pytest.approx(1.0, abs=1e-3)
    # a shuffled epoch that keeps segments together costs the same
    shuffled = serve_all(st, doc["sample_set"], base, epoch_seed=budgets.seed)
    assert shuffled["disk_bytes"] == stats["disk_bytes"]
    if "predicted_amplification_l3_by_page" in pred:  # no segment cache: every batch reads its pages
        by_page = serve_all(st, doc["sample_set"], base, segment_cache_bytes=0)
        assert by_page["read_amplification"] == pytest.approx(pred["predicted_amplification_l3_by_page"], abs=1e-3)


def count_calls(target: Any, name: str) -> tuple[Any, list[int]]:
    calls: list[int] = []
    real = getattr(target, name)

    def wrapper(*a: Any, **kw: Any) -> Any:
        calls.append(1)
        return real(*a, **kw)

    return mock.patch.object(target, name, wrapper), calls


def with_memory_budget(nbytes: int) -> Any:
    """Run the packer's writing phase with ``nbytes`` of working memory (below the public floor)."""
    real = pack_mod._write
    sig = inspect.signature(real)

    def _write(*args: Any, **kwargs: Any) -> Any:
        bound = sig.bind(*args, **kwargs)
        bound.arguments["memory_budget"] = nbytes
        return real(*bound.args, **bound.kwargs)

    return mock.patch.object(pack_mod, "_write", _write)


def smallest_memory_budget(nodes: int, row_bytes: int) -> int:
    """The least --memory-budget pack accepts for this table (found by bisection)."""
    lo, hi = 0, 1 << 34
    while hi - lo > 1:
        mid = (lo + hi) // 2
        try:
            pack_mod.working_budget(mid, nodes, row_bytes)
            hi = mid
        except ConfigError:
            lo = mid
    return hi


def layout_files(gdir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(gdir.iterdir()) if p.name != "pin"}


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def src_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A store with a sample set "tr" (2 epochs), closed; tests copy it."""
    path = tmp_path_factory.mktemp("layout") / "s"
    with make_synth_store(path, nodes=3000, dim=24, seed=2, train_frac=0.3) as s:
        make_sample_set(s, "tr", (4, 4), 64, 2, seed=1)
        make_sample_set(s, "other", (3,), 128, 1, seed=2)
    yield path


@pytest.fixture
def store(src_store: Path, tmp_path: Path) -> Iterator[Store]:
    shutil.copytree(src_store, tmp_path / "s")
    with featdb.open(tmp_path / "s", mode="a") as s:
        yield s


@pytest.fixture
def base(store: Store) -> np.ndarray:
    return store.read_all(FEAT)


# --------------------------------------------------------------------------- pure planner
def _trace_of(batches: list[np.ndarray]) -> Any:
    return lambda ids: (batches[i] for i in ids)


def _random_trace(seed: int, n: int = 500, nb: int = 12) -> tuple[np.ndarray, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    hot = rng.choice(n, 40, replace=False)
    batches = [np.unique(np.concatenate([rng.choice(hot, 15), rng.choice(n, 60)])) for _ in range(nb)]
    for b in batches:
        rng.shuffle(b)
    return np.bincount(np.concatenate(batches), minlength=n).astype(np.int32), batches


@pytest.mark.parametrize(
    ("budgets", "error"),
    [
        (Budgets(policy="fastest"), InvalidInputError),
        (Budgets(host_cache=-1), InvalidInputError),
        (Budgets(device_cache=-4096), InvalidInputError),
        (Budgets(max_blowup=-0.5), ConfigError),
        (Budgets(max_blowup=float("nan")), ConfigError),
        (Budgets(segment_cache=-1), InvalidInputError),
    ],
)
def test_planner_rejects_bad_budgets(budgets: Budgets, error: type) -> None:
    counts, batches = _random_trace(0)
    with pytest.raises(error):
        plan(counts, _trace_of(batches), len(batches), 64, budgets)


def test_hot_sets_take_the_most_read_rows_within_each_budget() -> None:
    counts, _ = _random_trace(1)
    l1, l2 = hot_sets(counts, 64, Budgets(device_cache=64 * 10 + 63, host_cache=64 * 25))
    assert len(l1) == 10 and len(l2) == 25 and not set(l1) & set(l2)
    assert np.all(np.diff(l1) > 0) and np.all(np.diff(l2) > 0)
    cold = np.setdiff1d(np.flatnonzero(counts), np.concatenate([l1, l2]))
    assert counts[l1].min() >= counts[l2].max() >= counts[cold].max()
    for policy in ("pack-only", "none"):
        a, b = hot_sets(counts, 64, Budgets(device_cache=1 << 20, host_cache=1 << 20, policy=policy))
        assert len(a) == len(b) == 0
    everything = hot_sets(counts, 64, Budgets(host_cache=1 << 30))[1]
    np.testing.assert_array_equal(everything, np.flatnonzero(counts))  # never an unread row


def test_plan_is_deterministic_for_a_seed() -> None:
    counts, batches = _random_trace(2)
    b = Budgets(device_cache=64 * 5, host_cache=64 * 17, max_blowup=1.3, seed=7)
    p1 = plan(counts, _trace_of(batches), len(batches), 64, b)
    p2 = plan(counts, _trace_of(batches), len(batches), 64, b)
    np.testing.assert_array_equal(p1.l1_ids, p2.l1_ids)
    np.testing.assert_array_equal(p1.l2_ids, p2.l2_ids)
    assert p1.segment_len == p2.segment_len and p1.predictions == p2.predictions


def test_plan_meets_the_blowup_cap() -> None:
    counts, batches = _random_trace(3, n=300, nb=16)
    tr = _trace_of(batches)
    p0 = plan(counts, tr, len(batches), 32, Budgets())
    assert p0.segment_len == 1 and p0.predictions["rows_per_tier"]["l3"] == 0
    assert p0.predictions["stored_rows"] == sum(len(b) for b in batches)
    for cap in (0.0, 0.5, 1.0, 1.5, 2.0, 3.0):
        p = plan(counts, tr, len(batches), 32, Budgets(max_blowup=cap, segment_cache=2 * 32 * 120))
        assert p.predictions["blowup"] <= cap
        cands = p.predictions["candidates"]
        chosen = [c for c in cands if c["chosen"]]
        assert len(chosen) == 1 and chosen[0]["disk_bytes_per_pass"] == min(c["disk_bytes_per_pass"] for c in cands)
        assert p.predictions["largest_segment_bytes"] <= 32 * 120 or p.segment_len == 1
        if p.blocks is None:
            bounds = p.bounds if p.bounds is not None else uniform_bounds([(0, len(batches))], 1, len(batches))
            assert segment_rows(tr, bounds, p.tier_map(), len(batches))[0] == p.predictions["stored_rows"]
        else:
            assert chosen[0]["kind"] in ("mixed", "blocks", "copies")
    assert plan(counts, tr, len(batches), 32, Budgets(max_blowup=0.0)).predictions["blowup"] == 0.0


def test_tier_map_marks_hot_rows() -> None:
    counts, batches = _random_trace(4)
    p = plan(
        counts,
        _trace_of(batches),
        len(batches),
        64,
        Budgets(device_cache=64 * 3, host_cache=64 * 4),
    )
    tier = p.tier_map()
    assert (tier[p.l1_ids] == L1).all() and (tier[p.l2_ids] == L2).all()
    assert (tier == L4).sum() == len(counts) - 7


# --------------------------------------------------------------------------- the property
ROW_SHAPES = [
    ("float32", 24),
    ("float16", 7),
    ("float32", 1),
    ("float64", 5),
    ("int8", 3),
    ("float32", 16),
    ("uint8", 100),
]
POLICY = st.sampled_from(["full", "pack-only", "blocks", "hot-only", "none"])
CAP = st.sampled_from([None, 0.0, 0.5, 1.0, 1.2, 1.5, 2.0, 3.0, 6.0])


def _tmp_store_dir() -> Path:
    TINY_DIR.mkdir(exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="layout-prop-", dir=TINY_DIR))


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_packed_batches_are_the_base_rows(data: st.DataObject) -> None:
    nodes = data.draw(st.integers(200, 2500), label="nodes")
    dtype, dim = data.draw(st.sampled_from(ROW_SHAPES), label="row")
    rb = np.dtype(dtype).itemsize * dim
    fanouts = data.draw(st.sampled_from([(3,), (2, 4), (-1,), (3, 2, 2)]), label="fanouts")
    root = _tmp_store_dir()
    try:
        with make_synth_store(
            root / "s",
            nodes=nodes,
            dim=2,
            seed=data.draw(st.integers(0, 99)),
            avg_degree=data.draw(st.floats(1.0, 8.0)),
            train_frac=data.draw(st.floats(0.05, 0.6)),
        ) as s:
            rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
            base = rng.integers(0, 256, size=(nodes, rb), dtype=np.uint8).view(dtype)
            s.write_table("node/x/feat", base)
            make_sample_set(
                s,
                "t",
                fanouts,
                data.draw(st.integers(8, 200)),
                data.draw(st.integers(1, 3)),
                seed=data.draw(st.integers(0, 9)),
            )
            table_bytes = nodes * rb
            frac = st.sampled_from([0.0, 0.0, 0.01, 0.1, 0.5, 1.0])
            budgets = Budgets(
                int(data.draw(frac, label="device") * table_bytes),
                int(data.draw(frac, label="host") * table_bytes),
                data.draw(CAP, label="cap"),
                data.draw(POLICY, label="policy"),
                data.draw(st.integers(0, 3)),
            )
            tiny = data.draw(st.sampled_from([None, 8 << 10, 64 << 10, 256 << 10]), label="memory")
            with with_memory_budget(tiny) if tiny else contextlib.nullcontext():
                doc = pack(s, "t", "node/x/feat", budgets, memory_budget=64 << 20)
            check_layout(s, doc, base, budgets)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_a_tiny_memory_budget_packs_in_several_passes_and_the_same_bytes(store: Store, base: np.ndarray) -> None:
    budgets = Budgets(host_cache=200 * 96, max_blowup=3.0)
    big = make_layout(store, "tr", host_cache=200 * 96, max_blowup=3.0)
    counted, passes = count_calls(pack_mod, "_base_pass")
    with with_memory_budget(4 << 10), counted:
        small = make_layout(store, "tr", host_cache=200 * 96, max_blowup=3.0)
    assert len(passes) >= 3, (len(passes), small["segment_len"], small["num_batches"])
    assert small["segment_len"] > 1 and small["l3_rows"] + small["copy_rows"] > 0
    check_layout(store, small, base, budgets)
    assert layout_files(gen_dir(store, small["id"])) == layout_files(gen_dir(store, big["id"]))


@pytest.mark.slow
def test_memory_budget_at_the_floor_with_a_larger_table(tmp_path: Path) -> None:
    """The smallest budget pack accepts, a 10 MiB table: several chunks and several groups."""
    with make_synth_store(tmp_path / "s", nodes=20_000, dim=128, seed=4, train_frac=0.5) as s:
        make_sample_set(s, "t", (10, 10), 256, 2)
        floor = smallest_memory_budget(20_000, 128 * 4)
        with pytest.raises(ConfigError, match="memory"):
            make_layout(s, "t", memory_budget=floor - 1, max_blowup=4.0)
        counted, passes = count_calls(pack_mod, "_base_pass")
        with counted, shared_only():
            doc = make_layout(s, "t", memory_budget=floor, max_blowup=4.0)
        assert len(passes) >= 2
        check_layout(s, doc, s.read_all(FEAT), Budgets(max_blowup=4.0))


@pytest.mark.parametrize(("dtype", "dim"), [("uint8", 4096), ("float32", 1500)])
def test_rows_of_a_page_or_wider_pack_and_serve(tmp_path: Path, dtype: str, dim: int) -> None:
    with make_synth_store(tmp_path / "s", nodes=1200, dim=2, seed=1, train_frac=0.1) as s:
        rng = np.random.default_rng(0)
        rb = np.dtype(dtype).itemsize * dim
        base = rng.integers(0, 256, size=(1200, rb), dtype=np.uint8).view(dtype)
        s.write_table("node/x/feat", base)
        make_sample_set(s, "t", (3,), 32, 2)
        budgets = Budgets(device_cache=10 * rb, host_cache=30 * rb, max_blowup=1.5)
        doc = pack(s, "t", "node/x/feat", budgets, memory_budget=64 << 20)
        check_layout(s, doc, base, budgets)


def test_dry_run_predicts_what_packing_records(store: Store) -> None:
    b = Budgets(device_cache=10 * 96, host_cache=100 * 96, max_blowup=1.5, seed=2)
    plan_doc = pack(store, "tr", FEAT, b, memory_budget=64 << 20, dry_run=True)
    packed = pack(store, "tr", FEAT, b, memory_budget=64 << 20)
    for key in PLAN_KEYS:
        assert plan_doc[key] == packed[key], key
    assert plan_doc["predictions"] == packed["predictions"]


def test_pack_is_deterministic_for_a_seed(store: Store) -> None:
    a = make_layout(store, "tr", device_cache=30 * 96, host_cache=90 * 96, max_blowup=1.5, seed=3)
    b = make_layout(store, "tr", device_cache=30 * 96, host_cache=90 * 96, max_blowup=1.5, seed=3)
    assert a["id"] != b["id"]
    assert layout_files(gen_dir(store, a["id"])) == layout_files(gen_dir(store, b["id"]))
    for key in ("segment_len", "l1_rows", "l2_rows", "l3_rows", "l4_rows", "blowup", "predictions"):
        assert a[key] == b[key]


@pytest.mark.parametrize("policy", ["none", "hot-only"])
def test_prediction_matches_serving_for_rows_wider_than_a_page(tmp_path: Path, policy: str) -> None:
    with make_synth_store(tmp_path / "s", nodes=1500, dim=1500, seed=1, train_frac=0.1) as s:
        make_sample_set(s, "t", (2,), 64, 1)
        budgets = Budgets(host_cache=20 * 6000, policy=policy)
        doc = pack(s, "t", FEAT, budgets, memory_budget=64 << 20)
        check_layout(s, doc, s.read_all(FEAT), budgets)


# --------------------------------------------------------------------------- dry run and errors
def test_dry_run_writes_nothing(store: Store) -> None:
    before_tree, before_cat = tree(store.root), catalog_state(store)
    doc = pack(store, "tr", FEAT, Budgets(host_cache=4096, max_blowup=2.0), dry_run=True)
    assert doc["dry_run"] is True and "id" not in doc
    assert doc["blowup"] <= 2.0 and doc["predicted_amplification"] > 0
    assert tree(store.root) == before_tree and catalog_state(store) == before_cat
    store.close()
    with featdb.open(store.root, mode="r") as ro:  # a dry run needs no write access
        again = pack(ro, "tr", FEAT, Budgets(host_cache=4096, max_blowup=2.0), dry_run=True)
    assert again["predictions"] == doc["predictions"]
    assert tree(store.root) == before_tree


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        (dict(sample_set="nope"), SampleSetNotFoundError),
        (dict(table="node/_/nope"), TableNotFoundError),
        (dict(table="node/y/feat"), SchemaMismatchError),
        (dict(memory_budget=(8 << 20) - 1), ConfigError),
        (dict(budgets=Budgets(max_blowup=-0.5)), ConfigError),
        (dict(budgets=Budgets(policy="fast")), InvalidInputError),
    ],
)
def test_bad_pack_arguments_raise_and_change_nothing(store: Store, kwargs: dict[str, Any], error: type) -> None:
    store.write_table("node/y/feat", np.zeros((10, 3), dtype=np.float32))
    make_layout(store, "tr")
    before_tree, before_cat = tree(store.root), catalog_state(store)
    args = {
        "sample_set": "tr",
        "table": FEAT,
        "budgets": Budgets(),
        "memory_budget": 64 << 20,
    } | kwargs
    with pytest.raises(error):
        pack(
            store,
            args["sample_set"],
            args["table"],
            args["budgets"],
            memory_budget=args["memory_budget"],
        )
    assert tree(store.root) == before_tree and catalog_state(store) == before_cat


# --------------------------------------------------------------------------- crash safety
def test_failed_catalog_switch_keeps_the_old_generation(store: Store, base: np.ndarray) -> None:
    old = make_layout(store, "tr", max_blowup=2.0)
    before_tree, before_cat = tree(store.root), catalog_state(store)
    real_publish = generation.publish

    def publish(st: Store, *a: Any) -> None:
        def failing(fn: Any) -> Any:
            raise CatalogError("simulated: LMDB failed while switching generations")

        with mock.patch.object(st.catalog, "write", failing):
            real_publish(st, *a)

    with mock.patch.object(generation, "publish", publish), pytest.raises(CatalogError):
        make_layout(store, "other", policy="pack-only")
    assert store.catalog.get("layout/current") == old["id"]
    assert tree(store.root) == before_tree and catalog_state(store) == before_cat
    assert sorted(p.name for p in (store.root / "gens").iterdir()) == [old["id"]]
    serve_all(store, "tr", base)


def test_error_after_files_are_written_leaves_no_partial(store: Store, base: np.ndarray) -> None:
    old = make_layout(store, "tr")
    before_tree, before_cat = tree(store.root), catalog_state(store)

    def publish(*a: Any) -> None:
        raise OSError("simulated: disk error before the switch")

    with leaked_files(), mock.patch.object(generation, "publish", publish), pytest.raises(OSError):
        make_layout(store, "other")
    assert tree(store.root) == before_tree and catalog_state(store) == before_cat
    assert store.catalog.get("layout/current") == old["id"]
    serve_all(store, "tr", base)


def test_failed_pack_closes_its_files(store: Store) -> None:
    def boom(*a: Any, **kw: Any) -> None:
        raise OSError("simulated: read error in the base table")

    with (
        leaked_files() as leaks,
        mock.patch.object(pack_mod, "_base_pass", boom),
        pytest.raises(OSError),
    ):
        make_layout(store, "tr", host_cache=1 << 16)
    assert leaks == []


def _crash_child(root: Path, where: str) -> int:
    """Fork a process that packs ``other`` and dies (os._exit) at ``where``; returns its status."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 3
        try:
            with featdb.open(root, mode="a") as st:
                if where == "switch":
                    st.catalog.write = lambda fn: os._exit(0)  # type: ignore[method-assign]
                    make_layout(st, "other", policy="pack-only")
                else:
                    with mock.patch.object(pack_mod, "_write_l3", lambda *a: os._exit(0)):
                        make_layout(st, "other", max_blowup=1.5)
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@pytest.mark.parametrize("where", ["switch", "writing"])
def test_a_crash_while_packing_leaves_the_old_generation_and_gc_cleans_up(
    store: Store, base: np.ndarray, where: str
) -> None:
    old = make_layout(store, "tr", host_cache=50 * 96)
    before_cat = catalog_state(store)
    root = store.root
    store.close()
    assert _crash_child(root, where) == 0
    with featdb.open(root, mode="a") as st:
        assert catalog_state(st) == before_cat
        left = sorted(p.name for p in (root / "gens").iterdir())
        assert len(left) == 2 and old["id"] in left  # the crashed generation's files remain
        assert (where == "writing") == any(n.endswith(".partial") for n in left)
        serve_all(st, "tr", base)
        res = generation.collect(st)
        assert len(res["removed"]) == 1 and res["pinned"] == []
        assert sorted(p.name for p in (root / "gens").iterdir()) == [old["id"]]
        assert st.verify() == []
        serve_all(st, "tr", base)


# --------------------------------------------------------------------------- pins and gc
def test_gc_keeps_a_pinned_generation_until_its_reader_closes(store: Store, base: np.ndarray) -> None:
    a = make_layout(store, "tr", host_cache=100 * 96)
    reader = open_reader(store, sample_set="tr")
    b = make_layout(store, "tr", max_blowup=1.5)
    assert store.catalog.get("layout/current") == b["id"]
    res = generation.collect(store)
    assert res == {"removed": [], "pinned": [a["id"]]}
    assert gen_dir(store, a["id"]).is_dir()
    with SampleSet(store, "tr") as ss:  # the pinned generation still serves correctly
        for bid in (0, reader.num_batches - 1):
            with reader.read_batch(bid) as br:
                assert_rows_equal(br.rows, base[ss.input_ids(bid)[br.order]])
    assert reader.generation == a["id"]
    reader.close()
    res = generation.collect(store)
    assert res == {"removed": [a["id"]], "pinned": []}
    assert not gen_dir(store, a["id"]).exists()
    assert store.catalog.get(f"generation/{a['id']}") is None
    assert not any(k.startswith(f"gens/{a['id']}/") for k in store.files())
    assert generation.collect(store) == {"removed": [], "pinned": []}  # the current one stays
    serve_all(store, "tr", base)
    assert store.verify() == []


def test_no_layout_means_layout_not_found(store: Store) -> None:
    with pytest.raises(LayoutNotFoundError):
        open_reader(store)


def test_gc_during_a_pack_leaves_the_pack_alone(store: Store, base: np.ndarray) -> None:
    real = pack_mod._write

    def _write(st: Store, *a: Any) -> Any:
        generation.collect(st)  # another process runs `featdb gc` while this pack writes
        return real(st, *a)

    with leaked_files(), mock.patch.object(pack_mod, "_write", _write):
        doc = make_layout(store, "tr")
    check_layout(store, doc, base, Budgets())


# --------------------------------------------------------------------------- verify
def test_verify_catches_a_flipped_byte_in_an_l4_extent(store: Store) -> None:
    doc = make_layout(store, "tr", host_cache=100 * 96)
    gdir = gen_dir(store, doc["id"])
    batches = np.fromfile(gdir / "batches.i64", dtype="<i8").reshape(-1, 8)
    b = int(np.flatnonzero(batches[:, 0] > 3)[1])
    assert store.verify() == []
    flip_byte(gdir / "l4.dat", int(batches[b, 4]) + 96 * 2 + 5)
    problems = store.verify()
    assert len(problems) == 1
    assert f"gens/{doc['id']}/l4.dat" in problems[0] and f"extent {b}" in problems[0]


def test_verify_catches_a_flipped_byte_in_the_l3_file(store: Store) -> None:
    with shared_only():
        doc = make_layout(store, "tr", max_blowup=3.0)
    gdir = gen_dir(store, doc["id"])
    segs = np.fromfile(gdir / "segments.i64", dtype="<i8").reshape(-1, SEG_COLS)
    s = int(np.flatnonzero(segs[:, 3] > 0)[0])
    flip_byte(gdir / "l3.dat", int(segs[s, 2]) + int(segs[s, 3]) * 96 - 1)  # the extent's last row byte
    problems = store.verify()
    assert len(problems) == 1
    assert f"gens/{doc['id']}/l3.dat" in problems[0] and f"extent {s}" in problems[0]


@pytest.mark.parametrize("name", ["map.bin", "batches.i64", "host.tbl"])
def test_verify_catches_a_flipped_byte_in_the_layout_metadata(store: Store, name: str) -> None:
    doc = make_layout(store, "tr", host_cache=100 * 96, max_blowup=1.5)
    flip_byte(gen_dir(store, doc["id"]) / name, 7)
    problems = store.verify()
    assert any(f"gens/{doc['id']}/{name}" in p for p in problems)


def test_copies_hold_each_row_once_per_group_and_verify_catches_a_flipped_byte(store: Store, base: np.ndarray) -> None:
    budgets = Budgets(host_cache=200 * 96, max_blowup=4.0, segment_cache=1 << 20)
    doc = pack(store, "tr", FEAT, budgets)
    assert doc["copies"] > 0 and doc["copy_rows"] > 0 and doc["blocks_segments"] == doc["segments"]
    kinds = {c["kind"]: c for c in doc["predictions"]["candidates"]}
    assert kinds["copies"]["chosen"] and kinds["copies"]["disk_bytes_per_pass"] < kinds["mixed"]["disk_bytes_per_pass"]
    check_layout(store, doc, base, budgets)
    gdir = gen_dir(store, doc["id"])
    copies = np.fromfile(gdir / "copies.i64", dtype="<i8").reshape(-1, 3)
    assert int(copies[:, 1].sum()) == doc["copy_rows"]
    flip_byte(gdir / "copies.dat", int(copies[0, 0]) + 5)
    problems = store.verify()
    assert len(problems) == 1 and f"gens/{doc['id']}/copies.dat" in problems[0] and "extent 0" in problems[0]

"""Serving: one conformance suite that every tier configuration subclasses, plus the reader's edges.

``ReaderConformance`` checks a reader against a plain numpy model (the base
table indexed by the batch's input ids). Each ``Test*`` subclass packs its own
layout (policy, caches, blowup cap, row type) and opens the reader its way.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import shutil
import threading
import time
import traceback
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from helpers import FEAT, assert_rows_equal, make_layout, make_sample_set, make_synth_store, only_candidates

import featdb
from featdb.errors import (
    ConfigError,
    IdsOutOfRangeError,
    InvalidIdsError,
    InvalidInputError,
    ResourceExhaustedError,
)
from featdb.io import aligned_buffer
from featdb.layout import generation
from featdb.layout.pack import pack
from featdb.layout.plan import Budgets
from featdb.rowcopy import gather_rows
from featdb.sampling.sampleset import SampleSet
from featdb.serve.reader import BatchRows, LayoutReader, open_reader
from featdb.store import Store

pytest.importorskip("dgl")  # building the sample sets needs DGL

HALF = "node/h/feat"  # float16 x 7: 14-byte rows that do not divide a page
DIM, RB = 8, 32


@pytest.fixture(scope="module")
def src_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("serve") / "s"
    with make_synth_store(path, nodes=3000, dim=DIM, seed=5, train_frac=0.3) as s:
        rng = np.random.default_rng(3)
        s.write_table(HALF, rng.integers(0, 2**16, size=(3000, 7), dtype=np.uint16).view(np.float16))
        make_sample_set(s, "tr", (4, 4), 64, 2, seed=2)
        make_sample_set(s, "other", (3,), 256, 1)
    yield path


def copy_store(src: Path, dst: Path) -> Store:
    shutil.copytree(src, dst)
    return featdb.open(dst, mode="a")


@dataclass
class Env:
    store: Store
    reader: LayoutReader
    ss: SampleSet
    base: np.ndarray


# --------------------------------------------------------------------------- the conformance suite
class ReaderConformance:
    """Every reader configuration must pass these."""

    table: ClassVar[str] = FEAT
    budgets: ClassVar[Budgets] = Budgets()
    open_kw: ClassVar[dict[str, Any]] = {}
    candidates: ClassVar[tuple[str, ...] | None] = None  # plan among these only under the cap

    @pytest.fixture(scope="class")
    @classmethod
    def env(cls, src_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
        st = copy_store(src_store, tmp_path_factory.mktemp(cls.__name__) / "s")
        with only_candidates(*cls.candidates) if cls.candidates else contextlib.nullcontext():
            pack(st, "tr", cls.table, cls.budgets, memory_budget=64 << 20)
        reader = open_reader(st, sample_set="tr", **cls.open_kw)
        ss = SampleSet(st, "tr")
        reader.attach(ss)
        yield Env(st, reader, ss, st.read_all(cls.table))
        reader.close()
        ss.close()
        st.close()

    # -- batches --------------------------------------------------------------------------
    def test_read_batch_matches_the_numpy_model(self, env: Env) -> None:
        r, ss, base = env.reader, env.ss, env.base
        assert r.num_batches == ss.num_batches
        for b in range(r.num_batches):
            ids = ss.input_ids(b)
            with r.read_batch(b) as br:
                assert isinstance(br, BatchRows) and br.batch_id == b
                assert br.device_rows is None  # no GPU here: L1 rows are in ``rows``
                np.testing.assert_array_equal(np.sort(br.order), np.arange(len(ids)))
                np.testing.assert_array_equal(br.input_ids, ids[br.order])
                assert_rows_equal(br.rows, base[br.input_ids])
                mfg = r.batch(b, br.order)
                np.testing.assert_array_equal(mfg.input_ids, br.input_ids)
                np.testing.assert_array_equal(mfg.seeds, ss.batch(b).seeds)

    def test_epoch_order_keeps_segments_together(self, env: Env) -> None:
        r = env.reader
        ids = list(range(r.num_batches))
        order = r.epoch_order(ids, np.random.default_rng(4))
        assert sorted(order) == ids
        assert order == r.epoch_order(ids, np.random.default_rng(4))
        segs = r.batches[order, 7]
        assert len(np.unique(segs)) == 1 + int(np.count_nonzero(segs[1:] != segs[:-1]))
        some = ids[::3]
        assert sorted(r.epoch_order(some, np.random.default_rng(5))) == some

    def test_batch_out_of_range(self, env: Env) -> None:
        for b in (-1, env.reader.num_batches):
            with pytest.raises(IndexError):
                env.reader.read_batch(b)

    def test_async_and_prefetch_equal_sync(self, env: Env) -> None:
        r = env.reader
        picks = [0, r.num_batches // 2, r.num_batches - 1]
        want = []
        for b in picks:
            with r.read_batch(b) as br:
                want.append((br.order.copy(), br.rows.copy()))
        futures = r.prefetch(range(r.num_batches))  # more than the pool holds: released as consumed
        for b, fut in enumerate(futures):
            with fut.result(timeout=120) as br:
                assert br.batch_id == b
                assert_rows_equal(br.rows, env.base[env.ss.input_ids(b)[br.order]])
                if b in picks:
                    np.testing.assert_array_equal(br.order, want[picks.index(b)][0])
                    assert_rows_equal(br.rows, want[picks.index(b)][1])
        with r.read_batch_async(picks[-1]).result(timeout=120) as br:
            assert_rows_equal(br.rows, want[-1][1])

    def test_buffers_are_released_and_reused(self, env: Env) -> None:
        r = env.reader
        pool = r.pool
        assert pool.available == pool.count
        held = [r.read_batch(b % r.num_batches) for b in range(pool.count)]
        assert pool.available == 0
        for br in held:
            br.release()
            br.release()  # a second release is a no-op, not a second buffer
        assert pool.available == pool.count
        for b in range(2 * pool.count):  # more reads than buffers: each comes back
            with r.read_batch(b % r.num_batches) as br:
                assert_rows_equal(br.rows, env.base[env.ss.input_ids(br.batch_id)[br.order]])
        assert pool.available == pool.count

    def test_concurrent_read_batch_from_threads(self, env: Env) -> None:
        r, ss, base = env.reader, env.ss, env.base
        errors: list[str] = []

        def work(b: int) -> None:
            with r.read_batch(b) as br:
                if not np.array_equal(br.rows.view(np.uint8), base[ss.input_ids(b)[br.order]].view(np.uint8)):
                    errors.append(f"batch {b}")

        with ThreadPoolExecutor(4) as ex:
            list(ex.map(work, range(r.num_batches)))
        assert errors == []
        assert r.pool.available == r.pool.count

    # -- arbitrary ids ---------------------------------------------------------------------
    def test_read_ids_matches_the_numpy_model(self, env: Env) -> None:
        r, base = env.reader, env.base
        rng = np.random.default_rng(0)
        n = len(base)
        hot = np.concatenate([r.l1_ids, r.l2_ids])
        for ids in (
            rng.integers(0, n, 500),
            np.repeat(rng.integers(0, n, 20), 5),
            np.array([n - 1, 0, n - 1]),
            np.concatenate([hot[:50], rng.integers(0, n, 50), hot[:50]]) if len(hot) else np.arange(9),
            np.arange(n),
        ):
            assert_rows_equal(r.read(ids), base[ids])
        assert_rows_equal(r.read([5, 5, 1]), base[[5, 5, 1]])
        empty = r.read(np.zeros(0, dtype=np.int64))
        assert empty.shape == (0, base.shape[1]) and empty.dtype == base.dtype
        assert r.read([]).shape == (0, base.shape[1])

    @pytest.mark.parametrize(
        ("ids", "error"),
        [
            (np.array([0, 3000]), IdsOutOfRangeError),
            (np.array([-1]), IdsOutOfRangeError),
            (np.array([[1, 2]]), InvalidIdsError),
            (np.array([1.0, 2.0]), InvalidIdsError),
            ("12", InvalidIdsError),
        ],
    )
    def test_read_bad_ids(self, env: Env, ids: Any, error: type) -> None:
        with pytest.raises(error):
            env.reader.read(ids)
        with pytest.raises((IndexError, TypeError, ValueError)):  # the builtins callers catch
            env.reader.read(ids)

    # -- statistics ------------------------------------------------------------------------
    def test_stats_add_up(self, env: Env) -> None:
        with open_reader(env.store, **self.open_kw) as fresh:  # nothing cached yet
            for b in range(fresh.num_batches):
                fresh.read_batch(b).release()
            s = fresh.stats.as_dict()
            parsed = json.loads(fresh.stats.to_json())
        r = env.reader
        assert s["batches"] == r.num_batches
        assert s["rows"] == int(env.ss.num_inputs().sum())
        assert sum(t["rows"] for t in s["tiers"].values()) == s["rows"]
        assert sum(t["hit_rate"] for t in s["tiers"].values()) == pytest.approx(1.0, abs=1e-3)
        assert s["disk_bytes"] == sum(t["bytes_read"] for t in s["tiers"].values())
        for name in ("l1", "l2", "cache"):
            assert s["tiers"][name]["bytes_read"] == 0
        assert s["read_amplification"] == pytest.approx(r.doc["predicted_amplification"], abs=1e-3)
        assert parsed["rows"] == s["rows"] and set(parsed["tiers"]) >= {
            "l1",
            "l2",
            "l3",
            "l4",
            "base",
        }
        r.stats.reset()
        ids = np.random.default_rng(1).integers(0, len(env.base), 700)
        r.read(ids)
        r.read(ids[:300])
        s = r.stats.as_dict()
        assert s["rows"] == 1000 and s["batches"] == 0
        assert sum(t["hit_rate"] for t in s["tiers"].values()) == pytest.approx(1.0, abs=1e-3)
        json.loads(r.stats.to_json())


class TestFullWithL3Cap(ReaderConformance):
    budgets = Budgets(device_cache=40 * RB, host_cache=150 * RB, max_blowup=3.0, policy="full")
    candidates = ("shared",)

    def test_layout_uses_every_tier(self, env: Env) -> None:
        d = env.reader.doc
        assert d["segment_len"] > 1 and min(d["l1_rows"], d["l2_rows"], d["l3_rows"], d["l4_rows"]) > 0


class TestMixedPackedAndBlocks(ReaderConformance):
    budgets = Budgets(host_cache=150 * RB, max_blowup=0.5, policy="full", segment_cache=64 * RB * 8)
    candidates = ("mixed",)

    def test_some_batches_packed_the_rest_read_as_blocks(self, env: Env) -> None:
        d = env.reader.doc
        assert 0 < d["blocks_segments"] < d["segments"] and d["l4_rows"] > 0 and d["blowup"] <= 0.5
        r = env.reader
        for seg in range(len(r.segs)):  # a segment over the limit is a single batch
            assert r.seg_reader.nbytes(seg) <= 64 * RB * 4 or r.segs[seg, 1] == 1


class TestCopies(ReaderConformance):
    budgets = Budgets(host_cache=150 * RB, max_blowup=4.0, policy="full", segment_cache=1 << 20)

    def test_segments_read_from_copies(self, env: Env) -> None:
        d = env.reader.doc
        assert d["copies"] > 0 and d["blocks_segments"] == d["segments"] and d["blowup"] <= 4.0
        assert (env.reader.segs[:, 7] >= 0).any()


class TestBlocks(ReaderConformance):
    budgets = Budgets(host_cache=150 * RB, policy="blocks", segment_cache=64 * RB * 64)

    def test_nothing_stored_every_segment_blocks(self, env: Env) -> None:
        d = env.reader.doc
        assert d["blowup"] == 0.0 and d["blocks_segments"] == d["segments"] > 1
        assert d["l3_rows"] == d["l4_rows"] == 0

    def test_the_next_segment_is_read_ahead(self, env: Env) -> None:
        r = env.reader
        r.stats.reset()
        for b in r.epoch_order(range(r.num_batches), np.random.default_rng(0)):
            r.read_batch(b).release()
        seg = r.stats.as_dict()["caches"]["segments"]
        assert seg["prefetched"] > 0 and seg["too_large"] == 0


class TestFullFloat16Rows(ReaderConformance):
    table = HALF
    budgets = Budgets(device_cache=0, host_cache=300 * 14, max_blowup=2.0, policy="full")


class TestPackOnly(ReaderConformance):
    budgets = Budgets(host_cache=1 << 20, policy="pack-only")

    def test_no_hot_rows(self, env: Env) -> None:
        assert len(env.reader.l1_ids) == len(env.reader.l2_ids) == 0


class TestHotOnly(ReaderConformance):
    budgets = Budgets(device_cache=20 * RB, host_cache=200 * RB, max_blowup=1.5, policy="hot-only")


class TestNoLayout(ReaderConformance):
    budgets = Budgets(host_cache=1 << 20, policy="none")
    open_kw = {"queue_depth": 2, "threads": 2}


class TestDynamicLRU(ReaderConformance):
    budgets = Budgets(host_cache=100 * RB, policy="hot-only")
    open_kw = {"cache_bytes": 200 * RB, "cache_policy": "lru"}

    def test_the_cache_serves_repeated_reads(self, env: Env) -> None:
        with open_reader(env.store, **self.open_kw) as r:  # a cold cache
            cold = np.setdiff1d(np.arange(1000, 1150), np.concatenate([r.l1_ids, r.l2_ids]))[:100]
            assert_rows_equal(r.read(cold), env.base[cold])
            assert r.cache.as_dict() | {"bytes": 0} == {
                "hits": 0,
                "misses": 100,
                "evictions": 0,
                "rows": 100,
                "bytes": 0,
            }
            r.stats.reset()
            assert_rows_equal(r.read(cold[::-1]), env.base[cold[::-1]])
            assert r.cache.as_dict()["hits"] == len(cold)
            s = r.stats.as_dict()["tiers"]
            assert s["cache"]["rows"] == len(cold) and s["base"]["rows"] == 0
            many = np.arange(3000)  # more rows than the cache holds: it evicts, rows stay right
            assert_rows_equal(r.read(many), env.base)
            info = r.cache.as_dict()
            assert info["rows"] <= 200 and info["bytes"] <= 200 * RB and info["evictions"] > 0


class TestDynamicLFU(TestDynamicLRU):
    open_kw = {"cache_bytes": 200 * RB, "cache_policy": "lfu", "queue_depth": 1}


# --------------------------------------------------------------------------- opening
@pytest.fixture
def store(src_store: Path, tmp_path: Path) -> Iterator[Store]:
    with copy_store(src_store, tmp_path / "s") as st:
        yield st


def test_open_refuses_another_sample_sets_layout(store: Store) -> None:
    make_layout(store, "tr")
    with pytest.raises(ConfigError, match="other"):
        open_reader(store, sample_set="other")
    with open_reader(store) as r, SampleSet(store, "other") as other:
        with pytest.raises(ConfigError):
            r.attach(other)
        with pytest.raises(ConfigError, match="attach"):
            r.batch(0, np.arange(3))


@pytest.mark.parametrize("tier", ["host", "device"])
def test_open_refuses_a_budget_smaller_than_the_layouts_tier(store: Store, tier: str) -> None:
    doc = make_layout(store, "tr", device_cache=30 * RB, host_cache=70 * RB)
    need = doc["l1_rows" if tier == "device" else "l2_rows"] * RB
    assert need > 0
    with pytest.raises(ConfigError, match=tier):
        open_reader(store, **{f"{tier}_cache": need - 1})
    with open_reader(store, **{f"{tier}_cache": need}) as r:
        r.read_batch(0).release()
    assert generation.collect(store)["pinned"] == []  # the failed opens left no pin behind


@pytest.mark.parametrize("device", ["tpu", "cuda:0"])
def test_open_refuses_an_unusable_device(store: Store, device: str) -> None:
    torch = pytest.importorskip("torch")
    if device.startswith("cuda") and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    make_layout(store, "tr")
    with pytest.raises(ConfigError):
        open_reader(store, device=device)


def test_open_refuses_a_layout_whose_table_was_replaced(store: Store) -> None:
    make_layout(store, "tr")
    store.write_table(FEAT, np.ones((3000, DIM), dtype=np.float32), replace=True)
    with pytest.raises(ConfigError, match="repack"):
        open_reader(store)


def _open_fds() -> int:
    gc.collect()
    return len(os.listdir("/proc/self/fd"))


def test_a_failed_open_closes_what_it_opened(store: Store) -> None:
    make_layout(store, "tr")
    before = _open_fds()
    for _ in range(3):
        with pytest.raises(InvalidInputError, match="cache policy"):
            open_reader(store, cache_bytes=1 << 20, cache_policy="fifo")
    assert _open_fds() == before


def test_a_failed_open_releases_its_pin(store: Store) -> None:
    a = make_layout(store, "tr")
    with pytest.raises(InvalidInputError):
        open_reader(store, cache_bytes=1 << 20, cache_policy="fifo")
    make_layout(store, "other")
    assert generation.collect(store) == {"removed": [a["id"]], "pinned": []}


# --------------------------------------------------------------------------- buffer pool
def test_an_exhausted_buffer_pool_raises_instead_of_hanging(store: Store) -> None:
    make_layout(store, "tr")
    with open_reader(store, queue_depth=1, buffer_timeout=0.2) as r:
        held = [r.read_batch(b) for b in range(r.pool.count)]
        t = time.monotonic()
        with pytest.raises(ResourceExhaustedError, match="release"):
            r.read_batch(0)
        assert time.monotonic() - t < 5
        with pytest.raises(ResourceExhaustedError):
            r.read_batch_async(1).result(timeout=10)
        held[0].release()
        with r.read_batch(0) as br:  # a released buffer is usable again
            assert br.rows.shape[0] > 0
        for h in held[1:]:
            h.release()
        assert r.pool.available == r.pool.count


# --------------------------------------------------------------------------- processes
def _child_reads(root: Path, out: Path, rounds: int) -> None:  # pragma: no cover - runs in a child
    code = 1
    try:
        with (
            featdb.open(root) as st,
            open_reader(st, sample_set="tr") as r,
            SampleSet(st, "tr") as ss,
        ):
            base = st.read_all(FEAT)
            for _ in range(rounds):
                for b in range(r.num_batches):
                    with r.read_batch(b) as br:
                        if not np.array_equal(br.rows, base[ss.input_ids(b)[br.order]]):
                            raise AssertionError(f"batch {b} differs in pid {os.getpid()}")
                ids = np.random.default_rng(os.getpid()).integers(0, len(base), 400)
                if not np.array_equal(r.read(ids), base[ids]):
                    raise AssertionError("read(ids) differs")
        code = 0
    except BaseException:
        out.write_text(traceback.format_exc())
    finally:
        os._exit(code)


def _fork_readers(root: Path, logs: Path, n: int = 2) -> list[int]:
    pids = []
    for i in range(n):
        pid = os.fork()
        if pid == 0:  # pragma: no cover
            _child_reads(root, logs / f"child{i}.txt", 1)
        pids.append(pid)
    return pids


def _wait(pids: list[int], logs: Path) -> None:
    codes = [os.waitstatus_to_exitcode(os.waitpid(p, 0)[1]) for p in pids]
    assert codes == [0] * len(pids), [p.read_text() for p in sorted(logs.glob("child*.txt"))]


def test_two_processes_read_the_same_store(store: Store, tmp_path: Path) -> None:
    """Children open the store after fork (DESIGN 7) while the parent reads it too."""
    make_layout(store, "tr", device_cache=20 * RB, host_cache=100 * RB, max_blowup=1.5)
    base = store.read_all(FEAT)
    root = store.root
    store.close()  # the parent holds no LMDB handle at the fork (see the xfail below)
    pids = _fork_readers(root, tmp_path)
    with featdb.open(root) as st, open_reader(st, sample_set="tr") as r, SampleSet(st, "tr") as ss:
        for b in range(r.num_batches):  # the parent reads while the children do
            with r.read_batch(b) as br:
                assert_rows_equal(br.rows, base[ss.input_ids(b)[br.order]])
        _wait(pids, tmp_path)
    with featdb.open(root, mode="a") as st:
        assert generation.collect(st)["pinned"] == []  # the children's pins died with them


def test_a_forked_child_reuses_the_parents_store_object(store: Store, tmp_path: Path) -> None:
    make_layout(store, "tr", host_cache=100 * RB)
    base = store.read_all(FEAT)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child: the inherited Store reopens its catalog
        code = 1
        try:
            with open_reader(store, sample_set="tr") as r, SampleSet(store, "tr") as ss:
                for b in range(r.num_batches):
                    with r.read_batch(b) as br:
                        assert np.array_equal(br.rows, base[ss.input_ids(b)[br.order]])
            code = 0
        except BaseException:
            (tmp_path / "child0.txt").write_text(traceback.format_exc())
        finally:
            os._exit(code)
    _wait([pid], tmp_path)
    with open_reader(store) as r:  # the parent's handle still works
        r.read_batch(0).release()


def test_forked_children_open_a_store_the_parent_holds_open(store: Store, tmp_path: Path) -> None:
    make_layout(store, "tr", host_cache=100 * RB)
    with open_reader(store, sample_set="tr") as r:
        r.read_batch(0).release()  # the parent has its reader, threads and LMDB handle open
        pids = _fork_readers(store.root, tmp_path)
        _wait(pids, tmp_path)


# --------------------------------------------------------------------------- known bugs
@pytest.mark.parametrize("row_bytes", [256, 14, 4096, 6000])
def test_gathering_rows_allocates_only_the_rows(row_bytes: int) -> None:
    """Regression: gather_rows once copied its whole (len(buf) x row_bytes) strided view."""
    import tracemalloc

    buf = aligned_buffer(1 << 20)
    np.frombuffer(buf, dtype=np.uint8)[:] = np.random.default_rng(0).integers(0, 256, 1 << 20, dtype=np.uint8)
    pos = np.array([0, 4096, 5000, 7, (1 << 20) - row_bytes, 4096])
    out = np.empty((len(pos), row_bytes), dtype=np.uint8)
    tracemalloc.start()
    try:
        gather_rows(buf, pos, row_bytes, out)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    u = np.frombuffer(buf, dtype=np.uint8)
    np.testing.assert_array_equal(out, np.stack([u[p : p + row_bytes] for p in pos]))
    assert peak < 8 * out.nbytes + (64 << 10), f"gathering {out.nbytes} B of rows allocated {peak} B"


def test_duplicate_ids_do_not_count_as_evictions(store: Store) -> None:
    make_layout(store, "tr", policy="none")
    with open_reader(store, cache_bytes=RB, cache_policy="lru") as r:
        assert_rows_equal(r.read([7, 7]), store.read_all(FEAT)[[7, 7]])
        assert r.cache.as_dict()["rows"] == 1
        assert r.cache.as_dict()["evictions"] == 0


def test_a_store_can_be_opened_twice_in_one_process(store: Store) -> None:
    make_layout(store, "tr")
    with featdb.open(store.root, mode="r") as ro, open_reader(ro, sample_set="tr") as r:
        r.read_batch(0).release()


def test_reader_threads_end_on_close(store: Store) -> None:
    make_layout(store, "tr")
    before = threading.active_count()
    with open_reader(store) as r:
        for f in r.prefetch(range(r.num_batches)):
            f.result(timeout=120).release()
        r.read(np.arange(100))
    gc.collect()
    assert threading.active_count() <= before


def test_buffer_pool_hands_out_buffers_in_ticket_order() -> None:
    """A later request must not take the buffer an earlier one waits for (that deadlocked prefetch)."""
    from featdb.serve.pool import BufferPool

    pool = BufferPool(1, 4096, timeout=10)
    t0, t1, t2 = pool.ticket(), pool.ticket(), pool.ticket()
    first = pool.acquire(t0)
    got: list[int] = []

    def take(t: int) -> None:
        buf = pool.acquire(t)
        got.append(t)
        pool.release(buf)

    late = threading.Thread(target=take, args=(t2,))
    late.start()
    time.sleep(0.2)  # t2 is waiting first, but t1 comes before it
    early = threading.Thread(target=take, args=(t1,))
    early.start()
    time.sleep(0.2)
    pool.release(first)
    early.join(5)
    late.join(5)
    assert got == [t1, t2]


def test_buffer_pool_skips_abandoned_tickets() -> None:
    from featdb.serve.pool import BufferPool

    pool = BufferPool(1, 4096, timeout=2)
    t0, t1 = pool.ticket(), pool.ticket()
    pool.skip(t0)  # e.g. a cancelled future
    pool.release(pool.acquire(t1))
    assert pool.available == 1


def test_segment_cache_counts_hits_misses_evictions_and_extents_too_large() -> None:
    from featdb.serve.segments import Held, SegmentCache

    loads: list[int] = []

    def load(seg: int, alloc: object) -> Held:
        loads.append(seg)
        return Held(np.full(100, seg, dtype=np.uint8), 1, 100)

    cache = SegmentCache(250)

    def get(seg: int, nbytes: int = 100) -> Held | None:
        with cache.use(seg, nbytes, load) as held:
            return held

    get(1)
    get(1)  # read once, then a hit
    get(2)
    get(3)  # 300 bytes > 250: the oldest (1) goes before 3 is read
    extent = get(1)
    assert extent is not None and int(extent.buf[0]) == 1 and loads == [1, 2, 3, 1]
    assert get(9, 300) is None  # larger than the cache: its batches read pages
    d = cache.as_dict()
    assert d["hits"] == 1 and d["misses"] == 4 and d["evictions"] == 2 and d["too_large"] == 1
    assert d["bytes"] <= 250


def test_segment_cache_reads_ahead_without_evicting_the_segment_being_served() -> None:
    from concurrent.futures import ThreadPoolExecutor

    from featdb.serve.segments import Held, SegmentCache

    gate = threading.Event()

    def load(seg: int, alloc: object) -> Held:
        if seg == 2:
            gate.wait(5)
        return Held(np.full(100, seg, dtype=np.uint8), 1, 100)

    cache = SegmentCache(200)

    def get(seg: int) -> Held | None:
        with cache.use(seg, 100, load) as held:
            return held

    with ThreadPoolExecutor(1) as pool:
        get(0)
        get(1)
        assert cache.prefetch(2, 100, load, pool, keep=1)  # evicts 0, never 1
        assert not cache.prefetch(2, 100, load, pool, keep=1)  # already on its way
        assert not cache.prefetch(3, 150, load, pool, keep=1)  # would not fit beside 1
        gate.set()
        got = get(2)  # waits for the read ahead rather than reading again
        assert got is not None and int(got.buf[0]) == 2
        assert get(1) is not None
    d = cache.as_dict()
    assert d["prefetched"] == 1 and d["misses"] == 2 and d["hits"] + d["waited_for_prefetch"] == 2
    assert d["bytes"] <= 250


def test_a_read_ahead_larger_than_planned_never_pushes_out_the_segment_being_served() -> None:
    """With room for exactly two segments, a segment read ahead whose buffer came out larger than
    planned evicted the one being served on insertion; that one was read again for its next batch, and
    the next read ahead evicted it again (the 2 M-node float16 layout read each of them ~10 times)."""
    from concurrent.futures import ThreadPoolExecutor

    from featdb.serve.segments import Held, SegmentCache

    loads: list[int] = []

    def load(seg: int, alloc: Any) -> Held:
        loads.append(seg)
        return Held(alloc(4096 if seg != 2 else 2 * 4096), 1, 4096)  # 2 needs more than it said

    cache = SegmentCache(2 * 4096)
    with ThreadPoolExecutor(1) as pool:
        with cache.use(1, 4096, load):
            pass
        for _ in range(3):  # each batch of 1 tries to read 2 ahead
            with cache.use(1, 4096, load) as one:
                assert one is not None
            cache.prefetch(2, 4096, load, pool, keep=1)
            pool.submit(lambda: None).result()  # the read ahead is done
        with cache.use(2, 4096, load) as two:
            assert two is not None
    assert loads == [1, 2, 2]  # 1 read once; 2 read ahead once (not kept), then when asked for


def test_a_freed_buffer_is_reused_at_the_size_the_next_segment_needs() -> None:
    """A freed buffer a little larger than the next segment is shrunk to its size when reused, so the
    cache counts (and holds) exactly what the segment needs and the one after still fits beside it."""
    from featdb.serve.segments import Held, SegmentCache

    def load(seg: int, alloc: Any) -> Held:
        buf = alloc(4096 * (5 if seg == 1 else 4))
        np.frombuffer(buf, dtype=np.uint8)[:] = seg
        return Held(buf, 1, 4096)

    cache = SegmentCache(8 * 4096)
    with cache.use(1, 5 * 4096, load):  # a larger segment; 2 does not fit beside it: 1 leaves, buffer freed
        pass
    with cache.use(2, 4 * 4096, load) as two:
        assert two is not None and two.nbytes == len(two.buf) == 4 * 4096 and (two.buf[:] == b"\x02" * 4 * 4096)
    assert cache.as_dict()["buffers_reused"] == 1 and cache.as_dict()["evictions"] == 1
    with cache.use(3, 4 * 4096, load) as three:  # beside 2: exactly the capacity, nothing else leaves
        assert three is not None and cache.as_dict()["evictions"] == 1


def test_a_freed_buffer_a_little_smaller_than_the_next_segment_grows_to_its_size() -> None:
    """Segments of one layout differ by a few MiB: a freed buffer slightly too small is grown in place
    (its pages kept) rather than let go for a new map, whose every page would fault in again."""
    from featdb.serve.segments import Held, SegmentCache

    def load(seg: int, alloc: Any) -> Held:
        buf = alloc(4096 * (4 if seg == 1 else 5))
        np.frombuffer(buf, dtype=np.uint8)[:] = seg
        return Held(buf, 1, 4096)

    cache = SegmentCache(8 * 4096)
    with cache.use(1, 4 * 4096, load):
        pass
    with cache.use(2, 5 * 4096, load) as two:  # 1 leaves (both do not fit); its buffer grows to 2's size
        assert two is not None and two.nbytes == len(two.buf) == 5 * 4096 and (two.buf[:] == b"\x02" * 5 * 4096)
    assert cache.as_dict()["buffers_reused"] == 1 and cache.as_dict()["evictions"] == 1


@pytest.mark.parametrize("rb", [512, 96, 4])
@pytest.mark.parametrize("dense", [True, False])
def test_segment_gather_copies_back_to_back_rows_as_blocks_and_the_same_bytes(rb: int, dense: bool) -> None:
    import mmap

    from featdb.rowcopy import gather_rows
    from featdb.serve.segread import _gather

    rng = np.random.default_rng(rb)
    buf = mmap.mmap(-1, 1 << 18)
    np.frombuffer(buf, dtype=np.uint8)[:] = rng.integers(0, 256, 1 << 18, dtype=np.uint8)
    slots = ((1 << 18) - rb) // rb
    if dense:  # runs of 40 rows with gaps between, as a copy's segment reads them
        pos = np.concatenate([np.arange(s, min(s + 40, slots)) for s in range(0, slots, 60)]) * rb
    else:
        pos = np.sort(rng.choice(slots, 200, replace=False)) * rb
    got, want = np.empty((len(pos), rb), np.uint8), np.empty((len(pos), rb), np.uint8)
    _gather(buf, pos, rb, got)
    gather_rows(buf, pos, rb, want)
    np.testing.assert_array_equal(got, want)


def test_segment_buffers_are_reused_only_once_no_batch_gathers_from_them() -> None:
    import mmap

    from featdb.serve.segments import Held, SegmentCache

    def load(seg: int, alloc: Any) -> Held:
        buf = alloc(4096)
        np.frombuffer(buf, dtype=np.uint8)[:] = seg
        return Held(buf, 4096 // 64, 64)

    cache = SegmentCache(2 * 4096)
    with cache.use(1, 4096, load) as one:
        assert one is not None and isinstance(one.buf, mmap.mmap)
        with cache.use(2, 4096, load), cache.use(3, 4096, load):  # 1 leaves the cache while in use
            out = np.empty((2, 64), dtype=np.uint8)
            one.take(np.array([0, 5]), out)
            assert (out == 1).all()  # its buffer was not handed to 3
    assert cache.as_dict()["buffers_reused"] == 0
    with cache.use(4, 4096, load) as four:  # now 1's (or 2's) buffer is free: reused, refilled
        assert four is not None and cache.as_dict()["buffers_reused"] == 1
        out = np.empty((1, 64), dtype=np.uint8)
        four.take(np.array([3]), out)
        assert (out == 4).all()
    assert cache.as_dict()["bytes"] <= 2 * 4096


def test_segment_cache_evicts_a_segment_batches_still_wait_for_last() -> None:
    from featdb.serve.segments import Held, SegmentCache

    loads: list[int] = []

    def load(seg: int, alloc: Any) -> Held:
        loads.append(seg)
        return Held(alloc(4096), 1, 4096)

    cache = SegmentCache(2 * 4096)
    for seg in (1, 2):
        with cache.use(seg, 4096, load):
            pass
    cache.want(1)  # a batch of 1 is on its way: 2 goes first, though older is 1
    with cache.use(3, 4096, load):
        pass
    with cache.use(1, 4096, load):
        pass
    cache.want(1, -1)
    assert loads == [1, 2, 3]


@pytest.mark.parametrize("rb", [64, 96])
def test_gather_rows_on_a_row_grid_and_off_it_give_the_same_rows(rb: int) -> None:
    import mmap

    from featdb.rowcopy import gather_rows

    buf = mmap.mmap(-1, 1 << 16)
    src = np.frombuffer(buf, dtype=np.uint8)
    src[:] = np.random.default_rng(rb).integers(0, 256, len(src), dtype=np.uint8)
    for pos in (np.array([0, 5, 2, 5, 9]) * rb, np.array([0, 5, 2, 5, 9]) * rb + 8):
        out = np.empty((len(pos), rb), dtype=np.uint8)
        gather_rows(buf, pos, rb, out)
        assert all((out[i] == src[p : p + rb]).all() for i, p in enumerate(pos))

"""A Hypothesis state machine: ingest, read, sample, pack, gc and reopen against a plain numpy model.

Every step is followed by the invariants: the catalog lists exactly the model's tables and sample sets,
``verify`` is clean, and every table reads back as the model says. A few examples run by default;
``-m slow`` runs more than 500 steps and prints how many.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from helpers import FEAT, assert_rows_equal, make_synth_store, torch_threads
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import featdb
from featdb import errors
from featdb.layout.gc import gc
from featdb.sampling import SampleSet
from featdb.sampling.offline import SampleConfig, sample

pytest.importorskip("dgl")

KEYS = ["node/a/x", "node/b/y", "edge/c/z"]
NAMES = ["s1", "s2", "s3"]
DTYPES = ["float32", "float16", "int8", "int64"]
_BASE: dict[str, Path] = {}
STEPS = {"n": 0}


def base_store() -> Path:
    """A small store with a graph and its feature table, built once per test session."""
    if "path" not in _BASE:
        path = Path(tempfile.mkdtemp(prefix="featdb-sm-")) / "store"
        make_synth_store(path, nodes=600).close()
        _BASE["path"] = path
    return _BASE["path"]


class StoreModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="featdb-sm-"))
        shutil.copytree(base_store(), self.dir / "store")
        self.st = featdb.open(self.dir / "store", "a")
        self.feat = self.st.read_all(FEAT)
        self.tables: dict[str, np.ndarray] = {}
        self.sets: dict[str, int] = {}  # name -> batches
        self.packed_for: str | None = None

    def teardown(self) -> None:
        self.st.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    @rule(
        key=st.sampled_from(KEYS),
        rows=st.integers(1, 60),
        dim=st.integers(1, 5),
        dtype=st.sampled_from(DTYPES),
        replace=st.booleans(),
        seed=st.integers(0, 2**16),
    )
    def ingest(self, key: str, rows: int, dim: int, dtype: str, replace: bool, seed: int) -> None:
        STEPS["n"] += 1
        arr = (np.random.default_rng(seed).standard_normal((rows, dim)) * 50).astype(dtype)
        if key in self.tables and not replace:
            with pytest.raises(errors.AlreadyExistsError):
                self.st.write_table(key, arr)
            return
        self.st.write_table(key, arr, replace=replace)
        self.tables[key] = arr

    @rule(key=st.sampled_from(["../x/y", "node/./z", "node/.h/z", "a/b", "graph/x/y"]))
    def bad_key(self, key: str) -> None:
        STEPS["n"] += 1
        with pytest.raises(errors.InvalidKeyError):
            self.st.write_table(key, np.zeros((2, 2), "float32"))

    @precondition(lambda self: bool(self.tables))
    @rule(data=st.data())
    def read(self, data: st.DataObject) -> None:
        STEPS["n"] += 1
        key = data.draw(st.sampled_from(sorted(self.tables)))
        want = self.tables[key]
        ids = np.asarray(data.draw(st.lists(st.integers(-2, len(want) + 1), max_size=40)), dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= len(want)):
            with pytest.raises(errors.IdsOutOfRangeError):
                self.st.read(key, ids)
        elif len(ids):
            assert_rows_equal(self.st.read(key, ids), want[ids])
        else:
            assert self.st.read(key, ids).shape == (0, want.shape[1])

    @rule(name=st.sampled_from(NAMES), fanout=st.integers(1, 4), batch=st.sampled_from([32, 64]))
    def sample(self, name: str, fanout: int, batch: int) -> None:
        STEPS["n"] += 1
        cfg = SampleConfig(name, (fanout, 2), batch, 1)
        if name in self.sets:
            with pytest.raises(errors.AlreadyExistsError):
                sample(self.st, cfg)
            return
        with torch_threads(1):
            self.sets[name] = sample(self.st, cfg)["batches"]

    @precondition(lambda self: bool(self.sets))
    @rule(data=st.data())
    def pack(self, data: st.DataObject) -> None:
        STEPS["n"] += 1
        from helpers import make_layout

        name = data.draw(st.sampled_from(sorted(self.sets)))
        make_layout(self.st, name, host_cache=data.draw(st.sampled_from([0, 8 << 10])))
        self.packed_for = name

    @precondition(lambda self: self.packed_for is not None)
    @rule(data=st.data())
    def read_batches(self, data: st.DataObject) -> None:
        STEPS["n"] += 1
        assert self.packed_for is not None
        with featdb.open_reader(self.st) as r, SampleSet(self.st, self.packed_for) as ss:
            r.attach(ss)
            for b in data.draw(st.lists(st.integers(0, r.num_batches - 1), min_size=1, max_size=4)):
                with r.read_batch(b) as br:
                    assert_rows_equal(br.rows, self.feat[ss.input_ids(b)[br.order]])

    @precondition(lambda self: bool(self.sets))
    @rule(data=st.data())
    def gc_sets(self, data: st.DataObject) -> None:
        STEPS["n"] += 1
        drop = data.draw(st.lists(st.sampled_from(sorted(self.sets)), unique=True, max_size=2))
        if self.packed_for in drop:
            with pytest.raises(errors.InvalidInputError):
                gc(self.st, drop)
            return
        res = gc(self.st, drop)
        assert sorted(res["sample_sets"]) == sorted(drop)
        for name in drop:
            del self.sets[name]

    @rule()
    def reopen(self) -> None:
        STEPS["n"] += 1
        self.st.close()
        self.st = featdb.open(self.dir / "store", "a")

    @invariant()
    def matches_the_model(self) -> None:
        assert {t["key"] for t in self.st.tables()} == set(self.tables) | {FEAT}
        assert {k.split("/", 1)[1] for k, _ in self.st.catalog.scan("sampleset/")} == set(self.sets)
        for name, batches in self.sets.items():
            assert self.st.catalog.get(f"sampleset/{name}")["batches"] == batches
        for key, want in self.tables.items():
            assert_rows_equal(self.st.read_all(key), want)
        assert self.st.verify() == []


def _run(examples: int, steps: int) -> None:
    StoreModel.TestCase.settings = settings(
        max_examples=examples,
        stateful_step_count=steps,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    StoreModel.TestCase().runTest()


def test_the_store_follows_the_numpy_model() -> None:
    _run(examples=4, steps=15)


@pytest.mark.slow
def test_the_store_follows_the_numpy_model_many_steps() -> None:
    STEPS["n"] = 0
    _run(examples=40, steps=25)
    print("state machine steps:", STEPS["n"])
    assert STEPS["n"] >= 500

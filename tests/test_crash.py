"""Crash harness: SIGKILL at a random instant of ingest, ingest-graph, sample, pack, gc and trace add.

Each trial copies a prepared store, starts the command in a driver process that has already imported
everything (so the kill lands in the command's work, not in Python's start-up), kills the whole
process group after a random delay drawn from [0, 1.1 x the command's measured run time], and then
checks that the store opens, verifies clean, reads back identical rows, holds either the old or the
new state of what the command was writing (complete), and that gc and a rerun recover.

A few trials per command run by default; ``-m slow`` runs ``SLOW_TRIALS`` per command.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import FEAT, assert_rows_equal, make_layout, make_sample_set, make_synth_store

import featdb
from featdb.graph import load_graph
from featdb.layout.gc import gc
from featdb.sampling import SampleSet
from featdb.traces import Trace

pytest.importorskip("dgl")

NODES = 4000
DEFAULT_TRIALS = 2
SLOW_TRIALS = 50
DRIVER = """
import sys, time
from featdb.cli import cli
if sys.argv[1] == "sample":
    import dgl, torch  # noqa: F401 - imported before the clock starts
print("ready", flush=True)
sys.stdin.readline()
t = time.perf_counter()
try:
    cli.main(sys.argv[1:], standalone_mode=False)
    code = 0
except SystemExit as exc:
    code = exc.code
print("done", code, time.perf_counter() - t, flush=True)
"""


class Fixture:
    """The prepared store and what it holds before any command runs."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.store = root / "base"
        rng = np.random.default_rng(0)
        self.new_rows = rng.standard_normal((200_000, 16)).astype("float32")
        np.save(root / "rows.npy", self.new_rows)
        np.save(root / "edges.npy", rng.integers(0, NODES, size=(2, 300_000)))
        self.trace = [rng.integers(0, NODES, 3000) for _ in range(600)]
        np.savez(root / "trace.npz", ids=np.concatenate(self.trace), offsets=np.arange(601) * 3000)
        with make_synth_store(self.store, nodes=NODES) as st:
            make_sample_set(st, "tr", epochs=2)
            make_sample_set(st, "old", epochs=2)
            make_sample_set(st, "old2", epochs=2)
            for policy in ("full", "pack-only", "full"):  # non-current generations: gc's work
                make_layout(st, "tr", policy=policy)
            self.gen = make_layout(st, "tr", policy="pack-only")["id"]
            self.rows = st.read_all(FEAT)
            self.edges = load_graph(st).num_edges
        self.durations: dict[str, float] = {}

    def argv(self, name: str, store: Path) -> list[str]:
        s = str(store)
        return {
            "ingest": ["ingest", s, "node/c/feat", str(self.root / "rows.npy"), "--memory-budget", "1MiB", "-q"],
            "ingest-graph": [
                "ingest-graph",
                s,
                str(self.root / "edges.npy"),
                "--num-nodes",
                str(NODES),
                "--replace",
                "-q",
            ],
            "sample": ["sample", s, "--name", "c", "--fanouts", "5,5", "--epochs", "3", "--workers", "2", "-q"],
            "pack": ["pack", s, "--sample-set", "tr", "--host-cache", "16KiB", "--max-blowup", "2", "-q"],
            "gc": ["gc", s, "--sample-set", "old", "--sample-set", "old2", "-q"],
            "trace": ["trace", "add", s, str(self.root / "trace.npz"), "--name", "c", "--table", FEAT, "-q"],
        }[name]


def run_and_kill(argv: list[str], delay: float | None) -> tuple[bool, float]:
    """Run ``featdb argv`` in a ready driver; SIGKILL its process group ``delay`` s after it starts
    (None: let it finish). Returns (finished before the kill, seconds it ran)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", DRIVER, *argv],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None and proc.stdin is not None
    assert proc.stdout.readline().strip() == "ready"
    started = time.perf_counter()
    proc.stdin.write("go\n")
    proc.stdin.flush()
    if delay is not None:
        time.sleep(delay)  # (Popen.wait(timeout) polls in steps of up to 50 ms: too coarse here)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the unreaped driver keeps its group alive until then
    out, err = proc.communicate(timeout=600)
    last = (out.strip().splitlines() or [""])[-1].split()
    finished = last[:1] == ["done"]
    if finished and len(last) > 1:  # (a kill can cut the driver's last line short after the command returned)
        assert last[1] == "0", err
    elif delay is None:
        raise AssertionError(err)
    return finished, time.perf_counter() - started


def check_store(fx: Fixture, name: str, store: Path) -> None:
    """What must hold after a kill at any instant of command ``name``."""
    with featdb.open(store) as st:
        assert st.verify() == []
        assert_rows_equal(st.read_all(FEAT), fx.rows)
        CHECKS[name](fx, st)
    with featdb.open(store, "a") as st:  # recovery: gc takes the debris, and the store stays whole
        gc(st)
        assert st.verify() == []
    dirs = ("tables", "samples", "gens", "traces")
    leftovers = [p.name for d in dirs if (store / d).exists() for p in (store / d).iterdir()]
    assert not [p for p in leftovers if ".partial" in p], leftovers


def _ingest(fx: Fixture, st: featdb.Store) -> None:
    if st.has_table("node/c/feat"):
        assert_rows_equal(st.read_all("node/c/feat"), fx.new_rows)


def _ingest_graph(fx: Fixture, st: featdb.Store) -> None:
    g = load_graph(st)
    assert g.num_nodes == NODES
    if g.num_edges != fx.edges:  # the new graph, complete
        assert int(g.indptr[-1]) == g.num_edges == len(g.indices)


def _sample(fx: Fixture, st: featdb.Store) -> None:
    if st.catalog.get("sampleset/c") is not None:
        with SampleSet(st, "c") as ss:
            for b in range(ss.num_batches):
                ss.batch(b)


def _pack(fx: Fixture, st: featdb.Store) -> None:
    with featdb.open_reader(st) as r, SampleSet(st, "tr") as ss:
        r.attach(ss)
        for b in range(0, r.num_batches, 3):
            with r.read_batch(b) as br:
                assert_rows_equal(br.rows, fx.rows[ss.input_ids(b)[br.order]])


def _gc(fx: Fixture, st: featdb.Store) -> None:
    assert st.catalog.get("layout/current") == fx.gen
    for name in ("old", "old2"):
        if st.catalog.get(f"sampleset/{name}") is not None:
            with SampleSet(st, name) as ss:
                for b in range(ss.num_batches):
                    ss.batch(b)
    _pack(fx, st)


def _trace(fx: Fixture, st: featdb.Store) -> None:
    if st.catalog.get("trace/c") is not None:  # the whole trace, or none
        with Trace(st, "c") as t:
            assert t.num_batches == len(fx.trace)
            for b in range(0, t.num_batches, 7):
                np.testing.assert_array_equal(t.input_ids(b), np.unique(fx.trace[b]))


CHECKS: dict[str, Callable[[Fixture, featdb.Store], None]] = {
    "ingest": _ingest,
    "ingest-graph": _ingest_graph,
    "sample": _sample,
    "pack": _pack,
    "gc": _gc,
    "trace": _trace,
}


@pytest.fixture(scope="module")
def fx(tmp_path_factory: pytest.TempPathFactory) -> Fixture:
    return Fixture(tmp_path_factory.mktemp("crash"))


def trials(fx: Fixture, name: str, n: int, seed: int, work: Path) -> dict[str, Any]:
    if name not in fx.durations:  # the fastest full run (of 3 for long trials) is the kills' window
        runs = []
        for _ in range(3 if n > DEFAULT_TRIALS else 1):
            shutil.copytree(fx.store, work / "measure")
            runs.append(run_and_kill(fx.argv(name, work / "measure"), None)[1])
            check_store(fx, name, work / "measure")
            shutil.rmtree(work / "measure")
        fx.durations[name] = min(runs)
    rng = random.Random(seed)
    killed = 0
    for t in range(n):
        store = work / f"t{t}"
        shutil.copytree(fx.store, store)
        finished, _ = run_and_kill(fx.argv(name, store), rng.uniform(0, 1.1 * fx.durations[name]))
        killed += not finished
        check_store(fx, name, store)
        shutil.rmtree(store)
    return {"command": name, "trials": n, "killed mid-run": killed, "run_s": round(fx.durations[name], 2)}


COMMANDS = list(CHECKS)


@pytest.mark.parametrize("name", COMMANDS)
def test_a_kill_at_a_random_instant_leaves_the_store_whole(fx: Fixture, name: str, tmp_path: Path) -> None:
    trials(fx, name, DEFAULT_TRIALS, seed=COMMANDS.index(name), work=tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", COMMANDS)
def test_many_kills_leave_the_store_whole(fx: Fixture, name: str, tmp_path: Path) -> None:
    res = trials(fx, name, SLOW_TRIALS, seed=1000 + COMMANDS.index(name), work=tmp_path)
    print("crash trials:", res)
    assert res["killed mid-run"] > 0

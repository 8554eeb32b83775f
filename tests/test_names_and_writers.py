"""Names from users never become paths outside their folder; one writer per name; gc never takes work in
progress (DESIGN invariant 8)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import FEAT, assert_one_error_line, make_synth_store, tree

import featdb
from featdb import errors
from featdb.cli import cli
from featdb.graph import load_graph
from featdb.ingest import ingest, ingest_graph
from featdb.layout.gc import gc
from featdb.locks import writer_lock
from featdb.names import check_name, child
from featdb.sampling import SampleSet
from featdb.sampling.offline import SampleConfig, sample
from featdb.tables import Schema

pytest.importorskip("dgl")  # sampling needs DGL

BAD_NAMES = ["..", ".", "../x", "a/b", "/abs", "", ".hidden", "x.partial-1", "a" * 65, "a b", "é"]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("names") / "store"
    make_synth_store(path, nodes=1500).close()
    return path


@pytest.fixture
def store_copy(base: Path, tmp_path: Path) -> Iterator[Path]:
    dst = tmp_path / "store"
    shutil.copytree(base, dst)
    yield dst


@pytest.mark.parametrize("name", BAD_NAMES)
def test_sample_set_names_never_leave_their_folder(store_copy: Path, name: str) -> None:
    """`featdb sample S --name ..` used to delete the whole store (and `--name .` every sample set)."""
    before = tree(store_copy)
    res = CliRunner().invoke(cli, ["sample", str(store_copy), "--name", name, "--fanouts", "2,2", "-q"])
    assert_one_error_line(res, "InvalidInputError", "sample set name")
    assert tree(store_copy) == before


@pytest.mark.parametrize("name", BAD_NAMES)
def test_one_name_rule(name: str, tmp_path: Path) -> None:
    with pytest.raises(errors.InvalidInputError):
        check_name(name)
    with pytest.raises(errors.InvalidInputError):
        child(tmp_path, name)
    for key in (f"node/{name}/feat", f"{name}/p/feat", f"node/p/{name}"):
        with pytest.raises(errors.InvalidKeyError):
            featdb.store.check_key(key)


def test_table_key_parts_follow_the_name_rule(store_copy: Path) -> None:
    with featdb.open(store_copy, "a") as st:
        before = tree(store_copy)
        for key in ("node/../feat", "../p/feat", "node/p/.hidden", "node/./x"):
            with pytest.raises(errors.InvalidKeyError):
                st.write_table(key, np.zeros((3, 2), dtype="float32"))
        assert tree(store_copy) == before


def _sample(st: featdb.Store, name: str, progress: Any = None) -> dict[str, Any]:
    return sample(st, SampleConfig(name, (2, 2), 128, 1), progress=progress, workers=1)


def test_a_second_writer_of_a_sample_set_fails_cleanly(store_copy: Path) -> None:
    """Two `featdb sample --name X`: the second used to remove the first's committed set as crash debris.

    The second writer (a separate process) starts while the first is mid-way; whichever loses gets one
    error line, and the set that is committed is complete and verifies.
    """
    other: list[subprocess.CompletedProcess[str]] = []
    cmd = [str(Path(sys.executable).parent / "featdb"), "sample", str(store_copy), "--name", "x", "--fanouts", "2,2"]
    cmd += ["--batch-size", "128", "--workers", "1", "-q"]

    def midway(n: int) -> None:
        if not other:
            other.append(subprocess.run(cmd, capture_output=True, text=True, timeout=300))

    with featdb.open(store_copy, "a") as st:
        try:
            _sample(st, "x", progress=midway)
            mine_ok = True
        except errors.AlreadyExistsError:
            mine_ok = False
        (proc,) = other
        assert mine_ok != (proc.returncode == 0), proc.stderr
        if mine_ok:
            assert "BusyError" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
        assert st.verify() == []
        with SampleSet(st, "x") as ss:
            assert ss.num_batches > 0 and len(ss.input_ids(0)) > 0


def test_writer_lock_excludes_in_one_process_too(store_copy: Path) -> None:
    with featdb.open(store_copy, "a") as st, writer_lock(st.root, "sampleset", "y"):
        before = tree(store_copy)
        with pytest.raises(errors.BusyError, match="'y' is being written"):
            _sample(st, "y")
        assert tree(store_copy) == before
    with featdb.open(store_copy, "a") as st:  # released: the name is free again
        assert _sample(st, "y")["name"] == "y"


def test_gc_during_ingest_leaves_the_table_being_written(store_copy: Path, tmp_path: Path) -> None:
    """gc used to unlink an ingest's partial table file; the ingest then died with a traceback."""
    rows = np.random.default_rng(0).standard_normal((20_000, 8)).astype("float32")
    np.save(tmp_path / "f.npy", rows)
    removed: list[Any] = []
    with featdb.open(store_copy, "a") as st, featdb.open(store_copy, "a") as other:

        def during(n: int) -> None:
            res = gc(other)
            removed.extend(res["orphans"])

        ingest(st, "node/x/feat", tmp_path / "f.npy", memory_budget=1 << 20, progress=during)
        assert removed == []
        np.testing.assert_array_equal(st.read_all("node/x/feat"), rows)
        assert st.verify() == []


def test_gc_during_ingest_graph_leaves_its_staged_tables(store_copy: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    np.save(tmp_path / "e.npy", rng.integers(0, 500, size=(2, 20_000)))
    calls: list[Any] = []
    with featdb.open(store_copy, "a") as st, featdb.open(store_copy, "a") as other:

        def during(n: int) -> None:
            calls.append(gc(other)["orphans"])

        ingest_graph(st, tmp_path / "e.npy", replace=True, memory_budget=1 << 20, progress=during)
        assert calls and all(c == [] for c in calls)
        assert st.verify() == []
        assert load_graph(st).num_nodes == 500


def test_gc_still_removes_a_dead_writers_leftovers(store_copy: Path) -> None:
    (store_copy / "tables" / "node.x.feat.1.partial").write_bytes(b"x")
    (store_copy / "tables" / "node.x.feat.2").mkdir()
    (store_copy / "tables" / "node.x.feat.2" / "rows.tbl.partial").write_bytes(b"x")
    with featdb.open(store_copy, "a") as st:
        assert sorted(gc(st)["orphans"]) == ["tables/node.x.feat.1.partial", "tables/node.x.feat.2"]
        assert st.verify() == [] and st.read(FEAT, [0]).shape == (1, 16)


def test_two_writers_of_one_table_fail_cleanly(store_copy: Path) -> None:
    """The second writer to publish a table name gets AlreadyExistsError and removes only its own files."""
    a_rows, b_rows = np.zeros((50, 3), "float32"), np.ones((50, 3), "float32")
    with featdb.open(store_copy, "a") as st, featdb.open(store_copy, "a") as other:
        with (
            pytest.raises(errors.AlreadyExistsError),
            st.table_writer("node/t/x", Schema("float32", 50, 3)) as w,
        ):
            w.write(a_rows)
            other.write_table("node/t/x", b_rows)  # the other writer publishes first
        np.testing.assert_array_equal(st.read_all("node/t/x"), b_rows)
        assert st.verify() == []
        assert gc(st)["orphans"] == []  # the loser left nothing behind

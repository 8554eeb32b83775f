"""Base-table reads check what they read: every page of a table has a crc32 in ``rows.crc``, and
``store.read`` / ``read_all`` / ``featdb read`` raise CorruptDataError naming the file and page instead
of returning a flipped byte."""

from __future__ import annotations

import random
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import assert_one_error_line, flip_byte

import featdb
from featdb import errors
from featdb.cli import cli
from featdb.io import PAGE

KEY = "node/p/feat"
ROWS, DIM = 5000, 24  # 96-byte rows: 480 KB, 118 pages


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    path = tmp_path_factory.mktemp("rc") / "store"
    rows = np.random.default_rng(0).standard_normal((ROWS, DIM)).astype("float32")
    with featdb.create(path) as st:
        st.write_table(KEY, rows)
    return path, rows


@pytest.fixture
def store(base: tuple[Path, np.ndarray], tmp_path: Path) -> Iterator[Path]:
    shutil.copytree(base[0], tmp_path / "store")
    yield tmp_path / "store"


def table_file(store: Path) -> Path:
    with featdb.open(store) as st:
        return store / st.table_info(KEY)["file"]


def row_of(offset: int) -> int:
    return (offset - PAGE) // (DIM * 4)


def test_a_flipped_byte_is_caught_by_every_base_table_read(store: Path, base: tuple[Path, np.ndarray]) -> None:
    """store.read and featdb read returned flipped bytes silently."""
    rows = base[1]
    off = PAGE + 1234 * DIM * 4 + 5
    flip_byte(table_file(store), off)
    page = off // PAGE
    with featdb.open(store) as st:
        with pytest.raises(errors.CorruptDataError, match=f"rows.tbl: page {page} .* fails its checksum"):
            st.read(KEY, [0, 1234])
        with pytest.raises(errors.CorruptDataError, match=f"page {page}"):
            st.read_all(KEY)
        far = [0, 4999, 3000]  # other pages still read
        np.testing.assert_array_equal(st.read(KEY, far), rows[far])
        assert any("rows.tbl: checksum mismatch" in p for p in st.verify())
    res = CliRunner().invoke(cli, ["read", str(store), KEY, "1234"])
    assert_one_error_line(res, "CorruptDataError", f"page {page}")


def test_reads_can_opt_out(store: Path) -> None:
    flip_byte(table_file(store), PAGE + 7)
    with featdb.open(store) as st:
        st.verify_reads = False
        assert st.read(KEY, [0]).shape == (1, DIM)  # unchecked: the flipped row comes back
    assert CliRunner().invoke(cli, ["read", str(store), KEY, "0", "--no-verify"]).exit_code == 0
    assert CliRunner().invoke(cli, ["read", str(store), KEY, "0"]).exit_code == 1


def test_a_flipped_header_page_or_checksum_file_is_caught(store: Path) -> None:
    flip_byte(table_file(store), 100)
    with featdb.open(store) as st, pytest.raises(errors.CorruptDataError, match="page 0"):
        st.read(KEY, [0])
    crc = table_file(store).with_suffix(".crc")
    flip_byte(table_file(store), 100)  # restore the table
    flip_byte(crc, 8)  # the checksum of page 2
    with featdb.open(store) as st:
        assert any("rows.crc: checksum mismatch" in p for p in st.verify())
        with pytest.raises(errors.CorruptDataError, match="page 2"):
            st.read(KEY, [row_of(2 * PAGE)])


def _flip_trials(store: Path, rows: np.ndarray, trials: int, seed: int, work: Path) -> dict[str, int]:
    """One random byte of rows.tbl flipped per trial: verify and every read path must report it, and a
    random read either raises or returns the right rows (0 wrong rows served)."""
    rng = random.Random(seed)
    size = table_file(store).stat().st_size
    tally = {"trials": 0, "verify_reported": 0, "read_all_raised": 0, "wrong_rows_served": 0}
    for t in range(trials):
        dst = work / f"t{t}"
        shutil.copytree(store, dst)
        off = rng.randrange(size)
        flip_byte(table_file(dst), off)
        with featdb.open(dst) as st:
            tally["trials"] += 1
            tally["verify_reported"] += bool(st.verify())
            try:
                st.read_all(KEY)
            except errors.CorruptDataError:
                tally["read_all_raised"] += 1
            ids = np.random.default_rng(t).integers(0, ROWS, 2000)
            try:
                got = st.read(KEY, ids)
                tally["wrong_rows_served"] += int((got.view(np.uint32) != rows[ids].view(np.uint32)).any(axis=1).sum())
            except errors.CorruptDataError:
                pass
        shutil.rmtree(dst)
    return tally


def test_random_flips_are_always_caught(store: Path, base: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    tally = _flip_trials(store, base[1], 20, 0, tmp_path)
    assert tally == {"trials": 20, "verify_reported": 20, "read_all_raised": 20, "wrong_rows_served": 0}


@pytest.mark.slow
def test_random_flips_are_always_caught_many(store: Path, base: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    tally = _flip_trials(store, base[1], 300, 1, tmp_path)
    print("base table flips:", tally)
    assert tally == {"trials": 300, "verify_reported": 300, "read_all_raised": 300, "wrong_rows_served": 0}


def test_training_stops_on_a_damaged_label_file(tmp_path: Path) -> None:
    """Labels are read through a memory map, so the whole label file is checked before training."""
    pytest.importorskip("dgl")
    from helpers import make_layout, make_sample_set, make_synth_store

    from trainer.cli import main

    with make_synth_store(tmp_path / "store", nodes=900) as st:
        make_sample_set(st, "tr", epochs=1)
        make_layout(st, "tr")
        label_file = tmp_path / "store" / st.table_info("graph/node/label")["file"]
    flip_byte(label_file, PAGE + 8 * 17)
    res = CliRunner().invoke(main, [str(tmp_path / "store"), "--sample-set", "tr", "--epochs", "1", "-q"])
    assert_one_error_line(res, "CorruptDataError", "graph/node/label")


def test_sampling_stops_on_a_damaged_graph_file(tmp_path: Path) -> None:
    """The graph is memory-mapped for sampling, so its files are checked whole before sampling starts."""
    pytest.importorskip("dgl")
    from helpers import make_synth_store

    with make_synth_store(tmp_path / "store", nodes=900) as st:
        indices = tmp_path / "store" / st.table_info("graph/csc/indices")["file"]
    flip_byte(indices, PAGE + 40)
    res = CliRunner().invoke(cli, ["sample", str(tmp_path / "store"), "--name", "s", "--fanouts", "2"])
    assert_one_error_line(res, "CorruptDataError", "graph/csc/indices")
    assert not (tmp_path / "store" / "samples" / "s").exists()

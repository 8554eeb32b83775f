"""Bad input gets one readable line and changes nothing (DESIGN invariant 6): the cases of issue 12."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner, Result
from helpers import FEAT, assert_one_error_line, make_synth_store, tree

import featdb
from featdb.cli import cli

pytest.importorskip("dgl")


def run(*args: Any) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("val") / "store"
    make_synth_store(path, nodes=800).close()
    return path


@pytest.fixture
def store(base: Path, tmp_path: Path) -> Iterator[Path]:
    dst = tmp_path / "store"
    shutil.copytree(base, dst)
    yield dst


def npy(tmp_path: Path, name: str, a: Any) -> Path:
    np.save(tmp_path / name, a)
    return tmp_path / name


@pytest.mark.parametrize(
    ("array", "args", "error", "words"),
    [
        (np.zeros((4, 2), "float32"), ["--as-dtype", "bogus"], "InvalidInputError", "'bogus' is not a dtype"),
        (np.zeros((4, 2), "float32"), ["--as-dtype", "object"], "InvalidInputError", "not a fixed-width numeric"),
        (np.float32(3.0), [], "SchemaMismatchError", "1-D or 2-D"),
        (np.zeros((0, 4), "float32"), [], "SchemaMismatchError", "empty"),
        (np.zeros((4, 0), "float32"), [], "SchemaMismatchError", "empty"),
        (np.array([[1.0, np.nan], [0, 0]], "float32"), [], "InvalidInputError", "row 0 holds NaN"),
        (np.array([[1.0, 2], [0, np.inf]], "float64"), [], "InvalidInputError", "--allow-nonfinite"),
    ],
)
def test_a_bad_first_ingest_leaves_no_store(
    tmp_path: Path, array: Any, args: list[str], error: str, words: str
) -> None:
    """Tracebacks for --as-dtype bogus and a 0-d .npy; an empty .npy and NaN rows were accepted; a failed
    first ingest left an empty store."""
    src = npy(tmp_path, "src.npy", array)
    res = run("ingest", tmp_path / "new", "node/p/feat", src, *args)
    assert_one_error_line(res, error, words)
    assert not (tmp_path / "new").exists()


def test_a_failed_ingest_into_an_empty_folder_leaves_it_empty(tmp_path: Path) -> None:
    (tmp_path / "new").mkdir()
    src = npy(tmp_path, "src.npy", np.full((3, 2), np.nan, "float32"))
    assert_one_error_line(run("ingest", tmp_path / "new", "node/p/feat", src), "row 0")
    assert list((tmp_path / "new").iterdir()) == []


def test_nonfinite_rows_are_accepted_when_asked(tmp_path: Path, store: Path) -> None:
    rows = np.array([[1.0, np.nan], [np.inf, 0]], "float32")
    before = tree(store)
    assert_one_error_line(run("ingest", store, "node/p/x", npy(tmp_path, "x.npy", rows)), "row 0 holds NaN")
    assert tree(store) == before
    res = run("ingest", store, "node/p/x", tmp_path / "x.npy", "--allow-nonfinite", "-q")
    assert res.exit_code == 0, res.output
    with featdb.open(store) as st:
        np.testing.assert_array_equal(st.read_all("node/p/x"), rows)


def test_raw_ingest_refuses_bogus_dtypes_and_empty_shapes(tmp_path: Path) -> None:
    (tmp_path / "r.bin").write_bytes(bytes(32))
    for args, words in (
        (["--dtype", "bogus", "--shape", "4,2"], "'bogus'"),
        (["--dtype", "f4", "--shape", "0,2"], "empty"),
    ):
        assert_one_error_line(run("ingest", tmp_path / "new", "node/p/f", tmp_path / "r.bin", *args), words)
        assert not (tmp_path / "new").exists()


def test_synth_refuses_a_bogus_dtype_before_creating_anything(tmp_path: Path) -> None:
    assert_one_error_line(run("synth", tmp_path / "new", "--nodes", 100, "--dtype", "bogus"), "InvalidInputError")
    assert not (tmp_path / "new").exists()


def test_split_files_are_checked(tmp_path: Path, store: Path) -> None:
    """`ingest-graph --split x.npy` was a traceback; overlapping or duplicate split ids were accepted."""
    edges = npy(tmp_path, "e.npy", np.array([[0, 1, 2, 3], [1, 2, 3, 4]]))
    before = tree(store)
    cases = {
        "single array": npy(tmp_path, "x.npy", np.arange(3)),
        "node 2 is in splits train and test": tmp_path / "overlap.npz",
        "split valid lists node 3 twice": tmp_path / "dup.npz",
        "not a readable .npz": tmp_path / "junk.npz",
    }
    np.savez(tmp_path / "overlap.npz", train=[0, 1, 2], valid=[3], test=[2, 4])
    np.savez(tmp_path / "dup.npz", train=[0, 1], valid=[3, 3], test=[4])
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 not a zip")
    for words, split in cases.items():
        res = run("ingest-graph", store, edges, "--split", split, "--replace")
        assert_one_error_line(res, "InvalidInputError", words)
        assert tree(store) == before


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--fanouts", "99999999999999999999"], "fanouts 99999999999999999999"),
        (["--fanouts", "5,0"], "fanouts 5,0"),
        (["--batch-size", str(2**40)], "batch size"),
        (["--epochs", str(10**9)], "epochs"),
        (["--seed", "-1"], "seed"),
    ],
)
def test_sample_refuses_nonsense_numbers(store: Path, args: list[str], words: str) -> None:
    before = tree(store)
    assert_one_error_line(run("sample", store, "--name", "s", *args), "InvalidInputError", words)
    assert tree(store) == before


@pytest.mark.parametrize("ids", ["99999999999999999999999", "800", "-1", "0-99999999999999999"])
def test_read_refuses_ids_past_the_table(store: Path, ids: str) -> None:
    """`featdb read S KEY 99999999999999999999999` was a traceback."""
    assert_one_error_line(run("read", store, "--", FEAT, ids), "IdsOutOfRangeError", "out of range [0, 800)")


@pytest.mark.parametrize("value", ["nan", "inf", "-0.5", "-1"])
def test_pack_refuses_a_max_blowup_that_is_not_a_finite_number_of_at_least_zero(store: Path, value: str) -> None:
    """`--max-blowup nan` was accepted without a word (0 is the blocks policy: nothing stored)."""
    res = run("pack", store, "--sample-set", "tr", "--max-blowup", value)
    assert res.exit_code == 2 and "--max-blowup" in res.output and "finite number of at least 0" in res.output


def test_train_refuses_a_device_it_cannot_use_before_opening_anything(tmp_path: Path) -> None:
    """`featdb-train --device tpu` was a traceback; `--device cuda` without a GPU wrote evaluation sets first."""
    import torch

    from trainer.cli import main

    missing = tmp_path / "no-store-here"
    devices = {"tpu": "use cpu or cuda", "cuda:x": "use cpu or cuda"}
    if not torch.cuda.is_available():
        devices["cuda"] = "no CUDA device"
    for device, words in devices.items():
        res = CliRunner().invoke(main, [str(missing), "--sample-set", "tr", "--device", device])
        assert_one_error_line(res, "ConfigError", words)
    assert not missing.exists()

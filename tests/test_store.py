"""Store, catalog, base tables, ingest: round trips, errors, atomicity, verify."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import featdb
from featdb import errors
from featdb.ingest import ingest
from featdb.io import BUFFERED, DIRECT
from featdb.tables import Schema

DTYPES = ["float32", "float16", "float64", "int8", "int64", "uint8", "int32"]


def _roundtrip_dir(direct: bool) -> Path:
    root = Path("/dev/shm") if not direct and Path("/dev/shm").is_dir() else Path(__file__).parent.parent / ".test-tmp"
    root.mkdir(exist_ok=True)
    import tempfile

    return Path(tempfile.mkdtemp(dir=root))


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "buffered"])
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_ingest_read_roundtrip(direct: bool, data: st.DataObject) -> None:
    dtype = data.draw(st.sampled_from(DTYPES))
    rows = data.draw(st.integers(1, 3000))  # an empty source is refused (test_validation)
    dim = data.draw(st.integers(1, 300))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    arr = (rng.standard_normal((rows, dim)) * 100).astype(dtype)
    n_ids = data.draw(st.integers(0, 2000))
    ids = rng.integers(0, rows, n_ids) if rows else np.zeros(0, dtype=np.int64)
    root = _roundtrip_dir(direct)
    try:
        np.save(root / "src.npy", arr)
        with featdb.create(root / "s") as s:
            s.direct = direct
            ingest(s, "node/t/feat", root / "src.npy", memory_budget=data.draw(st.integers(1, 1 << 20)))
            out = s.read("node/t/feat", ids)
            assert out.dtype == arr.dtype and out.shape == (len(ids), dim)
            np.testing.assert_array_equal(out, arr[ids])
            if len(ids):
                expected = DIRECT if direct and not str(root).startswith("/dev/shm") else BUFFERED
                assert s.io_mode("node/t/feat") == expected
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_raw_binary_ingest_and_conversion(tmp_path: Path, rng: np.random.Generator) -> None:
    arr = rng.standard_normal((100, 7)).astype("float32")
    arr.tofile(tmp_path / "x.bin")
    with featdb.create(tmp_path / "s") as s:
        ingest(s, "node/a/raw", tmp_path / "x.bin", dtype="float32", shape=(100, 7))
        ingest(s, "node/a/half", tmp_path / "x.bin", dtype="float32", shape=(100, 7), as_dtype="float16")
        np.testing.assert_array_equal(s.read_all("node/a/raw"), arr)
        np.testing.assert_array_equal(s.read_all("node/a/half"), arr.astype("float16"))
        with pytest.raises(errors.SchemaMismatchError):
            ingest(s, "node/a/bad", tmp_path / "x.bin", dtype="float32", shape=(101, 7))
        with pytest.raises(errors.InvalidInputError):
            ingest(s, "node/a/bad", tmp_path / "x.bin")


def test_reopen_and_stats(store: featdb.Store, rng: np.random.Generator) -> None:
    arr = rng.standard_normal((5000, 128)).astype("float32")
    store.write_table("node/p/feat", arr)
    store.close()
    with featdb.open(store.root) as s:
        ids = rng.integers(0, 5000, 400)
        np.testing.assert_array_equal(s.read("node/p/feat", ids), arr[ids])
        st_ = s.stats()["node/p/feat"]
        assert st_["rows_served"] == 400 and st_["rows_fetched"] == len(np.unique(ids))
        assert st_["read_amplification"] >= 1.0
        assert [t["key"] for t in s.tables()] == ["node/p/feat"]


@pytest.mark.parametrize(
    "ids,exc",
    [
        (np.zeros((2, 2), dtype=np.int64), errors.InvalidIdsError),
        (np.array([0.5, 1.0]), errors.InvalidIdsError),
        (np.array([-1]), errors.IdsOutOfRangeError),
        (np.array([10]), errors.IdsOutOfRangeError),
        ("abc", errors.InvalidIdsError),
    ],
)
def test_bad_ids(store: featdb.Store, ids: object, exc: type) -> None:
    store.write_table("node/p/feat", np.zeros((10, 4), dtype="float32"))
    with pytest.raises(exc):
        store.read("node/p/feat", ids)


def test_error_tree_inherits_builtins() -> None:
    assert issubclass(errors.TableNotFoundError, KeyError)
    assert issubclass(errors.IdsOutOfRangeError, IndexError)
    assert issubclass(errors.InvalidIdsError, TypeError)
    assert issubclass(errors.StoreNotFoundError, FileNotFoundError)
    assert issubclass(errors.ReadOnlyError, PermissionError)
    for name in dir(errors):
        obj = getattr(errors, name)
        if isinstance(obj, type) and issubclass(obj, Exception) and obj is not errors.FeatDBError:
            assert issubclass(obj, errors.FeatDBError), name


def test_store_errors(tmp_path: Path) -> None:
    with pytest.raises(errors.StoreNotFoundError):
        featdb.open(tmp_path / "nope")
    with featdb.create(tmp_path / "s") as s:
        s.write_table("node/p/feat", np.zeros((3, 2), dtype="float32"))
        with pytest.raises(errors.TableNotFoundError):
            s.read("node/p/missing", [0])
        with pytest.raises(errors.InvalidKeyError):
            s.write_table("bad-key", np.zeros((3, 2)))
        with pytest.raises(errors.AlreadyExistsError):
            s.write_table("node/p/feat", np.zeros((3, 2), dtype="float32"))
        with pytest.raises(errors.InvalidInputError):
            s.write_table("node/p/obj", np.array([["a"]], dtype=object))
    with pytest.raises(errors.StoreExistsError):
        featdb.create(tmp_path / "s")
    with featdb.open(tmp_path / "s") as ro, pytest.raises(errors.ReadOnlyError):
        ro.write_table("node/p/other", np.zeros((3, 2), dtype="float32"))


def test_newer_format_version_is_refused(store: featdb.Store) -> None:
    store.catalog.write(lambda t: t.put("meta", {"format_version": 99}))
    store.close()
    with pytest.raises(errors.FormatVersionError):
        featdb.open(store.root)


def test_failed_ingest_leaves_nothing(store: featdb.Store, tmp_path: Path) -> None:
    (tmp_path / "short.bin").write_bytes(b"\0" * 100)
    with pytest.raises(errors.SchemaMismatchError):
        ingest(store, "node/a/x", tmp_path / "short.bin", dtype="float32", shape=(100, 1))

    def chunks():  # type: ignore[no-untyped-def]
        yield np.zeros((5, 2), dtype="float32")
        raise RuntimeError("source died")

    with pytest.raises(RuntimeError):
        store.write_table("node/a/y", chunks(), schema=Schema("float32", 10, 2))
    assert store.tables() == []
    assert not list((store.root / "tables").glob("*")) if (store.root / "tables").exists() else True


def test_verify_catches_flipped_byte(store: featdb.Store, rng: np.random.Generator) -> None:
    store.write_table("node/p/feat", rng.standard_normal((3000, 64)).astype("float32"))
    assert store.verify() == []
    path = store.root / store.table_info("node/p/feat")["file"]
    with open(path, "r+b") as f:
        f.seek(300_000)
        b = f.read(1)
        f.seek(300_000)
        f.write(bytes([b[0] ^ 0xFF]))
    problems = store.verify()
    assert len(problems) == 1 and "block 0" in problems[0] and path.name in problems[0]


def test_catalog_grows_past_initial_map(tmp_path: Path) -> None:
    from featdb.catalog import Catalog

    cat = Catalog(tmp_path / "c", readonly=False, create=True)
    big = "x" * 100_000
    for i in range(800):  # 80 MB > 64 MiB initial map
        cat.write(lambda t, i=i: t.put(f"k/{i}", big))
    assert cat.get("k/799") == big
    cat.close()


def test_catalog_errors_are_mapped(tmp_path: Path) -> None:
    from featdb.catalog import Catalog

    (tmp_path / "notadir").write_text("x")
    with pytest.raises(errors.CatalogError):
        Catalog(tmp_path / "notadir", readonly=True).get("meta")


def test_reads_after_fork(store: featdb.Store, rng: np.random.Generator) -> None:
    arr = rng.standard_normal((1000, 8)).astype("float32")
    store.write_table("node/p/feat", arr)
    store.read("node/p/feat", [1])
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: catalog and files reopen in this process
        ok = np.array_equal(store.read("node/p/feat", [5, 7]), arr[[5, 7]]) and store.tables()
        os.write(w, b"1" if ok else b"0")
        os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(r, 1) == b"1"


def test_take_rows_gathers_in_place_and_rejects_out_of_range_rows() -> None:
    from featdb.rowcopy import take_rows

    src = np.arange(40, dtype=np.uint8).reshape(10, 4)
    rows = np.array([9, 0, 3, 3])
    out = np.zeros((4, 4), dtype=np.uint8)
    take_rows(src, rows, out)
    np.testing.assert_array_equal(out, src[rows])
    for bad in ([10], [-1], [0, 11]):
        kept = out.copy()
        with pytest.raises(errors.CorruptDataError, match="outside"):
            take_rows(src, np.array(bad), out[: len(bad)])
        np.testing.assert_array_equal(out, kept)
    take_rows(src, np.array([], dtype=np.int64), out[:0])

"""The catalog is verified: every entry carries a crc32 of its key and value and is schema-checked when
read; a damaged entry is a CorruptCatalogError naming its key, and ``verify`` reports it without crashing."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import lmdb
import numpy as np
import pytest
from click.testing import CliRunner
from helpers import FEAT, assert_one_error_line, make_sample_set, make_synth_store

import featdb
from featdb import errors, records
from featdb.cli import cli
from featdb.sampling import SampleSet

pytest.importorskip("dgl")  # the store holds a sample set


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cat") / "store"
    with make_synth_store(path, nodes=1200) as st:
        make_sample_set(st, "tr", epochs=1)
    return path


@pytest.fixture
def store_copy(base: Path, tmp_path: Path) -> Iterator[Path]:
    dst = tmp_path / "store"
    shutil.copytree(base, dst)
    yield dst


def raw_entries(path: Path) -> dict[bytes, bytes]:
    env = lmdb.open(str(path / "catalog"), readonly=True, lock=False)
    with env.begin() as txn:
        out = {bytes(k): bytes(v) for k, v in txn.cursor()}
    env.close()
    return out


def poke(path: Path, key: str, value: bytes | None, new_key: str | None = None) -> None:
    """Write ``value`` under ``key`` (or move the entry to ``new_key``) behind featdb's back."""
    env = lmdb.open(str(path / "catalog"), map_size=1 << 30)
    with env.begin(write=True) as txn:
        old = txn.get(key.encode())
        if new_key is not None:
            txn.delete(key.encode())
            txn.put(new_key.encode(), old)
        else:
            assert value is not None
            txn.put(key.encode(), value)
    env.close()


def flip_in_value(path: Path, key: str, at: int = 5) -> None:
    raw = bytearray(raw_entries(path)[key.encode()])
    raw[at] ^= 0x01
    poke(path, key, bytes(raw))


def test_every_value_carries_its_checksum(store_copy: Path) -> None:
    for k, v in raw_entries(store_copy).items():
        assert records.decode(k.decode(), v) is not None
        assert records.SEP in v, k


@pytest.mark.parametrize("key", ["table/" + FEAT, "sampleset/tr", "graph", "file/samples/tr/index.i64"])
def test_a_flipped_value_is_named_by_reads_and_by_verify(store_copy: Path, key: str) -> None:
    """One byte changed in a table document made info, read and featdb-train fail with JSONDecodeError
    while verify printed ok."""
    flip_in_value(store_copy, key)
    with featdb.open(store_copy) as st:
        problems = st.verify()
    assert any(repr(key) in p and "checksum" in p for p in problems), problems
    res = CliRunner().invoke(cli, ["verify", str(store_copy)])
    assert res.exit_code == 1 and repr(key) in res.output and "Traceback" not in res.output
    if key.startswith("table/"):
        assert_one_error_line(CliRunner().invoke(cli, ["read", str(store_copy), FEAT, "0"]), "CorruptCatalogError", key)
    if key == "sampleset/tr":
        with featdb.open(store_copy) as st, pytest.raises(errors.CorruptCatalogError, match="sampleset/tr"):
            SampleSet(st, "tr")
    if not key.startswith("file/"):  # info reads every document but the file records
        assert_one_error_line(CliRunner().invoke(cli, ["info", str(store_copy)]), "CorruptCatalogError", repr(key))


def test_a_flipped_key_is_reported(store_copy: Path) -> None:
    """One random flip silently dropped a catalog entry (the current layout, in the issue's trials):
    the entry moved to a key its checksum does not cover."""
    poke(store_copy, "graph", None, new_key="grapi")
    with featdb.open(store_copy) as st:
        problems = st.verify()
    assert any("'grapi'" in p and "checksum" in p for p in problems), problems


@pytest.mark.parametrize(
    ("key", "doc", "field"),
    [
        ("file/samples/tr/index.i64", {"size": 8}, "crcs"),
        ("table/" + FEAT, {"key": FEAT, "dtype": "float32", "rows": 3, "dim": 2}, "file"),
        ("table/" + FEAT, {"key": FEAT, "dtype": "float32", "rows": 3, "dim": 2, "file": "../../etc/x"}, "file"),
        ("sampleset/tr", {"name": "tr"}, "path"),
        ("layout/current", 5, "generation id"),
        ("graph", [], "document"),
    ],
)
def test_a_document_of_the_wrong_shape_is_named(store_copy: Path, key: str, doc: object, field: str) -> None:
    """Schema checks: a checksummed document that lacks what readers index never reaches them as a
    KeyError (one flip made verify itself raise KeyError)."""
    poke(store_copy, key, records.encode(key, doc))
    with featdb.open(store_copy) as st:
        problems = st.verify()
        assert any(repr(key) in p and field in p for p in problems), problems
        with pytest.raises(errors.CorruptCatalogError, match=field):
            st.catalog.get(key)


def test_values_written_before_checksums_still_read(store_copy: Path) -> None:
    with featdb.open(store_copy) as st:
        doc = st.table_info(FEAT)
    poke(store_copy, "table/" + FEAT, json.dumps(doc).encode())
    with featdb.open(store_copy) as st:
        assert st.table_info(FEAT) == doc and st.verify() == []
        assert st.read(FEAT, np.arange(3)).shape == (3, 16)


DIGEST = (
    "import hashlib, lmdb, sys\n"
    "env = lmdb.open(sys.argv[1], readonly=True, lock=False)\n"
    "with env.begin() as t:\n"
    "    print(hashlib.sha256(b''.join(bytes(k) + b'=' + bytes(v) + b';' for k, v in t.cursor())).hexdigest())\n"
)


def _content(catalog: Path) -> str:
    """A digest of every key and value as LMDB now returns them ("unreadable" if it cannot)."""
    res = subprocess.run([sys.executable, "-c", DIGEST, str(catalog)], capture_output=True, text=True, timeout=60)
    return res.stdout.strip() if res.returncode == 0 else "unreadable"


def _flip_trials(path: Path, work: Path, trials: int, seed: int) -> dict[str, int]:
    """Flip one random bit in the catalog's non-zero bytes; `featdb verify` must never crash, and must
    report every flip that changed what the catalog holds (a flip in a stale page LMDB no longer reads
    changes nothing: "harmless")."""
    rng = random.Random(seed)
    data = (path / "catalog" / "data.mdb").read_bytes()
    used = [i for i in range(len(data)) if data[i]]  # pages LMDB wrote (free space is zeros)
    clean = _content(path / "catalog")
    tally = {"reported": 0, "harmless": 0, "missed": 0}
    featdb_bin = str(Path(sys.executable).parent / "featdb")
    for t in range(trials):
        dst = work / f"t{t}"
        shutil.copytree(path, dst)
        off = rng.choice(used)
        with open(dst / "catalog" / "data.mdb", "r+b") as f:
            f.seek(off)
            b = f.read(1)[0]
            f.seek(off)
            f.write(bytes([b ^ (1 << rng.randrange(8))]))
        res = subprocess.run([featdb_bin, "verify", str(dst)], capture_output=True, text=True, timeout=120)
        assert res.returncode in (0, 1), (off, res.returncode, res.stderr)
        assert "Traceback" not in res.stderr, (off, res.stderr)
        if res.returncode == 1:
            tally["reported"] += 1
        else:
            tally["harmless" if _content(dst / "catalog") == clean else "missed"] += 1
        shutil.rmtree(dst)
    return tally


def test_random_catalog_flips_never_crash_verify(base: Path, tmp_path: Path) -> None:
    tally = _flip_trials(base, tmp_path, 6, seed=0)
    assert tally["missed"] == 0, tally


@pytest.mark.slow
def test_random_catalog_flips_never_crash_verify_many(base: Path, tmp_path: Path) -> None:
    tally = _flip_trials(base, tmp_path, 200, seed=1)
    print("catalog flips:", tally)
    assert tally["missed"] == 0, tally


@pytest.mark.parametrize("name", ["index.i64", "counts.i32"])
def test_a_sample_sets_index_and_counts_are_checked_when_read(store_copy: Path, name: str) -> None:
    """Index files are read whole, so they are checked whole: a flipped byte is an error, not a wrong batch."""
    from helpers import flip_byte

    flip_byte(store_copy / "samples" / "tr" / name, 3)
    with (
        featdb.open(store_copy) as st,
        pytest.raises(errors.CorruptDataError, match=f"samples/tr/{name}"),
        SampleSet(st, "tr") as ss,
    ):
        ss.counts()

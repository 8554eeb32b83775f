"""Layout reads check what they read: a flipped byte in any file a reader reads (batch extents,
shared extents, copies, memory tiers, maps, indexes, the base table) is a CorruptDataError naming
the file, never a wrong row; verify reports every one; reads can opt out; pack refuses to copy a
damaged base row."""

from __future__ import annotations

import contextlib
import random
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from helpers import FEAT, flip_byte, gen_dir, make_layout, make_sample_set, make_synth_store, only_candidates

import featdb
from featdb import errors
from featdb.integrity import verify
from featdb.sampling import SampleSet
from featdb.serve import open_reader

POLICIES = {  # name -> (pack keywords, candidates the capped plan may choose)
    "packed": ({"host_cache": 40 << 10}, None),
    "shared": ({"host_cache": 40 << 10, "max_blowup": 3.0}, ("shared",)),
    "copies": ({"host_cache": 40 << 10, "max_blowup": 3.0}, ("copies",)),
    "blocks": ({"host_cache": 40 << 10, "policy": "blocks"}, None),
}


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lc")
    with make_synth_store(root / "src", nodes=2500, dim=16, seed=3) as st:
        make_sample_set(st, "tr", (4, 4), 64, 2, seed=1)
    out = {}
    for name, (kw, cands) in POLICIES.items():
        shutil.copytree(root / "src", root / name)
        with featdb.open(root / name, mode="a") as st, only_candidates(*cands) if cands else contextlib.nullcontext():
            make_layout(st, **kw)
        out[name] = root / name
    return out


def _files_read(store: Path) -> dict[str, Path]:
    """The files serving reads, by kind (those the layout has, non-empty)."""
    with featdb.open(store) as st:
        g = gen_dir(st)
        base = st.root / st.table_info(FEAT)["file"]
    names = ["l4.dat", "l3.dat", "copies.dat", "host.tbl", "map.bin", "blocks.i64", "batches.i64", "segments.i64"]
    names += ["l2_ids.i64", "l3.crc", "copies.crc"]
    found = {n: g / n for n in names if (g / n).exists() and (g / n).stat().st_size}
    return found | {"rows.tbl": base}


def _serve_all(store: Path, verify_reads: bool = True) -> None:
    """Serve every batch; every row must equal the base table's (read from a clean copy)."""
    with featdb.open(store) as st, SampleSet(st, "tr") as ss:
        st.verify_reads = verify_reads
        with open_reader(st, sample_set="tr") as r:
            r.attach(ss)
            for b in r.epoch_order(range(r.num_batches), np.random.default_rng(0)):
                with r.read_batch(b) as br:
                    yield br.input_ids, br.rows.copy()


def _clean_rows(store: Path) -> np.ndarray:
    with featdb.open(store) as st:
        st.verify_reads = False
        return st.read_all(FEAT)


@contextlib.contextmanager
def _damaged(store: Path, tmp: Path, kind: str, offset: int) -> Iterator[Path]:
    dst = tmp / f"{kind}-{offset}"
    shutil.copytree(store, dst)
    path = _files_read(dst)[kind]
    flip_byte(path, offset % path.stat().st_size)
    yield dst
    shutil.rmtree(dst)


def _outcome(store: Path, want: np.ndarray) -> str:
    """ "caught" (CorruptDataError), or "clean" (every row served equals the table's); a wrong row fails."""
    try:
        for ids, rows in _serve_all(store):
            np.testing.assert_array_equal(rows.view(np.uint8), want[ids].view(np.uint8))
    except errors.CorruptDataError:
        return "caught"
    return "clean"


@pytest.mark.parametrize("policy", list(POLICIES))
def test_the_layout_serves_right_rows_when_intact(stores: dict[str, Path], policy: str) -> None:
    want = _clean_rows(stores[policy])
    assert _outcome(stores[policy], want) == "clean"


@pytest.mark.parametrize("policy", list(POLICIES))
def test_a_flipped_byte_in_any_file_served_from_is_caught(stores: dict[str, Path], policy: str, tmp_path: Path) -> None:
    store = stores[policy]
    want = _clean_rows(store)
    kinds = _files_read(store)
    expect = {"packed": {"l4.dat"}, "shared": {"l3.dat"}, "copies": {"copies.dat"}, "blocks": {"rows.tbl"}}[policy]
    assert expect <= set(kinds)
    rng = random.Random(policy)
    for kind, path in kinds.items():
        if kind == "rows.tbl" and policy != "blocks":
            continue  # packed layouts read no base rows
        size = path.stat().st_size
        offsets = [0, size - 1, rng.randrange(size)]
        if kind in ("copies.dat", "rows.tbl"):  # a byte of a row a segment reads (not every page is read)
            offsets = [_a_read_offset(store)]
        for off in offsets:
            with _damaged(store, tmp_path, kind, off) as bad:
                got = _outcome(bad, want)
                if kind in expect or kind in ("map.bin", "batches.i64", "segments.i64", "host.tbl", "blocks.i64"):
                    assert got == "caught", (policy, kind, off)
                with featdb.open(bad) as st:
                    assert verify(st), (policy, kind, off)  # verify names every one


def _a_read_offset(store: Path) -> int:
    """The byte offset, in the file it reads, of the first row of the first blocks segment."""
    with featdb.open(store) as st, open_reader(st, sample_set="tr") as r:
        seg = int(np.flatnonzero(r.segs[:, 6] > 0)[0])
        return int(r.seg_reader._source(seg)[1] + r.seg_reader.ids(seg)[0] * r.rb + 3)


def test_reads_can_opt_out(stores: dict[str, Path], tmp_path: Path) -> None:
    store = stores["packed"]
    with _damaged(store, tmp_path, "l4.dat", 100) as bad:
        assert _outcome(bad, _clean_rows(store)) == "caught"
        served = sum(len(ids) for ids, _ in _serve_all(bad, verify_reads=False))  # the user's choice: no check
        assert served > 0


def test_pack_refuses_to_copy_a_damaged_base_row(stores: dict[str, Path], tmp_path: Path) -> None:
    dst = tmp_path / "s"
    shutil.copytree(stores["packed"], dst)
    with featdb.open(dst, mode="a") as st:
        flip_byte(st.root / st.table_info(FEAT)["file"], 4096 + 1000 * 64 + 5)
        before = sorted(p.name for p in (st.root / "gens").iterdir())
        with pytest.raises(errors.CorruptDataError, match=r"rows\.tbl"):
            make_layout(st, host_cache=40 << 10)
        assert sorted(p.name for p in (st.root / "gens").iterdir()) == before


@pytest.mark.slow
def test_random_flips_over_every_file_a_reader_reads(stores: dict[str, Path], tmp_path: Path) -> None:
    """200 one-byte flips at random offsets of random files of random layouts: verify reports every
    one; serving every batch either raises CorruptDataError or serves only right rows."""
    rng = random.Random(200)
    want = {p: _clean_rows(s) for p, s in stores.items()}
    tally = {"caught": 0, "clean": 0}
    for trial in range(200):
        policy = rng.choice(list(POLICIES))
        kinds = _files_read(stores[policy])
        kind = rng.choice(sorted(kinds))
        with _damaged(stores[policy], tmp_path, kind, rng.randrange(kinds[kind].stat().st_size)) as bad:
            tally[_outcome(bad, want[policy])] += 1  # a wrong row fails the test here
            with featdb.open(bad) as st:
                assert verify(st), (trial, policy, kind)
    print(f"200 flips: {tally['caught']} caught by the read path, {tally['clean']} in bytes no read touched")
    assert tally["caught"] > 100


def test_training_stops_with_one_line_on_a_damaged_extent(stores: dict[str, Path], tmp_path: Path) -> None:
    pytest.importorskip("dgl")
    from click.testing import CliRunner
    from helpers import assert_one_error_line

    from trainer.cli import main

    with _damaged(stores["packed"], tmp_path, "l4.dat", 5000) as bad:
        args = [str(bad), "--sample-set", "tr", "--epochs", "1", "--max-batches", "1000", "-q"]
        args += ["--checkpoint", str(tmp_path / "ck.pt")]
        assert_one_error_line(CliRunner().invoke(main, args), "CorruptDataError", "l4.dat")


def test_verify_reports_a_damaged_extent_index_without_reading_past_the_file(
    stores: dict[str, Path], tmp_path: Path
) -> None:
    with _damaged(stores["packed"], tmp_path, "batches.i64", 8 * 0 + 6) as bad:  # batch 0's row count, high byte
        with featdb.open(bad) as st:
            problems = verify(st)
        assert any("batches.i64" in p for p in problems)

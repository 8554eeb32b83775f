"""Row formats: float16, bfloat16 and int8 storage of the packed tiers, decoded back when served."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import FEAT, base_rows, flip_byte, gen_dir, make_sample_set, make_synth_store
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import featdb
from featdb.errors import ConfigError, CorruptDataError
from featdb.integrity import verify
from featdb.layout.pack import pack
from featdb.layout.plan import Budgets
from featdb.rowformat import ColumnStats, RowFormat
from featdb.sampling.sampleset import SampleSet
from featdb.serve.reader import LayoutReader
from featdb.store import Store

FLOAT32_MAX = float(np.finfo(np.float32).max)
BF16_INF = (2 - 2.0**-8) * 2.0**127


def roundtrip(fmt: RowFormat, x: np.ndarray) -> np.ndarray:
    out = np.empty_like(x)
    fmt.decode(fmt.encode(x.view(np.uint8).reshape(len(x), -1)), out)
    return out


def within_bound(name: str, x: np.ndarray, got: np.ndarray, step: np.ndarray | None = None) -> np.ndarray:
    """True where ``got`` is within the format's documented error bound of ``x`` (finite x)."""
    ax = np.abs(x.astype(np.float64))
    err = np.abs(got.astype(np.float64) - x)
    if name == "float16":
        return err <= np.maximum(ax * 2.0**-11, 2.0**-25)
    if name == "bfloat16":
        return err <= np.maximum(ax * 2.0**-8, 2.0**-134)
    assert step is not None
    return err <= step / 2 * (1 + 1e-5) + ax * 2.0**-23  # decoded in float32


finite32 = hnp.arrays(
    np.float32,
    hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=12),
    elements=st.floats(-FLOAT32_MAX, FLOAT32_MAX, width=32, allow_nan=False, allow_infinity=False),
)


@settings(max_examples=150, deadline=None)
@given(finite32)
def test_bfloat16_roundtrip_within_its_bound_over_float32s_whole_range(x: np.ndarray) -> None:
    fmt = RowFormat.choose("bfloat16", np.float32, x.shape[1])
    got = roundtrip(fmt, x)
    big = np.abs(x) >= BF16_INF  # from halfway past bfloat16's largest finite value: rounds to infinity
    assert within_bound("bfloat16", x[~big], got[~big]).all()
    assert np.isinf(got[big]).all() and (np.sign(got[big]) == np.sign(x[big])).all()


@settings(max_examples=150, deadline=None)
@given(
    hnp.arrays(
        np.float32,
        hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=12),
        elements=st.floats(-65504, 65504, width=32, allow_nan=False),
    )
)
def test_float16_roundtrip_within_its_bound(x: np.ndarray) -> None:
    fmt = RowFormat.choose("float16", np.float32, x.shape[1], ColumnStats.of([x], x.shape[1]))
    assert within_bound("float16", x, roundtrip(fmt, x)).all()


@settings(max_examples=150, deadline=None)
@given(finite32.filter(lambda a: np.abs(a).max() <= FLOAT32_MAX / 4))
def test_int8_roundtrip_within_half_a_step_per_column(x: np.ndarray) -> None:
    stats = ColumnStats.of([x[: len(x) // 2], x[len(x) // 2 :]], x.shape[1])
    fmt = RowFormat.choose("int8", np.float32, x.shape[1], stats)
    got = roundtrip(fmt, x)
    assert fmt.scales is not None
    assert within_bound("int8", x, got, fmt.scales[1].astype(np.float64)).all()


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from(["float16", "bfloat16", "int8"]),
    st.integers(1, 3000),
    st.integers(1, 40),
    st.integers(0, 2),
    st.sampled_from([64, 4096, 1 << 20]),
)
def test_decode_forward_decodes_rows_stored_in_the_tail_of_the_buffer_they_are_decoded_into(
    name: str, n: int, dim: int, slack: int, chunk: int
) -> None:
    """A batch's stored rows sit in the tail of its buffer and are decoded over it, front to back."""
    x = np.random.default_rng(n * 41 + dim).normal(size=(n, dim)).astype(np.float32)
    fmt = RowFormat.choose(name, np.float32, dim, ColumnStats.of([x], dim))
    raw = fmt.encode(x.view(np.uint8).reshape(n, -1))
    want = np.empty_like(x)
    fmt.decode(raw, want)
    rb = 4 * dim
    at = n * (rb - fmt.row_bytes) + slack  # as close behind as the reader places them, or a little more
    buf = np.zeros(at + n * fmt.row_bytes, dtype=np.uint8)
    buf[at:] = raw.reshape(-1)
    stage = buf[at:].reshape(n, fmt.row_bytes)
    fmt.decode_forward(stage, buf[: n * rb].reshape(n, rb), chunk_bytes=chunk)
    np.testing.assert_array_equal(buf[: n * rb].view(np.float32).reshape(n, dim), want)


def test_float16_decodes_alike_with_and_without_torch_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    """float16 rows decode through torch when the process has loaded it (faster), else numpy: same values."""
    pytest.importorskip("torch")
    x = np.random.default_rng(3).normal(scale=1e3, size=(500, 24)).astype(np.float32)
    x[0, :6] = [np.nan, np.inf, -np.inf, 1e-7, -0.0, 65504]
    fmt = RowFormat.choose("float16", np.float32, 24)
    raw = fmt.encode(x.view(np.uint8).reshape(len(x), -1))
    with_torch = np.empty_like(x)
    fmt.decode(raw, with_torch)
    monkeypatch.setitem(sys.modules, "torch", None)
    without = np.empty_like(x)
    fmt.decode(raw, without)
    np.testing.assert_array_equal(with_torch, without)
    assert np.isnan(without[0, 0]) and np.signbit(without[0, 4])


def test_int8_decodes_alike_compiled_and_with_numpy(monkeypatch: pytest.MonkeyPatch) -> None:
    """int8 rows decode through the numba kernel when numba is installed, else numpy: the same values."""
    pytest.importorskip("numba")
    from featdb import rowformat

    x = np.random.default_rng(4).normal(scale=50, size=(700, 33)).astype(np.float32)
    fmt = RowFormat.choose("int8", np.float32, 33, ColumnStats.of([x], 33))
    raw = fmt.encode(x.view(np.uint8).reshape(len(x), -1))
    compiled = np.empty_like(x)
    fmt.decode(raw, compiled)
    assert rowformat._int8_kernel() is not None
    monkeypatch.setattr(rowformat, "_int8_kernel", lambda: None)
    plain = np.empty_like(x)
    fmt.decode(raw, plain)
    np.testing.assert_array_equal(compiled, plain)


@pytest.mark.parametrize("name", ["float16", "bfloat16"])
def test_float_formats_keep_nan_and_infinities(name: str) -> None:
    x = np.array([[np.nan, np.inf, -np.inf, -0.0, 1.5]], dtype=np.float32)
    got = roundtrip(RowFormat.choose(name, np.float32, 5), x)
    assert np.isnan(got[0, 0]) and got[0, 1] == np.inf and got[0, 2] == -np.inf
    assert got[0, 3] == 0 and np.signbit(got[0, 3]) and got[0, 4] == 1.5


def test_int8_refuses_nonfinite_and_float16_refuses_values_past_its_range() -> None:
    x = np.array([[np.nan, 1.0], [2.0, np.inf]], dtype=np.float32)
    with pytest.raises(ConfigError, match="2 NaN or infinite values"):
        RowFormat.choose("int8", np.float32, 2, ColumnStats.of([x], 2))
    with pytest.raises(ConfigError, match="bfloat16"):
        RowFormat.choose("int8", np.float32, 1, ColumnStats.of([np.array([[1e38]], np.float32)], 1))
    with pytest.raises(ConfigError, match="bfloat16"):
        RowFormat.choose("float16", np.float32, 2, ColumnStats.of([np.array([[7e4, 0]], np.float32)], 2))
    with pytest.raises(ConfigError, match="only float tables"):
        RowFormat.choose("float16", np.int64, 2)
    with pytest.raises(ConfigError, match="one of"):
        RowFormat.choose("float8", np.float32, 2)


def test_a_constant_column_decodes_exactly() -> None:
    x = np.full((5, 3), 0.25, dtype=np.float32)
    x[:, 1] = np.arange(5)
    got = roundtrip(RowFormat.choose("int8", np.float32, 3, ColumnStats.of([x], 3)), x)
    np.testing.assert_array_equal(got[:, [0, 2]], x[:, [0, 2]])


# -- packed and served ------------------------------------------------------------------


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("rowfmt") / "s"
    st = make_synth_store(path, nodes=3000, dim=16)
    make_sample_set(st)
    st.close()
    return path


def _pack(st: Store, fmt: str | None, **kw: object) -> dict:
    budgets = Budgets(device_cache=kw.pop("device_cache", 4096), host_cache=kw.pop("host_cache", 16 << 10), **kw)
    return pack(st, "tr", FEAT, budgets, memory_budget=64 << 20, row_format=fmt)


def _served(st: Store, tight: bool | None = None) -> tuple[float, dict, int]:
    """The largest error of every batch's served rows against the base table, the stats and the batches
    (``tight``: whether the reader should decode in place, over the rows' own buffer)."""
    want = base_rows(st)
    err = 0.0
    with LayoutReader(st, device="cpu") as r, SampleSet(st, "tr") as ss:
        assert tight is None or r._tight == tight
        r.attach(ss)
        for b in range(r.num_batches):
            with r.read_batch(b) as br:
                assert br.rows.dtype == np.float32
                ids = br.input_ids
                err = max(err, float(np.abs(br.rows - want[ids[: len(br.rows)]]).max(initial=0)))
        got = r.read(np.arange(0, len(want), 5))
        err = max(err, float(np.abs(got - want[::5]).max()))
        return err, r.stats.as_dict(), r.num_batches


@pytest.mark.parametrize(
    ("fmt", "bound", "stored"),
    [(None, 0.0, 64), ("float32", 0.0, 64), ("float16", 2e-3, 32), ("bfloat16", 2e-2, 32), ("int8", 0.05, 16)],
)
@pytest.mark.parametrize("cap", [None, 1.0, 0.0])
def test_every_format_serves_rows_within_its_bound(
    small: Path, tmp_path: Path, fmt: str | None, bound: float, stored: int, cap: float | None
) -> None:
    with featdb.open(small, mode="a") as st:
        doc = _pack(st, fmt, max_blowup=cap)
        assert doc["row_format"] == (fmt or "float32") and doc["stored_row_bytes"] == stored
        assert verify(st) == []
        err, stats, _ = _served(st, tight=fmt in ("float16", "bfloat16", "int8") and cap != 0.0)
    assert err <= bound
    for tier in ("l1", "l2", "l3", "l4"):
        t = stats["tiers"][tier]
        assert t["bytes"] == t["rows"] * 64 and t["stored_bytes"] == t["rows"] * stored
    assert stats["tiers"]["base"]["stored_bytes"] == stats["tiers"]["base"]["rows"] * 64


@pytest.mark.parametrize("fmt", ["float16", "bfloat16", "int8"])
@pytest.mark.parametrize("cap", [None, 0.0])
def test_out_dtype_stored_serves_the_stored_rows_which_decode_to_the_served_ones(
    small: Path, fmt: str, cap: float | None
) -> None:
    with featdb.open(small, mode="a") as st:
        _pack(st, fmt, max_blowup=cap)
        with LayoutReader(st, device="cpu") as r, LayoutReader(st, device="cpu", out_dtype="stored") as raw:
            assert raw.serve_stored and not r.serve_stored
            for b in range(r.num_batches):
                with r.read_batch(b) as want, raw.read_batch(b) as got:
                    assert got.rows.dtype == raw.fmt.stored and got.rows.shape == want.rows.shape
                    decoded = np.empty_like(want.rows)
                    raw.fmt.decode(got.rows.view(np.uint8).reshape(len(got.rows), -1), decoded)
                    # rows served from the base table come exact by default and encoded when stored
                    np.testing.assert_array_equal(decoded, roundtrip(raw.fmt, want.rows))
                    np.testing.assert_array_equal(got.order, want.order)
            assert (r.stats.as_dict()["tiers"]["base"]["rows"] > 0) == (cap == 0.0)
        with pytest.raises(ConfigError, match="out_dtype"):
            LayoutReader(st, out_dtype="int4")


def test_a_narrower_format_is_decoded_in_its_rows_own_buffer(small: Path) -> None:
    """Batch buffers are as large as float32's (stored rows are read into their tail and decoded over it),
    so a narrower format leaves the segment cache all the memory float32 would."""
    sizes = {}
    with featdb.open(small, mode="a") as st:
        for fmt in ("float32", "float16", "int8"):
            _pack(st, fmt, max_blowup=1.0)
            with LayoutReader(st, device="cpu") as r:
                sizes[fmt] = r.pool.nbytes
                assert r._tight == (fmt != "float32")
    assert sizes["float16"] == sizes["int8"] == sizes["float32"]


def test_the_cap_counts_bytes_so_a_narrower_format_stores_more_rows(small: Path) -> None:
    with featdb.open(small, mode="a") as st:
        wide = _pack(st, None, max_blowup=1.0)
        narrow = _pack(st, "int8", max_blowup=1.0)
    for doc in (wide, narrow):
        assert doc["predictions"]["blowup_bytes"] <= 1.0
    assert narrow["blowup"] > wide["blowup"]
    assert narrow["predictions"]["blowup_bytes"] == pytest.approx(narrow["blowup"] / 4, abs=1e-3)


def test_dry_run_predicts_what_the_pack_writes_in_each_format(small: Path) -> None:
    with featdb.open(small, mode="a") as st:
        for fmt in ("float16", "int8"):
            budgets = Budgets(0, 16 << 10, None)
            dry = pack(st, "tr", FEAT, budgets, 64 << 20, dry_run=True, row_format=fmt)
            real = pack(st, "tr", FEAT, budgets, 64 << 20, row_format=fmt)
            for k in ("blowup", "predicted_amplification", "row_format", "stored_row_bytes"):
                assert dry[k] == real[k], k
            assert dry["predictions"]["l3_l4_bytes"] == real["predictions"]["l3_l4_bytes"]
            assert real["predictions"]["l3_l4_bytes"] == real["predictions"]["stored_rows"] * dry["stored_row_bytes"]


def test_int8_scales_are_checksummed_by_verify_and_the_reader(small: Path, tmp_path: Path) -> None:
    import shutil

    path = tmp_path / "copy"
    shutil.copytree(small, path)
    with featdb.open(path, mode="a") as st:
        _pack(st, "int8")
        flip_byte(gen_dir(st) / "scales.f32", 5)
        assert any("scales.f32" in p for p in verify(st))
        with pytest.raises(CorruptDataError, match=r"scales\.f32"):
            LayoutReader(st)


def test_pack_refuses_int8_for_a_table_with_nan_and_writes_nothing(tmp_path: Path) -> None:
    from featdb.ingest.features import ingest_npy

    st = make_synth_store(tmp_path / "nan", nodes=500, dim=8)
    make_sample_set(st)
    x = np.ones((500, 8), dtype=np.float32)
    x[3, 2] = np.nan
    np.save(tmp_path / "x.npy", x)
    ingest_npy(st, "node/_/x", tmp_path / "x.npy", allow_nonfinite=True)
    before = st.catalog.get("layout/current")
    with pytest.raises(ConfigError, match="NaN or infinite"):
        pack(st, "tr", "node/_/x", Budgets(0, 0, None), 64 << 20, row_format="int8")
    assert st.catalog.get("layout/current") == before
    doc = pack(st, "tr", "node/_/x", Budgets(0, 1024, None), 64 << 20, row_format="bfloat16")
    assert doc["row_format"] == "bfloat16"
    with LayoutReader(st, device="cpu", table="node/_/x") as r:
        assert np.isnan(r.read(np.array([3]))[0, 2])
    st.close()

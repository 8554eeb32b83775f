"""Builders shared by the sampling, layout, serving and CLI tests (not fixtures: plain functions).

Stores are built the way users build them (``synth`` or ``ingest_graph``, then
``sample``, then ``pack``), kept small so a whole suite stays fast.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

import featdb
from featdb.ingest.synth import synth
from featdb.inspect import info as describe
from featdb.layout.document import SEG_COLS
from featdb.layout.pack import pack
from featdb.layout.plan import Budgets
from featdb.sampling.offline import SampleConfig, sample
from featdb.store import Store

FEAT = "node/_/feat"
# the fields a dry run predicts and a real pack must then report identically
PLAN_KEYS = ("segment_len", "l1_rows", "l2_rows", "l3_rows", "l4_rows", "blowup", "predicted_amplification")


def make_synth_store(
    path: Path,
    nodes: int = 3000,
    dim: int = 16,
    dtype: str = "float32",
    avg_degree: float = 6.0,
    classes: int = 4,
    seed: int = 0,
    train_frac: float = 0.3,
) -> Store:
    """A new store at ``path`` holding a synthetic graph and its feature table ``FEAT``."""
    st = featdb.create(path)
    synth(
        st,
        nodes,
        avg_degree,
        dim,
        classes,
        seed=seed,
        train_frac=train_frac,
        dtype=dtype,
        community_size=200,
    )
    return st


def make_sample_set(
    st: Store,
    name: str = "tr",
    fanouts: tuple[int, ...] = (4, 4),
    batch_size: int = 128,
    epochs: int = 2,
    seed: int = 0,
    split: str = "train",
) -> dict[str, Any]:
    with torch_threads(1):
        return sample(st, SampleConfig(name, fanouts, batch_size, epochs, seed, split))


def make_layout(
    st: Store,
    sample_set: str = "tr",
    table: str = FEAT,
    policy: str = "full",
    device_cache: int = 0,
    host_cache: int = 0,
    max_blowup: float | None = None,
    seed: int = 0,
    memory_budget: int = 64 << 20,
) -> dict[str, Any]:
    return pack(
        st,
        sample_set,
        table,
        Budgets(device_cache, host_cache, max_blowup, policy, seed),
        memory_budget=memory_budget,
    )


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run DGL's sampler on ``n`` intra-op threads (with more than one it is not reproducible)."""
    try:
        import torch
    except ImportError:  # pragma: no cover - the GPU machine has torch; others skip earlier
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def base_rows(st: Store, table: str = FEAT) -> np.ndarray:
    return st.read_all(table)


def as_bytes(a: np.ndarray) -> np.ndarray:
    """Rows as raw bytes, so equality is bit-for-bit (NaN, -0.0 and all)."""
    a = np.ascontiguousarray(a)
    return a.view(np.uint8).reshape(len(a), -1)


def assert_rows_equal(got: np.ndarray, want: np.ndarray) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape, (
        got.dtype,
        got.shape,
        want.dtype,
        want.shape,
    )
    np.testing.assert_array_equal(as_bytes(got), as_bytes(want))


def flip_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))
        f.flush()
        os.fsync(f.fileno())


def gen_dir(st: Store, gen_id: str | None = None) -> Path:
    gid = gen_id or st.catalog.get("layout/current")
    assert gid is not None
    return st.root / "gens" / gid


def tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` (but the LMDB lock file) -> sha256 of its bytes."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != "lock.mdb":
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
        elif p.is_dir():
            out[str(p.relative_to(root)) + "/"] = "dir"
    return out


def catalog_state(st: Store) -> dict[str, Any]:
    """What the catalog says, for before/after comparisons (describe + every file record)."""
    return {
        "describe": describe(st),
        "files": st.files(),
        "current": st.catalog.get("layout/current"),
    }


def realised_blowup(gdir: Path, num_nodes: int) -> float:
    batches = np.fromfile(gdir / "batches.i64", dtype="<i8").reshape(-1, 8)
    segs = np.fromfile(gdir / "segments.i64", dtype="<i8").reshape(-1, SEG_COLS)
    copies = np.fromfile(gdir / "copies.i64", dtype="<i8").reshape(-1, 3)
    return float(batches[:, 0].sum() + segs[:, 3].sum() + copies[:, 1].sum()) / num_nodes


@contextlib.contextmanager
def leaked_files() -> Iterator[list[str]]:
    """Collects the files left open (ResourceWarning at garbage collection) inside the block.

    The list fills when the block exits; the warnings are swallowed, not raised.
    """
    import gc
    import warnings

    leaks: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        try:
            yield leaks
        finally:
            gc.collect()
    leaks += [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]


def assert_one_error_line(result: Any, *fragments: str) -> None:
    """A failed command says why in one readable line, with no traceback."""
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1, result.output
    for f in fragments:
        assert f in errors[0], (f, errors[0])
    assert isinstance(result.exception, SystemExit)


@contextlib.contextmanager
def only_candidates(*kinds: str) -> Iterator[None]:
    """Plans with a cap choose among these candidates only ("shared", "copies", "mixed")."""
    from unittest import mock

    from featdb.layout import budget

    with contextlib.ExitStack() as stack:
        for kind, fn in (("shared", "_shared"), ("copies", "_copied"), ("mixed", "_mixed")):
            if kind not in kinds:
                stack.enter_context(mock.patch.object(budget, fn, lambda *a: None))
        yield


def shared_only() -> Any:
    """Plans with a cap choose among shared L3 extents only (no copies, no blocks)."""
    return only_candidates("shared")

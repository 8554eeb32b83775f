"""Ingest feature tables from the files users hold: ``.npy`` and raw row-major binary.

Sources are read in chunks sized by the memory budget, never loaded whole:
``.npy`` files are parsed for their header and streamed with plain reads (a
memory map would leave every touched page resident in this process).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import InvalidInputError, SchemaMismatchError
from ..progress import Progress
from ..store import Store
from ..tables import Schema, parse_dtype

DEFAULT_BUDGET = 256 << 20


def chunk_rows(row_bytes: int, memory_budget: int) -> int:
    """Rows per chunk so that a chunk and its converted copy fit in the budget."""
    return max(1, min(1 << 22, memory_budget // (3 * max(1, row_bytes))))


def npy_layout(path: Path) -> tuple[np.dtype[Any], tuple[int, ...], bool, int]:
    """(dtype, shape, fortran_order, data offset) read from a .npy header."""
    try:
        with open(path, "rb") as f:
            fmt: Any = np.lib.format  # untyped in numpy's stubs
            version = fmt.read_magic(f)
            reader = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}.get(version)
            if reader is None:
                raise InvalidInputError(f"{path}: unsupported .npy version {version}")
            shape, fortran, dtype = reader(f)
            return np.dtype(dtype), tuple(shape), bool(fortran), f.tell()
    except (ValueError, OSError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise InvalidInputError(f"{path}: no such file") from exc
        raise InvalidInputError(f"{path}: not a readable .npy file ({exc})") from exc


def _stream(
    path: Path, offset: int, dtype: np.dtype[Any], rows: int, dim: int, per_chunk: int
) -> Iterator[NDArray[Any]]:
    row_bytes = dtype.itemsize * dim
    with open(path, "rb", buffering=0) as f:
        f.seek(offset)
        buf = np.empty(per_chunk * dim, dtype=dtype)
        done = 0
        while done < rows:
            n = min(per_chunk, rows - done)
            view = buf[: n * dim].data.cast("B")
            got = f.readinto(view)
            if got != n * row_bytes:
                raise InvalidInputError(f"{path}: file ends early at row {done + (got or 0) // row_bytes}")
            os.posix_fadvise(f.fileno(), offset + done * row_bytes, n * row_bytes, os.POSIX_FADV_DONTNEED)
            yield buf[: n * dim].reshape(n, dim)
            done += n


def ingest_npy(
    store: Store,
    key: str,
    path: Path,
    memory_budget: int = DEFAULT_BUDGET,
    dtype: str | None = None,
    progress: Progress = None,
    replace: bool = False,
    allow_nonfinite: bool = False,
) -> Schema:
    src_dtype, shape, fortran, offset = npy_layout(path)
    if len(shape) not in (1, 2):
        raise SchemaMismatchError(f"{path}: expected a 1-D or 2-D array, got shape {shape}")
    rows, dim = shape[0], (shape[1] if len(shape) == 2 else 1)
    if rows == 0 or dim == 0:
        raise SchemaMismatchError(f"{path}: the array is empty (shape {shape}); a table needs rows and columns")
    parse_dtype(src_dtype, f"{path}: element type")
    schema = Schema(parse_dtype(dtype or src_dtype, "--as-dtype").name, rows, dim)
    per = chunk_rows(src_dtype.itemsize * dim, memory_budget)
    if fortran:
        mm = np.load(path, mmap_mode="r")
        chunks: Iterator[NDArray[Any]] = (
            np.ascontiguousarray(mm[i : i + per]).reshape(-1, dim) for i in range(0, rows, per)
        )
    else:
        chunks = _stream(path, offset, src_dtype, rows, dim, per)
    return _write(store, key, schema, chunks, progress, replace, allow_nonfinite, path)


def ingest_raw(
    store: Store,
    key: str,
    path: Path,
    dtype: str,
    shape: tuple[int, int],
    memory_budget: int = DEFAULT_BUDGET,
    progress: Progress = None,
    replace: bool = False,
    as_dtype: str | None = None,
    allow_nonfinite: bool = False,
) -> Schema:
    dt = parse_dtype(dtype, "--dtype")
    rows, dim = shape
    if rows < 1 or dim < 1:
        raise SchemaMismatchError(f"{path}: shape {rows}x{dim} is empty; a table needs rows and columns")
    size = Path(path).stat().st_size if Path(path).exists() else None
    if size is None:
        raise InvalidInputError(f"{path}: no such file")
    if size != rows * dim * dt.itemsize:
        raise SchemaMismatchError(
            f"{path}: {size} bytes, but shape {rows}x{dim} of {dt.name} needs {rows * dim * dt.itemsize}"
        )
    schema = Schema(parse_dtype(as_dtype or dt, "--as-dtype").name, rows, dim)
    chunks = _stream(Path(path), 0, dt, rows, dim, chunk_rows(dt.itemsize * dim, memory_budget))
    return _write(store, key, schema, chunks, progress, replace, allow_nonfinite, Path(path))


def ingest(
    store: Store,
    key: str,
    source: str | Path,
    dtype: str | None = None,
    shape: tuple[int, int] | None = None,
    memory_budget: int = DEFAULT_BUDGET,
    progress: Progress = None,
    replace: bool = False,
    as_dtype: str | None = None,
    allow_nonfinite: bool = False,
) -> Schema:
    """Ingest ``source`` as table ``key``.

    A ``.npy`` file describes itself; raw row-major binary needs its element
    ``dtype`` and ``shape`` (rows, dim). ``as_dtype`` converts while ingesting.
    Rows holding NaN or infinity are refused (nothing is written) unless
    ``allow_nonfinite``.
    """
    path = Path(source)
    if path.suffix == ".npy" and shape is None and dtype is None:
        return ingest_npy(store, key, path, memory_budget, as_dtype, progress, replace, allow_nonfinite)
    if dtype is None or shape is None:
        raise InvalidInputError(f"{path}: raw binary needs both --dtype and --shape ROWS,DIM")
    return ingest_raw(store, key, path, dtype, shape, memory_budget, progress, replace, as_dtype, allow_nonfinite)


def _write(
    store: Store,
    key: str,
    schema: Schema,
    chunks: Iterator[NDArray[Any]],
    progress: Progress,
    replace: bool,
    allow_nonfinite: bool,
    source: Path,
) -> Schema:
    with store.table_writer(key, schema, replace=replace) as w:
        done = 0
        for chunk in chunks:
            if not allow_nonfinite:
                check_finite(chunk, done, source)
            w.write(chunk)
            done += len(chunk)
            if progress:
                progress(len(chunk))
    return schema


def check_finite(rows: NDArray[Any], first_row: int, source: Path | str) -> None:
    """:class:`InvalidInputError` naming the first row of ``rows`` (a chunk starting at row ``first_row``
    of ``source``) that holds a NaN or an infinity; integer rows always pass."""
    if rows.dtype.kind not in "fc":
        return
    finite = np.isfinite(rows).reshape(len(rows), -1).all(axis=1)
    if not finite.all():
        bad = first_row + int(np.argmin(finite))
        raise InvalidInputError(
            f"{source}: row {bad} holds NaN or infinite values; fix the data or pass --allow-nonfinite to accept it"
        )

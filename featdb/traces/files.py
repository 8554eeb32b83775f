"""Reading a trace the user holds: ``.npz`` (arrays ``ids`` and ``offsets``) or a folder of ``.npy`` files.

Both are streamed one batch at a time: the offsets (one int per batch) are read
whole, the ids in slices as the batches are written, so a trace larger than
memory can be added. A folder's files are read in name order (zero-pad numbers:
``batch-00001.npy``), each memory-mapped.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
from numpy.typing import NDArray

from ..errors import InvalidInputError

SOURCE_FORMS = "an .npz with arrays 'ids' and 'offsets', or a folder of .npy files (one per batch)"


def open_trace_source(path: str | Path) -> tuple[int, Iterator[NDArray[Any]]]:
    """(number of batches, an iterator over each batch's ids) for a trace file or folder."""
    p = Path(path)
    if p.is_dir():
        return _folder(p)
    if p.is_file() and p.suffix == ".npz":
        return _npz(p)
    if not p.exists():
        raise InvalidInputError(f"{p}: no such file or folder (a trace is {SOURCE_FORMS})")
    raise InvalidInputError(f"{p}: not a trace (a trace is {SOURCE_FORMS})")


def _folder(p: Path) -> tuple[int, Iterator[NDArray[Any]]]:
    files = sorted(f for f in p.iterdir() if f.suffix == ".npy")
    if not files:
        raise InvalidInputError(f"{p}: the folder holds no .npy files (a trace is {SOURCE_FORMS})")

    def batches() -> Iterator[NDArray[Any]]:
        for f in files:
            try:
                arr = np.load(f, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise InvalidInputError(f"{f}: not a readable .npy file ({exc})") from None
            yield _ids(arr, str(f))

    return len(files), batches()


def _npz(p: Path) -> tuple[int, Iterator[NDArray[Any]]]:
    try:
        with zipfile.ZipFile(p) as z:
            names = set(z.namelist())
            missing = [a for a in ("ids", "offsets") if f"{a}.npy" not in names]
            if missing:
                raise InvalidInputError(f"{p}: no array {', '.join(missing)} (a trace is {SOURCE_FORMS})")
            with z.open("offsets.npy") as f:
                offsets = np.load(f, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        if isinstance(exc, InvalidInputError):
            raise
        raise InvalidInputError(f"{p}: not a readable .npz file ({exc})") from None
    offsets = _offsets(offsets, str(p))
    return len(offsets) - 1, _npz_batches(p, offsets)


def _offsets(arr: Any, where: str) -> NDArray[Any]:
    offsets = np.asarray(arr)
    if offsets.ndim != 1 or len(offsets) < 2 or not np.issubdtype(offsets.dtype, np.integer):
        raise InvalidInputError(f"{where}: 'offsets' must be a 1-D integer array of batches + 1 entries")
    offsets = offsets.astype(np.int64)
    if offsets[0] != 0 or (np.diff(offsets) < 0).any():
        raise InvalidInputError(f"{where}: 'offsets' must start at 0 and never decrease")
    return offsets


def _npz_batches(p: Path, offsets: NDArray[Any]) -> Iterator[NDArray[Any]]:
    with zipfile.ZipFile(p) as z, z.open("ids.npy") as f:
        shape, dtype = _npy_header(f, str(p))
        if len(shape) != 1 or shape[0] != int(offsets[-1]):
            raise InvalidInputError(
                f"{p}: 'ids' has shape {shape}, but 'offsets' ends at {int(offsets[-1])} (1-D, that long)"
            )
        for lo, hi in zip(offsets[:-1].tolist(), offsets[1:].tolist(), strict=True):
            n = (hi - lo) * dtype.itemsize
            raw = f.read(n)
            if len(raw) != n:
                raise InvalidInputError(f"{p}: 'ids' ends early, at batch offset {lo}")
            yield _ids(np.frombuffer(raw, dtype=dtype), str(p))


def _npy_header(f: IO[bytes], where: str) -> tuple[tuple[int, ...], np.dtype[Any]]:
    try:
        version = np.lib.format.read_magic(f)  # type: ignore[no-untyped-call]
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _fortran, dtype = read(f)  # type: ignore[no-untyped-call]
    except ValueError as exc:
        raise InvalidInputError(f"{where}: 'ids' is not a readable array ({exc})") from None
    if dtype.hasobject:
        raise InvalidInputError(f"{where}: 'ids' holds Python objects, not integers")
    return tuple(shape), np.dtype(dtype)


def _ids(arr: NDArray[Any], where: str) -> NDArray[Any]:
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise InvalidInputError(f"{where}: a batch must be a 1-D integer array, got shape {arr.shape} {arr.dtype}")
    return arr

"""Copying rows between buffers: by byte position out of a read buffer (:func:`gather_rows`) and by
index out of a 2-D array (:func:`take_rows`), each straight into the caller's output."""

from __future__ import annotations

import mmap
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .errors import CorruptDataError


def gather_rows(buf: mmap.mmap | memoryview, pos: NDArray[Any], row_bytes: int, out: NDArray[Any]) -> None:
    """Copy ``row_bytes`` at each byte position of ``buf`` into the rows of ``out`` (uint8 2-D).

    When every position is a multiple of the row size (rows on a grid, as when
    ``row_bytes`` divides the page) they are one ``np.take`` from the buffer seen
    as rows, straight into ``out``. Otherwise they are gathered through an
    overlapping strided view in the widest word that divides every position and
    the row size (``np.take`` would first copy that whole view, so fancy indexing
    is used instead, through a temporary).
    """
    if len(pos) == 0:
        return
    if not (pos % row_bytes).any():  # every row on a row boundary: one take from the rows view, no temporary
        rows = np.frombuffer(buf, dtype=np.uint8, count=len(buf) // row_bytes * row_bytes).reshape(-1, row_bytes)
        np.take(rows, pos // row_bytes, axis=0, out=out, mode="clip")
        return
    word = 8
    low_bits = int(np.bitwise_or.reduce(pos)) | row_bytes
    while word > 1 and low_bits & (word - 1):
        word //= 2
    u = np.frombuffer(buf, dtype=np.dtype(f"u{word}"))
    n = row_bytes // word
    windows = np.lib.stride_tricks.as_strided(u, shape=(len(u) - n + 1, n), strides=(word, word), writeable=False)
    out.view(np.dtype(f"u{word}"))[...] = windows[pos // word]


def take_rows(src: NDArray[Any], rows: NDArray[Any], out: NDArray[Any]) -> None:
    """``out[i] = src[rows[i]]`` for 2-D ``src``; ``CorruptDataError`` if a row is out of range.

    ``np.take`` with ``out`` and its default ``mode='raise'`` gathers into a
    temporary and copies that into ``out`` (so a bad index leaves ``out``
    untouched): twice the memory traffic. The bounds are checked here instead,
    once, and the rows are gathered straight into ``out``.
    """
    if len(rows) == 0:
        return
    if int(rows.min()) < 0 or int(rows.max()) >= len(src):
        raise CorruptDataError(f"row index outside [0, {len(src)}): {int(rows.min())}..{int(rows.max())}")
    np.take(src, rows, axis=0, out=out, mode="clip")


__all__ = ["gather_rows", "take_rows"]

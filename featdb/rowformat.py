"""Row formats: how the packed tiers store a table's rows (float32, float16, bfloat16, int8).

The base table always keeps the exact rows; a layout may store its copies (the
L1/L2 tiers, L3/L4 extents, table copies) in a narrower format, decoded back to
the table's dtype when served. Each format's error bound and its treatment of
non-finite values (what ``pack`` refuses is checked in :func:`column_stats`'s
pass, before anything is written):

- ``float32`` / ``float16`` (IEEE, round to nearest even): relative error at
  most 2**-24 / 2**-11 for normal values (float16: |x| from 6.1e-5 to 65504;
  below that, absolute error at most 2**-25). NaN and infinities are kept.
  A finite value beyond float16's range would become infinite: refused.
- ``bfloat16`` (the top 16 bits of float32, round to nearest even): relative
  error at most 2**-8 (absolute 2**-134 for subnormals), float32's range (from
  3.3962e38, halfway past bfloat16's largest, values round to infinity); NaN
  and infinities are kept.
- ``int8``: per-column affine, ``x = lo[c] + (q + 128) * step[c]`` with
  ``step[c] = (hi[c] - lo[c]) / 255`` over the column's values; absolute error
  at most ``step[c] / 2``. Per column, not per row: features are usually
  standardised per column, and a row scale would add 8 bytes to every row (the
  measured error of both is in docs/row-formats.md). Tables with NaN or
  infinities, or values beyond +-8.5e37 (a quarter of float32's range, so
  decoding stays finite), are refused.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .errors import ConfigError, CorruptDataError

FORMATS = ("float32", "float16", "bfloat16", "int8")
_STORED: dict[str, np.dtype[Any]] = {
    "float32": np.dtype("<f4"),
    "float16": np.dtype("<f2"),
    "bfloat16": np.dtype("<u2"),
    "int8": np.dtype("i1"),
}
FLOAT16_MAX = 65504.0
INT8_MAX_ABS = float(np.finfo(np.float32).max) / 4  # lo + 255 steps stays finite in float32


@dataclass(frozen=True)
class ColumnStats:
    """Per-column minimum and maximum over the finite values, and the count of NaN/infinite ones."""

    lo: NDArray[Any]
    hi: NDArray[Any]
    nonfinite: int

    @staticmethod
    def of(chunks: Iterable[NDArray[Any]], dim: int) -> ColumnStats:
        lo = np.full(dim, np.inf, dtype=np.float64)
        hi = np.full(dim, -np.inf, dtype=np.float64)
        bad = 0
        for c in chunks:
            fin = np.isfinite(c)
            if not fin.all():
                bad += int((~fin).sum())
                lo = np.minimum(lo, np.min(c, axis=0, initial=np.inf, where=fin))
                hi = np.maximum(hi, np.max(c, axis=0, initial=-np.inf, where=fin))
            elif len(c):
                lo = np.minimum(lo, c.min(axis=0))
                hi = np.maximum(hi, c.max(axis=0))
        lo[~np.isfinite(lo)] = 0.0  # a column with no finite value
        hi[~np.isfinite(hi)] = 0.0
        return ColumnStats(lo, hi, bad)


class RowFormat:
    """Encodes rows of a table (``dtype``, ``dim``) into the stored format and decodes them back."""

    def __init__(self, name: str, dtype: Any, dim: int, scales: NDArray[Any] | None = None) -> None:
        self.name, self.dtype, self.dim = name, np.dtype(dtype), int(dim)
        if name == self.dtype.name:  # the table's own format, whatever its dtype
            self.stored = self.dtype
        elif name in FORMATS:
            self.stored = _STORED[name]
        else:
            raise ConfigError(f"row format {name!r}: one of {', '.join(FORMATS)}")
        self.identity = self.stored == self.dtype and name != "bfloat16"
        if not self.identity and self.dtype.kind != "f":
            raise ConfigError(f"row format {name}: the table's rows are {self.dtype}, only float tables convert")
        self.row_bytes = self.stored.itemsize * self.dim
        self.scales = None  # int8's (lo, step) per column, as the generation stores them
        self._lo = self._step = self._offset = np.zeros(self.dim, dtype=np.float32)
        if name == "int8" and not self.identity:
            if scales is None or scales.shape != (2, self.dim) or not np.isfinite(scales).all():
                raise CorruptDataError(f"int8 rows need 2 x {self.dim} finite scales (lo, step)")
            self.scales = np.ascontiguousarray(scales, dtype=np.float32)
            self._lo, self._step = self.scales
            self._offset = self._lo + np.float32(128) * self._step

    @staticmethod
    def native(dtype: Any, dim: int) -> RowFormat:
        """The table's own format (no conversion); float64 and integer tables included."""
        return RowFormat(np.dtype(dtype).name, dtype, dim)

    @staticmethod
    def choose(name: str | None, dtype: Any, dim: int, stats: ColumnStats | None = None) -> RowFormat:
        """The format ``name`` (None or the table's own dtype: no conversion) for a table whose values
        ``stats`` describes; :class:`ConfigError` when the format cannot hold them."""
        if name is None or name == np.dtype(dtype).name:
            return RowFormat.native(dtype, dim)
        if name not in FORMATS:
            raise ConfigError(f"row format {name!r}: one of {', '.join(FORMATS)}")
        scales = None
        if stats is not None and name == "float16" and np.abs([stats.lo, stats.hi]).max(initial=0) > FLOAT16_MAX:
            raise ConfigError(
                f"row format float16: the table holds values beyond +-{FLOAT16_MAX:g}, which float16 would make "
                "infinite: use bfloat16 (float32's range)"
            )
        if name == "int8":
            if stats is None:
                raise ConfigError("row format int8 needs the table's column ranges")
            if stats.nonfinite:
                raise ConfigError(
                    f"row format int8: the table holds {stats.nonfinite:,} NaN or infinite values, which int8 "
                    "cannot encode: use float16 or bfloat16"
                )
            if np.abs([stats.lo, stats.hi]).max(initial=0) > INT8_MAX_ABS:
                raise ConfigError(f"row format int8: the table holds values beyond +-{INT8_MAX_ABS:.3g}: use bfloat16")
            step = (stats.hi - stats.lo) / 255.0
            step[step == 0] = 1.0  # a constant column: every q is -128
            scales = np.stack([stats.lo, step]).astype(np.float32)
            short = scales[1].astype(np.float64) * 255 < stats.hi - stats.lo  # rounded down: 255 steps fall short
            scales[1, short] = np.nextafter(scales[1, short], np.float32(np.inf))
        return RowFormat(name, dtype, dim, scales)

    def serves_stored(self, out_dtype: str | None) -> bool:
        """Whether a reader asked for rows as ``out_dtype`` serves them as stored (True) or decoded to
        the table's dtype (False): None, ``"table"`` or the table's dtype decode; ``"stored"`` or the
        format's name do not (bfloat16 rows then come as their uint16 bit patterns, int8 rows as the
        codes :meth:`decode` or :meth:`decode_torch` turn back into values)."""
        if out_dtype in (None, "table", self.dtype.name):
            return False
        if out_dtype in ("stored", self.name):
            return not self.identity
        raise ConfigError(f"out_dtype {out_dtype!r}: 'table' ({self.dtype.name}) or 'stored' ({self.name})")

    @property
    def needs_stats(self) -> bool:
        return self.name in ("float16", "int8") and not self.identity

    def bound(self) -> str:
        """The documented error bound, in words (for ``info`` and the docs)."""
        return {
            "float16": "relative 2^-11 (normal range), absolute 2^-25 below 6.1e-5",
            "bfloat16": "relative 2^-8, absolute 2^-134 for subnormals",
            "int8": "absolute step/2 per column",
        }.get(self.name, "exact")

    def encode(self, rows: NDArray[Any]) -> NDArray[Any]:
        """Rows (n, row bytes of the table, uint8) -> stored rows (n, ``row_bytes``, uint8)."""
        if self.identity:
            return rows
        x = rows.view(self.dtype).reshape(len(rows), self.dim)
        if self.name == "bfloat16":
            x32 = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
            rounded = (x32 + (np.uint32(0x7FFF) + ((x32 >> np.uint32(16)) & np.uint32(1)))) >> np.uint32(16)
            nan = np.isnan(x)
            out16 = rounded.astype(np.uint16)
            if nan.any():  # keep NaN a (quiet) NaN whatever its payload
                out16[nan] = (x32[nan] >> np.uint32(16)).astype(np.uint16) | np.uint16(0x0040)
            out = out16
        elif self.name == "int8":
            q = np.rint((x.astype(np.float64) - self._lo) / self._step) - 128.0
            out = np.clip(q, -128, 127).astype(np.int8)
        else:
            out = x.astype(self.stored)
        return np.ascontiguousarray(out).view(np.uint8).reshape(len(rows), self.row_bytes)

    def encode_pieces(self, rows: NDArray[Any], piece: int = 1 << 15) -> NDArray[Any]:
        """:meth:`encode`, a piece of rows at a time (the conversion's temporaries stay small)."""
        if self.identity:
            return rows
        out = np.empty((len(rows), self.row_bytes), dtype=np.uint8)
        for i in range(0, len(rows), piece):
            out[i : i + piece] = self.encode(rows[i : i + piece])
        return out

    def decode(self, raw: NDArray[Any], out: NDArray[Any]) -> None:
        """Stored rows (n, ``row_bytes`` uint8) into ``out`` (n, dim of the table's dtype, or its uint8 view)."""
        if not len(raw):
            return
        dst = out.view(self.dtype).reshape(len(raw), self.dim)
        src = raw.view(self.stored).reshape(len(raw), self.dim)
        if self.identity:
            dst[...] = src
        elif self.name == "bfloat16":
            if self.dtype == np.float32:
                np.left_shift(src, 16, out=dst.view(np.uint32), dtype=np.uint32)
            else:
                dst[...] = np.left_shift(src, 16, dtype=np.uint32).view(np.float32)
        elif self.name == "int8":
            kernel = _int8_kernel()
            if kernel is not None and dst.dtype == np.float32 and dst.flags.writeable:
                kernel(src, self._step, self._offset, dst)  # one pass (numba, when installed)
            else:
                np.multiply(src, self._step, out=dst, casting="unsafe")  # q * step + (lo + 128 * step)
                dst += self._offset
        else:
            torch = sys.modules.get("torch")  # already loaded (the trainer): its conversion is ~4x numpy's
            if torch is not None and src.flags.writeable and dst.flags.writeable and dst.flags.c_contiguous:
                torch.from_numpy(dst).copy_(torch.from_numpy(np.ascontiguousarray(src)))
            else:
                dst[...] = src

    def decode_forward(self, raw: NDArray[Any], out: NDArray[Any], chunk_bytes: int = 1 << 20) -> None:
        """:meth:`decode` for ``raw`` lying in the tail of the buffer ``out`` fills from its head (row j
        of ``raw`` starts no earlier than row j of ``out`` ends): a chunk of rows at a time, front to back,
        through a small temporary, so every stored row is read before its bytes are overwritten."""
        if self.identity or not len(raw):
            self.decode(raw, out)
            return
        dst = out.view(self.dtype).reshape(len(raw), self.dim)
        step = max(1, chunk_bytes // (self.dim * self.dtype.itemsize))
        tmp = np.empty((min(step, len(raw)), self.dim), dtype=self.dtype)
        for lo in range(0, len(raw), step):
            hi = min(len(raw), lo + step)
            self.decode(raw[lo:hi], tmp[: hi - lo])
            dst[lo:hi] = tmp[: hi - lo]

    def decode_torch(self, t: Any) -> Any:
        """Stored rows as a torch tensor (n, ``row_bytes``, uint8; any device) -> rows of the table's dtype."""
        import torch

        want = getattr(torch, self.dtype.name)
        if self.identity:
            return t.view(want)
        if self.name == "bfloat16":
            return t.view(torch.bfloat16).to(want)
        if self.name == "int8":
            lo, step = (torch.from_numpy(s).to(t.device) for s in (self._lo, self._step))
            return ((t.view(torch.int8).to(torch.float32) + 128.0) * step + lo).to(want)
        return t.view(getattr(torch, self.stored.name)).to(want)

    def doc(self) -> dict[str, Any]:
        """What a generation document records (the scales go to their own checksummed file)."""
        return {"row_format": self.name, "stored_row_bytes": self.row_bytes}

    def __repr__(self) -> str:
        return f"RowFormat({self.name!r}, {self.dtype}, dim={self.dim})"


@functools.cache
def _int8_kernel() -> Any:
    """The compiled int8 decoder when numba is installed (the GNN extra), else None (numpy's two passes)."""
    try:
        from .rowkernels import int8_decode
    except ImportError:
        return None
    return int8_decode


def layout_format(doc: dict[str, Any], scales: NDArray[Any] | None) -> RowFormat:
    """The row format a generation document names (a layout without one stores the table's dtype)."""
    name = doc.get("row_format")
    if name is None or name == np.dtype(doc["dtype"]).name:
        return RowFormat.native(doc["dtype"], int(doc["dim"]))
    fmt = RowFormat(name, doc["dtype"], int(doc["dim"]), scales)
    if fmt.row_bytes != int(doc.get("stored_row_bytes", fmt.row_bytes)):
        raise CorruptDataError(f"layout {doc.get('id')}: stored row bytes disagree with row format {name}")
    return fmt


__all__ = ["FORMATS", "ColumnStats", "RowFormat", "layout_format"]

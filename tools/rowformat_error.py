"""Error of each row format on a store's table, and of int8 with a per-row scale instead of per-column.

    .venv/bin/python tools/rowformat_error.py STORE [--table node/_/feat] [--rows 200000]

Reads an evenly spaced sample of rows, round-trips them through each format
(int8's column ranges taken over the whole table, as ``pack`` does) and prints
JSON: per format, the mean and largest absolute error and the mean error
relative to the rows' mean absolute value. ``int8-per-row`` is the alternative
the int8 format does not use: each row its own min and step (8 more bytes a row).
"""

from __future__ import annotations

import argparse
import json

import numpy as np

import featdb
from featdb.rowformat import FORMATS, ColumnStats, RowFormat


def per_row_int8(x: np.ndarray) -> np.ndarray:
    lo = x.min(axis=1, keepdims=True).astype(np.float64)
    step = (x.max(axis=1, keepdims=True) - lo) / 255.0
    step[step == 0] = 1.0
    q = np.clip(np.rint((x - lo) / step) - 128, -128, 127)
    return ((q + 128) * step.astype(np.float32) + lo.astype(np.float32)).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("store")
    ap.add_argument("--table", default="node/_/feat")
    ap.add_argument("--rows", type=int, default=200_000)
    args = ap.parse_args()
    with featdb.open(args.store) as st:
        schema = st.schema(args.table)
        t = st.open_table(args.table)
        try:
            step = max(1, schema.rows // args.rows)
            chunks = (t.read_range(lo, min(schema.rows, lo + 65536)) for lo in range(0, schema.rows, 65536))
            stats = ColumnStats.of(chunks, schema.dim)
            x = t.read(np.arange(0, schema.rows, step)).astype(np.float32)
        finally:
            t.close()
    scale = float(np.abs(x).mean())
    out = {"table": args.table, "rows_sampled": len(x), "mean_abs_value": round(scale, 6), "formats": {}}
    for name in FORMATS:
        fmt = RowFormat.choose(name, np.float32, schema.dim, stats)
        got = np.empty_like(x)
        fmt.decode(fmt.encode(x.view(np.uint8).reshape(len(x), -1)), got)
        out["formats"][name] = _errors(x, got, scale, fmt.row_bytes)
    out["formats"]["int8-per-row"] = _errors(x, per_row_int8(x), scale, schema.dim + 8)
    print(json.dumps(out, indent=2))


def _errors(x: np.ndarray, got: np.ndarray, scale: float, row_bytes: int) -> dict[str, float]:
    err = np.abs(got.astype(np.float64) - x)
    return {
        "row_bytes": row_bytes,
        "mean_abs_error": float(f"{err.mean():.4g}"),
        "max_abs_error": float(f"{err.max():.4g}"),
        "mean_error_over_mean_value": float(f"{err.mean() / scale:.4g}"),
    }


if __name__ == "__main__":
    main()

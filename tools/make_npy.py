"""Write a seeded float32 .npy of ROWS x DIM in chunks (the source for the ingest benchmark).

Usage: python tools/make_npy.py OUT.npy ROWS DIM
"""

from __future__ import annotations

import sys

import numpy as np


def main(out: str, rows: int, dim: int) -> None:
    arr = np.lib.format.open_memmap(out, mode="w+", dtype=np.float32, shape=(rows, dim))
    step = max(1, (64 << 20) // (4 * dim))
    for lo in range(0, rows, step):
        hi = min(rows, lo + step)
        arr[lo:hi] = np.random.default_rng([7, lo]).standard_normal((hi - lo, dim), dtype=np.float32)
        arr.flush()
    del arr


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))

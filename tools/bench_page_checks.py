"""The cost of base-table page checks: random and sequential reads with Store.verify_reads on and off.

Usage: .venv/bin/python tools/bench_page_checks.py [DIR]   (a 200 MB table is written under DIR)
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import featdb

KEY = "node/p/feat"


def main() -> None:
    root = Path(tempfile.mkdtemp(dir=sys.argv[1] if len(sys.argv) > 1 else None))
    rows = np.random.default_rng(0).standard_normal((400_000, 128)).astype("float32")
    with featdb.create(root / "s") as st:
        st.write_table(KEY, rows)
    rng = np.random.default_rng(1)
    batches = [rng.integers(0, len(rows), 50_000) for _ in range(20)]
    for verify in (False, True, False, True):
        with featdb.open(root / "s") as st:
            st.verify_reads = verify
            st.read(KEY, batches[0])  # warm: the table is in the page cache for every run
            t = time.perf_counter()
            for b in batches:
                st.read(KEY, b)
            random_s = time.perf_counter() - t
            t = time.perf_counter()
            st.read_all(KEY)
            all_s = time.perf_counter() - t
        print(
            f"verify_reads={verify!s:5}: 20 x 50,000 random rows {random_s:.2f} s; read_all 400,000 rows {all_s:.3f} s"
        )


if __name__ == "__main__":
    main()

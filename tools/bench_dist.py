"""Stock DGL distributed vs featdb online vs featdb offline, side by side on the same partitions.

    sudo .venv/bin/python tools/bench_dist.py --nodes 1000000 --dim 128 --out .bench-dist

Builds a synthetic store (unless OUT/store exists), partitions it once for 2 machines with a stock
copy of the features, then runs the same training job (2 simulated machines, 1 server and 1
trainer each) three times: stock DGL servers (features in shared memory), featdb-backed servers
with DGL's online sampling, and featdb offline mode (``--modes`` picks). Prints one JSON object:
per mode the ms per step of every epoch on every trainer, the servers' peak RSS and peak
unreclaimable memory (anonymous + shared, sampled by each machine's launcher), the trainers' peak
RSS and, for offline mode, what preparing took; ``summary`` gives featdb's step time and servers'
peak unreclaimable memory as fractions of stock's. ``--server-memory-cap`` runs every machine's
servers in a memory cgroup of that size. Needs root (network namespaces, cgroups). Every run is
bounded in time and cleans up after itself.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import featdb  # noqa: E402
from featdb import parse_size  # noqa: E402
from featdb.distributed import load_manifest, partition  # noqa: E402
from featdb.distributed.simulate import simulate  # noqa: E402


def build(out: Path, nodes: int, dim: int) -> Path:
    store = out / "store"
    if not store.exists():
        with featdb.create(store) as st:
            featdb.synth(st, nodes, avg_degree=10, dim=dim, classes=16, seed=0, train_frac=0.1)
    parts = out / "parts"
    if not parts.exists():
        partition(store, parts, 2, "metis", stock_copy=True, memory_budget=8 << 30)
    return parts


def run(
    parts: Path, out: Path, mode: str, stock: bool, args: list[str], timeout: int, cap: int | None
) -> dict[str, Any]:
    t0 = time.monotonic()
    s = simulate(parts, ["--sampling", mode, *args], out / f"run-{mode}{'-stock' if stock else ''}",
                 stock=stock, timeout=timeout, server_cap=cap)  # fmt: skip
    trainers = [t for r in s["reports"] for t in r["trainers"]]
    servers = [v for r in s["reports"] for v in r["servers"]]
    steady = [ms for t in trainers for ms in t["ms_per_step"][1:]] or [ms for t in trainers for ms in t["ms_per_step"]]
    return {
        "ok": s["ok"],
        "failed": [r["failed"] for r in s["reports"] if r.get("failed")],
        "server_memory_cap_bytes": cap,
        "features": "stock" if stock else "featdb",
        "sampling": mode,
        "ms_per_step": [t["ms_per_step"] for t in trainers],
        "ms_per_step_median_after_epoch_0": round(statistics.median(steady), 2) if steady else None,
        "server_peak_rss_bytes": [v["peak_rss_bytes"] for v in servers],
        # sampled by each machine's launcher: anonymous + shared memory, what the kernel cannot reclaim
        "server_peak_unreclaimable_bytes": [
            v["peak_unreclaimable_bytes"] for r in s["reports"] for k, v in r["memory"].items() if k[:6] == "server"
        ],
        "server_at_exit": [{k: v[k] for k in v if k.startswith("rss_")} for v in servers],
        "trainer_peak_rss_bytes": [t["peak_rss_bytes"] for t in trainers],
        "test_acc": trainers[0]["test_acc"] if trainers else None,
        "loss": [t["loss"] for t in trainers],
        "prepare": [t.get("prepare") for t in trainers],
        "local_disk_bytes": [t.get("local_disk_bytes") for t in trainers],
        "wall_s": round(time.monotonic() - t0, 1),
        "left_behind": s["left_behind"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--fanouts", default="10,10")
    ap.add_argument("--max-batches", type=int, default=0, help="steps per epoch (0: all), evaluation skipped")
    ap.add_argument("--timeout", type=int, default=1200, help="seconds per run")
    ap.add_argument("--out", type=Path, default=ROOT / ".bench-dist")
    ap.add_argument("--memory-budget", default="2GiB", help="each trainer's --memory-budget")
    ap.add_argument("--server-memory-cap", type=parse_size, help="each machine's servers run in a cgroup of this size")
    ap.add_argument("--modes", default="stock-online,featdb-online,featdb-offline", help="which runs, in order")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    parts = build(a.out, a.nodes, a.dim)
    m = load_manifest(parts)
    args = ["--epochs", str(a.epochs), "--batch-size", str(a.batch_size), "--fanouts", a.fanouts, "--threads", "1",
            "--memory-budget", a.memory_budget]  # fmt: skip
    if a.max_batches:
        args += ["--max-batches", str(a.max_batches)]
    result: dict[str, Any] = {
        "nodes": a.nodes,
        "dim": a.dim,
        "part_rows": [m.part_rows(p) for p in range(m.num_parts)],
        "part_feature_bytes": [m.part_rows(p) * a.dim * 4 for p in range(m.num_parts)],
        "args": args,
    }
    for key in a.modes.split(","):
        features, mode = key.split("-")
        result[key] = run(parts, a.out, mode, features == "stock", args, a.timeout, a.server_memory_cap)
        print(json.dumps({key: result[key]}), file=sys.stderr, flush=True)
    result["summary"] = summary(result)
    print(json.dumps(result, indent=2))


def summary(result: dict[str, Any]) -> dict[str, Any]:
    """The ratios the side-by-side is about, against stock DGL (when both runs are there)."""
    stock = result.get("stock-online") or {}
    out: dict[str, Any] = {}
    for key in ("featdb-online", "featdb-offline"):
        run = result.get(key) or {}
        if not (stock.get("ok") and run.get("ok")):
            continue
        out[f"{key}_step_vs_stock"] = round(
            run["ms_per_step_median_after_epoch_0"] / stock["ms_per_step_median_after_epoch_0"], 3
        )
        pairs = zip(run["server_peak_unreclaimable_bytes"], stock["server_peak_unreclaimable_bytes"], strict=False)
        out[f"{key}_server_peak_unreclaimable_vs_stock"] = [round(a / b, 3) for a, b in pairs]
    return out


if __name__ == "__main__":
    main()

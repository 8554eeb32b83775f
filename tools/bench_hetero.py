"""R-GCN on a heterogeneous graph: featdb (one packed trace per node type) against DGL in memory.

    .venv/bin/python tools/bench_hetero.py --papers 200000 --seeds 0,1,2 --out .bench-hetero

Writes an ogbn-mag-like folder (``featdb synth-mag``), ingests it, samples one set (3 epochs plus
the evaluation batches), splits it into one trace per node type and packs each; then trains the
same R-GCN with ``featdb-train --model rgcn`` from featdb and from DGL's sampler over the typed
tables in memory, once per seed, each run its own process. Steps already done under OUT are
kept. Prints one JSON object: per seed and loader the test accuracy, epoch seconds and peak RSS,
the mean accuracies and their difference. ``--cap`` runs every training inside a cgroup memory
cap (root; cgroup v1).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from featdb.cgroup import MemoryCap, command_path  # noqa: E402

TYPES = ("author", "field_of_study", "paper")


def run(args: list[str], cap: int | None = None) -> str:
    """A featdb command's stdout (inside a memory cap of ``cap`` bytes, if given); exits on failure."""
    with MemoryCap(cap, "bench-hetero") as cg:
        done = cg.run([command_path(args[0]), *args[1:]])
    if done.returncode:
        oom = " (OOM-killed)" if done.oom_killed else ""
        raise SystemExit(f"{' '.join(args)}: exit {done.returncode}{oom}\n{done.stderr_tail}")
    return done.stdout


def prepare(out: Path, papers: int, epochs: int, fanouts: str, per_relation: bool) -> Path:
    mag, store = out / "mag", out / "store"
    if not mag.exists():
        run(["featdb", "synth-mag", str(mag), "--papers", str(papers), "--seed", "0", "-q"])
    if not store.exists():
        run(["featdb", "ingest-ogb", str(store), str(mag), "-q"])
        sample = ["--name", "train", "--fanouts", fanouts, "--batch-size", "1024", "--epochs", str(epochs)]
        sample += ["--per-relation"] if per_relation else []
        run(["featdb", "sample", str(store), *sample, "-q"])
        run(["featdb", "trace", "split", str(store), "--sample-set", "train", "-q"])
        for t in TYPES:
            run(["featdb", "pack", str(store), "--trace", f"train.{t}", "-q"])
    return store


def train(
    store: Path, loader: str, seed: int, epochs: int, hidden: int, cap: int | None, budget: str
) -> dict[str, Any]:
    ckpt = store.parent / "checkpoints" / f"{loader}-s{seed}.pt"
    args = ["featdb-train", str(store), "--sample-set", "train", "--model", "rgcn", "--loader", loader]
    args += ["--hidden", str(hidden), "--epochs", str(epochs), "--seed", str(seed), "--checkpoint", str(ckpt)]
    args += ["--memory-budget", budget, "--json"]
    s = json.loads(run(args, cap))
    return {
        "test_acc": s["test_acc"],
        "best_val_acc": s["best_val_acc"],
        "epoch_s": s["epoch_s"],
        "eval_s": s["eval_s"],
        "peak_rss_bytes": s["peak_rss_bytes"],
        "read_amplification": s["read_amplification"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--papers", type=int, default=200_000)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--fanouts", default="10,10")
    p.add_argument("--per-relation", action="store_true", help="sample each layer's fanout per relation")
    p.add_argument("--memory-budget", default="1.6GiB", help="featdb-train's --memory-budget")
    p.add_argument("--cap", type=int, help="cgroup memory cap in MiB for every training run (root)")
    p.add_argument("--out", type=Path, default=Path(".bench-hetero"))
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    store = prepare(a.out, a.papers, a.epochs, a.fanouts, a.per_relation)
    cap = a.cap << 20 if a.cap else None
    runs: dict[str, dict[str, Any]] = {"featdb": {}, "in-memory": {}}
    for seed in (int(x) for x in a.seeds.split(",")):
        for loader in runs:
            runs[loader][str(seed)] = train(store, loader, seed, a.epochs, a.hidden, cap, a.memory_budget)
            print(loader, seed, runs[loader][str(seed)], file=sys.stderr, flush=True)
    mean = {k: statistics.mean(r["test_acc"] for r in v.values()) for k, v in runs.items()}
    epoch = {k: statistics.mean(s for r in v.values() for s in r["epoch_s"]) for k, v in runs.items()}
    print(
        json.dumps(
            {
                "papers": a.papers,
                "epochs": a.epochs,
                "fanouts": a.fanouts,
                "per_relation": a.per_relation,
                "hidden": a.hidden,
                "cap_bytes": cap,
                "runs": runs,
                "mean_test_acc": mean,
                "featdb_minus_in_memory_points": round(100 * (mean["featdb"] - mean["in-memory"]), 3),
                "mean_epoch_s": epoch,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()

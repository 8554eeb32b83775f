"""Accuracy and epoch time: featdb vs the in-memory baseline vs an MLP, over several seeds.

Usage: python tools/bench_train.py STORE SAMPLE_SET [--seeds 0,1,2] [--epochs 3] [--no-mlp] [--out results.json]
Per seed, featdb and the in-memory baseline run back to back (alternating which goes first) and
their epoch-time ratio is reported per pair as well as over all seeds.
The store needs a packed layout for SAMPLE_SET (featdb demo builds one in .demo-store).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trainer.loop import TrainConfig, train

RUNS = (("featdb", "sage"), ("in-memory", "sage"), ("featdb", "mlp"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("store")
    ap.add_argument("sample_set")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--no-mlp", action="store_true", help="skip the MLP runs (timing only)")
    ap.add_argument("--out")
    a = ap.parse_args()
    rows = []
    for i, seed in enumerate(int(s) for s in a.seeds.split(",")):
        runs = list(RUNS if i % 2 == 0 else (RUNS[1], RUNS[0], *RUNS[2:]))
        for loader, model in runs[:2] if a.no_mlp else runs:
            s = train(TrainConfig(a.store, a.sample_set, model=model, epochs=a.epochs, seed=seed, loader=loader))
            row = {
                "seed": seed,
                "loader": loader,
                "model": model,
                "test_acc": s["test_acc"],
                "epoch_s": s["epoch_s"],
                "epoch_over_slowest": s["epoch_over_slowest"],
                "stage_s": s["stage_s"],
                "read_amplification": s["read_amplification"],
                "tier_hit_rates": s["tier_hit_rates"],
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    out = {"runs": rows, "summary": summarize(rows)}
    print(json.dumps(out["summary"], indent=2))
    if a.out:
        Path(a.out).write_text(json.dumps(out, indent=2))


def summarize(rows: list[dict]) -> dict:
    def pick(loader: str, model: str) -> list[dict]:
        return [r for r in rows if r["loader"] == loader and r["model"] == model]

    def mean_std(xs: list[float]) -> list[float]:
        return [round(statistics.mean(xs), 4), round(statistics.pstdev(xs), 4)]

    f, m, mlp = pick("featdb", "sage"), pick("in-memory", "sage"), pick("featdb", "mlp")
    steady = lambda r: r["epoch_s"][1:] or r["epoch_s"]  # noqa: E731 - the first epoch warms caches
    f_ep = [x for r in f for x in steady(r)]
    m_ep = [x for r in m for x in steady(r)]
    pairs = [round(statistics.mean(steady(x)) / statistics.mean(steady(y)), 3) for x, y in zip(f, m, strict=True)]
    return {
        "featdb_test_acc": mean_std([r["test_acc"] for r in f]),
        "in_memory_test_acc": mean_std([r["test_acc"] for r in m]),
        "mlp_test_acc": mean_std([r["test_acc"] for r in mlp]) if mlp else None,
        "featdb_epoch_s": mean_std(f_ep),
        "in_memory_epoch_s": mean_std(m_ep),
        "epoch_time_ratio": round(statistics.mean(f_ep) / statistics.mean(m_ep), 3),
        "epoch_time_ratio_per_seed": pairs,
        "epoch_time_ratio_median": statistics.median(pairs),
        "featdb_epoch_over_slowest_stage": mean_std([x for r in f for x in r["epoch_over_slowest"]]),
    }


if __name__ == "__main__":
    main()

"""Offline sampling + reading the batches back vs DGL's in-loop DataLoader sampling, same batches.

Usage: python tools/bench_sampling.py STORE [--fanouts 10,10,10] [--batch-size 1024] [--rounds 3] [--workers N]
Prints one JSON object; the sample set it writes is removed afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

import featdb
from featdb.cli.layout_cmds import _drop_sample_set
from featdb.graph import load_graph
from featdb.sampling import SampleSet
from featdb.sampling.offline import SampleConfig, dgl_graph, parse_fanouts, sample


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("store")
    ap.add_argument("--fanouts", default="10,10,10")
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3, help="measurements, alternating which side runs first")
    ap.add_argument(
        "--workers",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="featdb sampling processes (default: one per CPU)",
    )
    a = ap.parse_args()
    import dgl
    import torch

    fanouts = parse_fanouts(a.fanouts)
    rounds = []
    with featdb.open(a.store, mode="a") as st:
        g = load_graph(st)
        graph = dgl_graph(g.indptr, g.indices)

        def in_loop() -> float:
            dgl.seed(0)
            loader = dgl.dataloading.DataLoader(
                graph,
                torch.from_numpy(g.train),
                dgl.dataloading.NeighborSampler(list(fanouts)),
                batch_size=a.batch_size,
                shuffle=True,
                drop_last=False,
                num_workers=0,
            )
            t = time.perf_counter()
            for _ in loader:
                pass
            return time.perf_counter() - t

        def offline() -> tuple[float, float, dict]:
            name = f"bench-sampling-{time.time_ns():x}"
            t = time.perf_counter()
            doc = sample(st, SampleConfig(name, fanouts, a.batch_size, 1, seed=0), workers=a.workers)
            took = time.perf_counter() - t
            t = time.perf_counter()
            with SampleSet(st, name) as ss:
                for b in range(ss.num_batches):
                    ss.batch(b)
            read_back = time.perf_counter() - t
            _drop_sample_set(st, name)
            return took, read_back, doc

        for r in range(a.rounds):  # alternate which runs first, so neither always gets the warm machine
            if r % 2 == 0:
                loop_s = in_loop()
                off_s, back_s, doc = offline()
            else:
                off_s, back_s, doc = offline()
                loop_s = in_loop()
            rounds.append(
                {
                    "in_loop_s": round(loop_s, 2),
                    "offline_sample_s": round(off_s, 2),
                    "read_back_s": round(back_s, 2),
                    "ratio": round((off_s + back_s) / loop_s, 3),
                }
            )
    print(
        json.dumps(
            {
                "fanouts": list(fanouts),
                "batch_size": a.batch_size,
                "batches": doc["batches"],
                "workers": a.workers,
                "torch_threads": torch.get_num_threads(),
                "rounds": rounds,
                "median_ratio": float(np.median([r["ratio"] for r in rounds])),
                "bytes_per_batch": doc["bytes_per_batch"],
                "bytes_per_epoch": doc["bytes"],
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()

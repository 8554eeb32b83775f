"""Offline sampling + reading the batches back vs DGL's in-loop DataLoader sampling, same batches.

Usage: python tools/bench_sampling.py STORE [--fanouts 10,10,10] [--batch-size 1024]
Prints one JSON object; the sample set it writes is removed afterwards.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

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
    a = ap.parse_args()
    import dgl
    import torch

    fanouts = parse_fanouts(a.fanouts)
    name = f"bench-sampling-{time.time_ns():x}"
    with featdb.open(a.store, mode="a") as st:
        g = load_graph(st)
        graph = dgl_graph(g.indptr, g.indices)
        dgl.seed(0)
        loader = dgl.dataloading.DataLoader(graph, torch.from_numpy(g.train), dgl.dataloading.NeighborSampler(list(fanouts)),
                                            batch_size=a.batch_size, shuffle=True, drop_last=False, num_workers=0)
        t = time.perf_counter()
        n_in = sum(1 for _ in loader)
        in_loop = time.perf_counter() - t
        t = time.perf_counter()
        doc = sample(st, SampleConfig(name, fanouts, a.batch_size, 1, seed=0))
        offline = time.perf_counter() - t
        t = time.perf_counter()
        with SampleSet(st, name) as ss:
            for b in range(ss.num_batches):
                ss.batch(b)
        read_back = time.perf_counter() - t
        _drop_sample_set(st, name)
    print(json.dumps({"fanouts": list(fanouts), "batch_size": a.batch_size, "batches": doc["batches"],
                      "in_loop_batches": n_in, "in_loop_s": round(in_loop, 2), "offline_sample_s": round(offline, 2),
                      "read_back_s": round(read_back, 2),
                      "ratio": round((offline + read_back) / in_loop, 3),
                      "bytes_per_batch": doc["bytes_per_batch"], "bytes_per_epoch": doc["bytes"]}, indent=2))


if __name__ == "__main__":
    main()

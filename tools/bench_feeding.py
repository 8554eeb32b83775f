"""What featdb's feeding pipeline costs the training step, measured in one process.

Usage: python tools/bench_feeding.py STORE SAMPLE_SET [--rounds 6] [--default-malloc] [--json]

Times GraphSAGE training steps (ms per batch) three ways, alternating every
round so that machine noise hits all three alike:

- replay: one epoch's batches held in memory, nothing else running;
- pipeline: the trainer's featdb loader (sample -> read -> assemble threads);
- pipeline-no-l4: the same, with the batch-extent (L4) reads skipped, so the
  difference to ``pipeline`` is what the direct reads cost the compute thread.

Minor page faults per batch are reported for each mode; ``--default-malloc``
skips the trainer's allocator settings (``trainer/allocator.py``) to show
what they save.

The store needs a packed layout for SAMPLE_SET (featdb demo builds one in .demo-store).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch
import torch.nn.functional as F

import featdb
from featdb.graph import load_graph
from trainer.allocator import retain_large_allocations
from trainer.loaders import FeatDBLoader
from trainer.models import build_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("store")
    ap.add_argument("sample_set")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--default-malloc", action="store_true", help="leave glibc's allocator settings alone")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    allocator = None if a.default_malloc else retain_large_allocations()
    with featdb.open(a.store, mode="r") as st:
        graph = load_graph(st)
        loader = FeatDBLoader(st, a.sample_set, torch.device("cpu"), 4, graph.labels)
        try:
            out = measure(loader, graph, a.rounds)
            out["allocator"] = allocator
        finally:
            loader.close()
    if a.json:
        print(json.dumps(out))
    else:
        for mode, v in out["ms_per_batch"].items():
            print(
                f"{mode:>15}: median {out['median_ms'][mode]:.1f} ms per batch  {v}  "
                f"minor faults per batch {out['minor_faults_per_batch'][mode]:.0f}"
            )


def measure(loader: FeatDBLoader, graph: Any, rounds: int) -> dict[str, Any]:
    torch.manual_seed(0)
    in_dim = loader.reader.dim
    model = build_model("sage", in_dim, 256, graph.num_classes, len(loader.fanouts), 0.3)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    epochs = loader.ss.epochs

    faults: dict[str, list[float]] = {}

    def steps(items: Any, mode: str = "") -> float:
        t, n = time.perf_counter(), 0
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for mfg, x, y, release in items:
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(mfg, x), y)
            loss.backward()
            opt.step()
            release()
            float(loss)
            n += 1
        faults.setdefault(mode, []).append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / n)
        return round((time.perf_counter() - t) / n * 1e3, 1)

    replay = []
    ep = loader.epoch(0, np.random.default_rng(0))
    for mfg, x, y, release in ep.items:
        replay.append((mfg, x.clone(), y, lambda: None))
        release()
    ep.close()

    reader = loader.reader
    start_l4 = reader._start_l4

    def pipeline(r: int, skip_l4: bool) -> float:
        reader._start_l4 = (lambda buf, n4, off: lambda: None) if skip_l4 else start_l4  # type: ignore[method-assign]
        try:
            ep = loader.epoch(r % epochs, np.random.default_rng(r))
            try:
                return steps(ep.items, "pipeline-no-l4" if skip_l4 else "pipeline")
            finally:
                ep.close()
        finally:
            reader._start_l4 = start_l4  # type: ignore[method-assign]

    res: dict[str, list[float]] = {"replay": [], "pipeline": [], "pipeline-no-l4": []}
    steps(replay)  # warm up
    for r in range(rounds):
        res["replay"].append(steps(replay, "replay"))
        res["pipeline"].append(pipeline(r, False))
        res["pipeline-no-l4"].append(pipeline(r, True))
    return {
        "ms_per_batch": res,
        "median_ms": {k: statistics.median(v) for k, v in res.items()},
        "minor_faults_per_batch": {k: statistics.median(faults[k]) for k in res},
        "batches": len(replay),
        "torch_threads": torch.get_num_threads(),
    }


if __name__ == "__main__":
    main()

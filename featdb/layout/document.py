"""The generation document a pack writes (and a dry run returns), and the plan's warnings."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..io import require_space
from ..sampling.sampleset import SampleSet
from ..tables import Schema
from ..units import format_size
from .plan import Budgets, Placement

DEFAULT_MAX_AMPLIFICATION = 3.0
SEG_COLS = 8  # first_batch, n_batches, l3_offset, l3_rows, l3_crc, blocks_offset, blocks_rows, copy_offset


def plan_warnings(p: Placement, b: Budgets, max_amplification: float) -> list[str]:
    amp = p.predictions.get("predicted_amplification")
    if amp is None or amp <= max_amplification:
        return []
    cap = "none" if b.max_blowup is None else f"{b.max_blowup:g}"
    return [
        f"the plan predicts read amplification {amp:g} (over {max_amplification:g}): raise --max-blowup "
        f"(now {cap}) or --segment-cache (now {format_size(b.segment_cache)}), or --host-cache"
    ]


def serving_groups(ss: SampleSet) -> list[tuple[int, int]]:
    """Batch ranges served together: each training epoch, each evaluation split."""
    bpe, train = ss.batches_per_epoch, ss.epochs * ss.batches_per_epoch
    epochs = [(e * bpe, (e + 1) * bpe) for e in range(ss.epochs)]
    return epochs + sorted((lo, hi) for lo, hi in ss.parts.values() if lo >= train)


def layout_doc(
    p: Placement, sample_set: str, table: str, schema: Schema, b: Budgets, memory_budget: int, plan_s: float
) -> dict[str, Any]:
    pr = p.predictions
    return {
        "sample_set": sample_set,
        "table": table,
        "policy": p.policy,
        "dtype": schema.dtype,
        "dim": schema.dim,
        "row_bytes": schema.row_bytes,
        "num_nodes": p.num_nodes,
        "num_batches": p.num_batches,
        "segment_len": p.segment_len,
        "segment_cols": SEG_COLS,
        "segment_cache": p.segment_cache,
        "segments": pr.get("segments", len(p.segments())),
        "blocks_segments": pr.get("blocks_segments", 0),
        "copies": pr.get("copies", 0),
        "copy_rows": pr.get("copy_rows", 0),
        "l1_rows": len(p.l1_ids),
        "l2_rows": len(p.l2_ids),
        "l3_rows": pr["stored_rows"] - pr["rows_per_tier"]["l4"] - pr.get("copy_rows", 0)
        if p.packs
        else 0,  # stored (not blocks)
        "l4_rows": pr["rows_per_tier"]["l4"],
        "blowup": pr["blowup"],
        "predicted_amplification": pr["predicted_amplification"],
        "predictions": pr,
        "budgets": {
            "device_cache": b.device_cache,
            "host_cache": b.host_cache,
            "max_blowup": b.max_blowup,
            "segment_cache": b.segment_cache,
            "seed": b.seed,
        },
        "table_file": "",
        "memory_budget": memory_budget,
        "plan_s": round(plan_s, 3),
        "created": time.time(),
    }


def require_room(root: Path, placement: Placement, counts: NDArray[Any], row_bytes: int) -> None:
    """``DiskFullError`` before a pack writes anything if the disk of ``root`` cannot hold the
    placement: about the bytes it stores (tiers, extents, ~3 % of page rounding and indexes), from
    its predicted blowup where the planner chose among caps, else (every batch packed) the memory
    tiers plus each batch's other rows, from the per-row read ``counts``."""
    if "blowup" in placement.predictions:
        rows = float(placement.predictions["blowup"]) * placement.num_nodes
    else:
        hot = np.concatenate([placement.l1_ids, placement.l2_ids]).astype(np.int64)
        rows = len(hot) + int(counts.sum(dtype=np.int64)) - int(counts[hot].sum(dtype=np.int64))
    planned = int(rows * row_bytes * 1.03)
    require_space(root, planned + (16 << 20), f"pack ({format_size(planned)} of tiers and extents)")

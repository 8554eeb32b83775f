"""What a featdb training run charges to its memory budget for its own parts (the reader charges
its tiers and buffers after these)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from featdb import TORCH_RUNTIME_BYTES, MemoryBudget
from featdb.sampling import SampleSet

from .allocator import trim_threshold

if TYPE_CHECKING:
    from .loop import TrainConfig


def step_bytes(ss: SampleSet, dim: int, cfg: TrainConfig, relations: int = 0) -> int:
    """One training step's working set, from the set's largest batch: input rows (and their
    dropout copy and gradient), the edge arrays as torch tensors, hidden activations. A relational
    model adds its input projections, per-edge messages and the per-relation means of layer 0's
    destinations (``relations`` per destination), each with its gradient."""
    rows = int(ss.index[:, 4].max(initial=0))
    record = int(ss.index[:, 2].max(initial=0))
    heads = cfg.heads if cfg.model == "gat" else 1
    edges = record // 8  # a record is mostly int32 (src, dst) pairs: about 8 bytes per edge
    step = 3 * rows * dim * 4 + edges * (6 * 8 + heads * 4 * 6) + rows * cfg.hidden * heads * 4 // 4
    if relations:
        dst0 = int(ss.doc["batch_size"])
        per = relations if ss.doc.get("per_relation") else 1  # a fanout per relation reaches that many more
        for f in ss.doc["fanouts"][1:]:  # layer 0's destinations are the later layers' sources
            dst0 *= 1 + max(int(f), 0) * per
        dst0 = min(rows, dst0)
        step += 4 * cfg.hidden * (5 * rows + 3 * edges + 3 * relations * dst0)
    return step


def charge_training(
    memory: MemoryBudget,
    cfg: TrainConfig,
    dim: int,
    classes: int,
    layers: int,
    step: int,
    mfg: int,
    params: int | None = None,
) -> None:
    """The trainer's own parts (``params``: the model's, where the homogeneous estimate does not
    apply); the reader charges its tiers and buffers after these."""
    memory.charge("runtime (torch)", TORCH_RUNTIME_BYTES)
    if params is None:
        width = cfg.hidden * (cfg.heads if cfg.model == "gat" else 1)
        params = 2 * (dim * width + (layers - 1) * width * width + width * max(1, classes)) + 4 * width
    memory.charge("model, gradients and optimizer state", 4 * 4 * params)
    memory.charge("one training step", step)
    memory.charge("allocator free-list (trim threshold)", trim_threshold(memory.limit))
    memory.charge(f"batches in flight ({3 * cfg.queue_depth} sampled MFGs)", 3 * cfg.queue_depth * mfg)

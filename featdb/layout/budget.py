"""Choosing a layout under both budgets: disk (the blowup cap) and serving memory (the segment cache).

Candidates, each predicted by a pass over the trace:

* **packed**: every batch's cold rows in its own L4 extent (read amplification
  1); taken whenever the cap allows it.
* **shared**: L3 extents over segments of ``s`` consecutive batches, ``s`` the
  smallest that meets the cap; considered only while every extent fits the
  segment limit (half the segment cache: one segment is served while the next
  is read ahead). An extent larger than that would be read page by page.
* **copies**: blocks segments (below) everywhere; in every group the same,
  largest share of its segments that the cap allows reads from one copy of
  the rows they need, stored sorted by the set of segments that read each row,
  so a segment's rows lie in long runs (about one table copy per group for
  every segment; see :func:`~featdb.layout.plan.copy_order`).
* **mixed**: in every group of batches served together (each epoch, each
  evaluation split) the same share is packed, as large as the cap allows; the
  rest are *blocks* segments: runs of consecutive batches whose cold rows, as
  one sorted set no larger than the segment limit, are read from the base
  table in large coalesced reads and gathered from memory. Nothing is stored
  for them, so a cap of 0 gives pure blocks.

The candidate with the fewest predicted bytes read per pass wins; every one
considered is listed in ``predictions["candidates"]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import InvalidInputError
from .plan import L4, Budgets, Placement, Trace, hot_sets, predict

Groups = Sequence[tuple[int, int]]


def in_rows(budgets: Budgets, row_bytes: int, base_row_bytes: int) -> Budgets:
    """The blowup cap (bytes against the base table's) as table copies of rows stored ``row_bytes`` wide."""
    if budgets.max_blowup is None or row_bytes == base_row_bytes:
        return budgets
    return replace(budgets, max_blowup=budgets.max_blowup * base_row_bytes / row_bytes)


def plan(
    counts: NDArray[Any],
    trace: Trace,
    num_batches: int,
    row_bytes: int,
    budgets: Budgets,
    groups: Groups | None = None,
    predict_costs: bool = True,
    epochs: int = 0,
    base_row_bytes: int = 0,
) -> Placement:
    """Plan a layout and (unless ``predict_costs`` is false and no choice needed a
    prediction) predict what serving it will cost.

    ``groups`` are the batch ranges served together (epochs, evaluation splits);
    no segment crosses one. The first ``epochs`` of them are training epochs,
    which a copy serves first. The packer passes ``predict_costs=False`` and
    accumulates the same predictions while it writes.
    """
    budgets.validate()
    spans = check_groups(groups, num_batches)
    l1, l2 = hot_sets(counts, row_bytes, budgets)
    train = spans[min(len(spans), epochs) - 1][1] if epochs and groups else 0
    p = Placement(
        len(counts), row_bytes, num_batches, budgets.policy, l1, l2, 1, budgets.seed,
        segment_cache=budgets.segment_cache, epochs=epochs if train else 0, train_batches=train,
        base_row_bytes=base_row_bytes,
    )  # fmt: skip
    tier = p.tier_map()
    limit = budgets.segment_limit // max(1, row_bytes, base_row_bytes)  # rows of a segment held whole
    candidates: list[Placement] = []
    if budgets.policy == "blocks":
        candidates.append(_mixed(p, trace, spans, tier, limit, np.zeros(num_batches, dtype=np.int64), 0.0))
    elif p.packs:
        cold = cold_rows(trace, num_batches, tier)
        cap = budgets.max_blowup
        if cap is None or cold.sum() <= cap * p.num_nodes:
            candidates.append(p)
        else:
            shared = _shared(p, trace, spans, tier, cap, limit)
            copied = _copied(p, trace, spans, tier, limit, cap, epochs)
            mixed = _mixed(p, trace, spans, tier, limit, cold, cap)
            candidates += [c for c in (shared, copied, mixed) if c is not None]
    else:
        candidates.append(p)
    if len(candidates) == 1 and not candidates[0].predictions and not predict_costs:
        return candidates[0]
    predicted = [c if c.predictions else replace(c, predictions=c.predictions | predict(c, trace)) for c in candidates]
    best = min(predicted, key=lambda c: (c.predictions["disk_bytes_per_pass"], c.predictions["blowup"]))
    listing = [_summary(c) | {"chosen": c is best} for c in predicted]
    return replace(best, predictions=best.predictions | {"candidates": listing})


def check_groups(groups: Groups | None, num_batches: int) -> list[tuple[int, int]]:
    """Sorted, non-overlapping ranges covering every batch (gaps become groups of their own)."""
    spans = sorted((int(lo), int(hi)) for lo, hi in (groups or [(0, num_batches)]) if hi > lo)
    out: list[tuple[int, int]] = []
    at = 0
    for lo, hi in spans:
        if lo < at or hi > num_batches:
            raise InvalidInputError(f"batch groups overlap or pass the last batch: {spans}")
        if lo > at:
            out.append((at, lo))
        out.append((lo, hi))
        at = hi
    if at < num_batches:
        out.append((at, num_batches))
    return out


def cold_rows(trace: Trace, num_batches: int, tier: NDArray[Any]) -> NDArray[Any]:
    """Per batch, how many of its input rows are cold (in no memory tier)."""
    out = np.zeros(num_batches, dtype=np.int64)
    for b, ids in enumerate(trace(range(num_batches))):
        out[b] = int(np.count_nonzero(tier[ids] == L4))
    return out


def segment_rows(trace: Trace, bounds: NDArray[Any], tier: NDArray[Any], num_batches: int) -> tuple[int, NDArray[Any]]:
    """Rows stored in L3 + L4 for these segment bounds, and each segment's L3 (shared) rows."""
    n = len(tier)
    last = np.full(n, -1, dtype=np.int32)  # per node: the last segment that stored it
    shared = np.full(n, -1, dtype=np.int32)  # per node: the last segment it was shared in
    l3 = np.zeros(len(bounds) - 1, dtype=np.int64)
    seg_of = np.searchsorted(bounds, np.arange(num_batches), side="right") - 1
    total = 0
    for b, ids in enumerate(trace(range(num_batches))):
        cold = ids[tier[ids] == L4]
        seg = int(seg_of[b])
        seen = last[cold] == seg
        again = cold[seen & (shared[cold] != seg)]
        shared[again] = seg
        l3[seg] += len(again)
        fresh = cold[~seen]
        last[fresh] = seg
        total += len(fresh)
    return total, l3


def uniform_bounds(spans: Sequence[tuple[int, int]], s: int, num_batches: int) -> NDArray[Any]:
    starts = [b for lo, hi in spans for b in range(lo, hi, s)]
    return np.asarray([*starts, num_batches], dtype=np.int64)


def _shared(
    p: Placement, trace: Trace, spans: Sequence[tuple[int, int]], tier: NDArray[Any], cap: float, limit: int
) -> Placement | None:
    """Shared L3 extents over the shortest uniform segments that meet ``cap``, if every extent
    fits ``limit`` rows (doubling, then bisection; given up as soon as an extent is too large)."""
    tried: dict[int, tuple[float, int]] = {}
    longest = max(hi - lo for lo, hi in spans)

    def probe(s: int) -> tuple[float, int]:
        if s not in tried:
            total, l3 = segment_rows(trace, uniform_bounds(spans, s, p.num_batches), tier, p.num_batches)
            tried[s] = (total / p.num_nodes, int(l3.max(initial=0)))
        return tried[s]

    lo, hi = 1, 2
    while probe(hi)[0] > cap and probe(hi)[1] <= limit and hi < longest:
        lo, hi = hi, min(2 * hi, longest)
    if probe(hi)[0] > cap or probe(hi)[1] > limit:
        return None
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if probe(mid)[0] <= cap else (mid, hi)
    notes = {"segment_blowups_tried": {str(k): round(v[0], 4) for k, v in sorted(tried.items())}}
    bounds = uniform_bounds(spans, hi, p.num_batches)
    return replace(p, segment_len=hi, bounds=bounds, predictions=notes | predict(replace(p, bounds=bounds), trace))


def _mixed(
    p: Placement,
    trace: Trace,
    spans: Sequence[tuple[int, int]],
    tier: NDArray[Any],
    limit: int,
    cold: NDArray[Any],
    cap: float,
) -> Placement:
    """The largest equal share of every group packed (one L4 extent per batch) within ``cap``;
    the rest as blocks segments of at most ``limit`` rows."""
    budget = cap * p.num_nodes

    def packed(f: float) -> list[int]:
        return [int(f * (hi - lo)) for lo, hi in spans]

    def stored(ks: list[int]) -> int:
        return int(sum(cold[lo : lo + k].sum() for (lo, _), k in zip(spans, ks, strict=True)))

    lo_f, hi_f = 0.0, 1.0
    for _ in range(30):
        mid = (lo_f + hi_f) / 2
        lo_f, hi_f = (mid, hi_f) if stored(packed(mid)) <= budget else (lo_f, mid)
    ks = packed(lo_f) if p.packs else [0] * len(spans)
    starts: list[int] = []
    blocks: list[bool] = []
    rest: list[tuple[int, int]] = []
    for (lo, hi), k in zip(spans, ks, strict=True):
        starts += range(lo, lo + k)
        blocks += [False] * k
        if lo + k < hi:
            rest.append((lo + k, hi))
    for b in block_bounds(trace, rest, tier, limit):
        starts.append(b)
        blocks.append(True)
    order = np.argsort(starts, kind="stable")
    bounds = np.asarray([*np.asarray(starts)[order].tolist(), p.num_batches], dtype=np.int64)
    longest = int(np.diff(bounds).max(initial=1))
    q = replace(p, segment_len=longest, bounds=bounds, blocks=np.asarray(blocks, dtype=bool)[order])
    return replace(q, predictions=predict(q, trace))


def _copied(
    p: Placement,
    trace: Trace,
    spans: Sequence[tuple[int, int]],
    tier: NDArray[Any],
    limit: int,
    cap: float,
    epochs: int,
) -> Placement | None:
    """Blocks segments everywhere; in every group the same, largest share of its segments that the
    cap allows reads from one copy of the rows they need (see :func:`~featdb.layout.plan.copy_order`),
    the rest from the base table. None when the cap allows no copy at all."""
    starts = block_bounds(trace, spans, tier, limit)
    bounds = np.asarray([*starts, p.num_batches], dtype=np.int64)
    owner = np.searchsorted([lo for lo, _ in spans], starts, side="right") - 1
    groups = [np.flatnonzero(owner == g) for g in range(len(spans))]
    cum = _cumulative_rows(trace, bounds, owner, tier)
    train = min(len(groups), max(1, epochs))  # training epochs come first: they are served every epoch

    def shares(f_train: float, f_eval: float) -> list[int]:
        return [int((f_train if gi < train else f_eval) * len(g)) for gi, g in enumerate(groups)]

    def cost(ks: list[int]) -> int:
        return int(sum(cum[g[k - 1]] for g, k in zip(groups, ks, strict=True) if k))

    def most(fixed_train: float | None) -> float:
        """The largest share within the cap, of training groups (or, with them all copied, of the rest)."""
        lo_f, hi_f = 0.0, 1.0
        for _ in range(30):
            mid = (lo_f + hi_f) / 2
            ks = shares(mid, 0.0) if fixed_train is None else shares(fixed_train, mid)
            lo_f, hi_f = (mid, hi_f) if cost(ks) <= cap * p.num_nodes else (lo_f, mid)
        return 1.0 if cost(shares(1.0, 0.0) if fixed_train is None else shares(1.0, 1.0)) <= cap * p.num_nodes else lo_f

    f_train = most(None)
    ks = shares(f_train, most(1.0) if f_train == 1.0 else 0.0)
    copies = np.full(len(starts), -1, dtype=np.int64)
    for gi, (g, k) in enumerate(zip(groups, ks, strict=True)):
        copies[g[:k]] = gi
    if not (copies >= 0).any():
        return None
    longest = int(np.diff(bounds).max(initial=1))
    blocks = np.ones(len(starts), dtype=bool)
    q = replace(p, segment_len=longest, bounds=bounds, blocks=blocks, copies=copies)
    return replace(q, predictions=predict(q, trace))


def _cumulative_rows(trace: Trace, bounds: NDArray[Any], owner: NDArray[Any], tier: NDArray[Any]) -> NDArray[Any]:
    """Per segment, the distinct cold rows read by its group's segments up to and including it."""
    mark = np.full(len(tier), -1, dtype=np.int32)
    out = np.zeros(len(owner), dtype=np.int64)
    total, group = 0, -1
    for si, (lo, hi) in enumerate(zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True)):
        if owner[si] != group:
            total, group = 0, int(owner[si])
        for ids in trace(range(lo, hi)):
            cold = ids[tier[ids] == L4]
            fresh = cold[mark[cold] != group]
            mark[fresh] = group
            total += len(fresh)
        out[si] = total
    return out


def block_bounds(trace: Trace, spans: Sequence[tuple[int, int]], tier: NDArray[Any], limit: int) -> list[int]:
    """First batches of blocks segments: within each span, consecutive batches as long as their
    cold rows, as a set, stay within ``limit`` rows (a batch larger than that alone)."""
    mark = np.full(len(tier), -1, dtype=np.int32)
    starts: list[int] = []
    seg = -1
    size = 0
    for lo, hi in spans:
        seg, size = seg + 1, 0
        starts.append(lo)
        for b, ids in zip(range(lo, hi), trace(range(lo, hi)), strict=True):
            cold = ids[tier[ids] == L4]
            fresh = cold[mark[cold] != seg]
            if size and size + len(fresh) > limit:
                seg, size = seg + 1, 0
                starts.append(b)
                fresh = cold
            mark[fresh] = seg
            size += len(fresh)
    return starts


def _summary(c: Placement) -> dict[str, Any]:
    pr = c.predictions
    nblocks = int(pr.get("blocks_segments", 0))
    if c.bounds is None:
        kind = "packed"
    elif c.copies is not None and bool((c.copies >= 0).any()):
        kind = "copies"
    elif not nblocks:
        kind = "shared"
    else:
        kind = "blocks" if nblocks == pr.get("segments") else "mixed"
    return {
        "kind": kind,
        "segment_len": c.segment_len,
        "blowup": pr["blowup"],
        "disk_bytes_per_pass": pr["disk_bytes_per_pass"],
        "predicted_amplification": pr["predicted_amplification"],
        "largest_segment_bytes": pr.get("largest_segment_bytes", 0),
        "copies": pr.get("copies", 0),
    }

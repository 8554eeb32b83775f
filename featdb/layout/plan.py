"""The layout planner's types and per-segment work: pure functions of a trace (no disk).

Given how often each node is read and, per batch, which nodes it reads:

* the hot set, by access count: the hottest rows in L1 (device), the next in
  L2 (host), as far as each budget allows (:func:`hot_sets`);
* the segments (chosen under the disk and memory budgets by
  :mod:`featdb.layout.budget`): runs of consecutive batches that are either
  packed (a shared L3 extent of the cold rows read by >= 2 of their batches,
  stored once, and one L4 extent per batch) or *blocks* (nothing stored: the
  segment's cold rows are read from the base table as one sorted set);
* for each batch (computed on demand by :func:`assign_segment`), the serving
  order of its input rows: L4 rows first (sorted by node id, exactly the bytes
  of its batch extent), then L3 rows, then L2, then L1 — so the extent can be
  read straight into the head of the output buffer.

Within a segment's L3 extent, rows are ordered by a MinHash of the set of the
segment's batches that read them, so rows read together share pages.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import ConfigError, InvalidInputError
from ..io import PAGE, round_up
from ..runs import bytes_read
from ..tables import HEADER_BYTES

POLICIES = ("full", "pack-only", "blocks", "hot-only", "none")
L4, L3, L2, L1 = 0, 1, 2, 3
MINHASH_K = 3
SEGMENT_CACHE_BYTES = 512 << 20  # default memory for whole segments while serving (two: one read ahead)
_PRIME = (1 << 31) - 1  # a * batch index stays inside int64

Trace = Callable[[Sequence[int]], Iterable[NDArray[Any]]]  # batch ids -> their input ids, in order


@dataclass(frozen=True, slots=True)
class Budgets:
    device_cache: int = 0
    host_cache: int = 0
    max_blowup: float | None = None
    policy: str = "full"
    seed: int = 0
    segment_cache: int = SEGMENT_CACHE_BYTES

    def validate(self) -> None:
        if self.policy not in POLICIES:
            raise InvalidInputError(f"policy {self.policy!r}: one of {', '.join(POLICIES)}")
        if self.device_cache < 0 or self.host_cache < 0 or self.segment_cache < 0:
            raise InvalidInputError("cache sizes must not be negative")
        if self.max_blowup is not None and not self.max_blowup >= 0.0:  # NaN fails too
            raise ConfigError(f"--max-blowup {self.max_blowup}: a number of table copies, 0 or more")

    @property
    def segment_limit(self) -> int:
        """The largest segment held whole in memory: half the segment cache, so the next one
        can be read ahead while it is served."""
        return self.segment_cache // 2


@dataclass(frozen=True, slots=True)
class Placement:
    """The planner's global decisions; per-batch details come from :func:`assign_segment`."""

    num_nodes: int
    row_bytes: int
    num_batches: int
    policy: str
    l1_ids: NDArray[Any]  # sorted node ids held in device memory
    l2_ids: NDArray[Any]  # sorted node ids held in host memory
    segment_len: int  # consecutive batches sharing one L3 extent (1: no L3); the longest when bounds are set
    seed: int
    predictions: dict[str, Any] = field(default_factory=dict)
    bounds: NDArray[Any] | None = None  # first batch of each segment, then num_batches (None: segment_len apart)
    blocks: NDArray[Any] | None = None  # per segment: True where nothing is stored for its rows
    copies: NDArray[Any] | None = None  # per blocks segment: the copy it reads from (-1: the base table)
    epochs: int = 0  # the first train_batches batches are this many training epochs
    train_batches: int = 0
    segment_cache: int = SEGMENT_CACHE_BYTES
    base_row_bytes: int = 0  # a base-table row's bytes, when the layout stores rows narrower (0: row_bytes)

    @property
    def base_rb(self) -> int:
        return self.base_row_bytes or self.row_bytes

    @property
    def packs(self) -> bool:
        """Whether cold rows are copied into extents (some segments may still be blocks)."""
        return self.policy in ("full", "pack-only")

    @property
    def segmented(self) -> bool:
        """Whether cold rows are served through segments (packed extents or blocks of the base table)."""
        return self.packs or self.policy == "blocks"

    def is_blocks(self, si: int) -> bool:
        return self.policy == "blocks" or (self.blocks is not None and bool(self.blocks[si]))

    def copy_of(self, si: int) -> int:
        return -1 if self.copies is None else int(self.copies[si])

    def tier_map(self) -> NDArray[Any]:
        """int8 per node: L1, L2, else L4 (cold; L3 membership is per segment)."""
        tier = np.zeros(self.num_nodes, dtype=np.int8)
        tier[self.l2_ids] = L2
        tier[self.l1_ids] = L1
        return tier

    def segments(self) -> list[tuple[int, int]]:
        if self.bounds is not None:
            b = self.bounds.tolist()
            return list(itertools.pairwise(b))
        s = max(1, self.segment_len)
        return [(lo, min(self.num_batches, lo + s)) for lo in range(0, self.num_batches, s)]


@dataclass(frozen=True, slots=True)
class BatchPlan:
    order: NDArray[Any]  # positions into the batch's input ids: L4, L3, L2, L1 rows in serving order
    n4: int
    n3: int
    n2: int
    n1: int
    l4_ids: NDArray[Any]  # sorted node ids stored in this batch's extent
    l3_rows: NDArray[Any]  # rows of the segment's L3 extent; node ids of the base table if not packed
    l2_slots: NDArray[Any]  # rows of the host cache
    l1_slots: NDArray[Any]  # rows of the device cache


@dataclass(frozen=True, slots=True)
class SegmentPlan:
    first_batch: int
    l3_ids: NDArray[Any]  # node ids of the shared extent, in stored (MinHash) order; blocks: sorted
    batches: tuple[BatchPlan, ...]
    blocks: bool = False  # the segment's rows are read as one set from the base table or a copy
    copy: int = -1  # the copy a blocks segment reads (-1: the base table)
    l3_pos: NDArray[Any] | None = None  # a copy's segment: positions of l3_ids in the copy (ascending)


def hot_sets(counts: NDArray[Any], row_bytes: int, budgets: Budgets) -> tuple[NDArray[Any], NDArray[Any]]:
    """L1 and L2 node ids (sorted): the most-read rows that fit each budget; ties broken by seed."""
    if budgets.policy in ("pack-only", "none"):
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    rng = np.random.default_rng(budgets.seed)
    read = np.flatnonzero(counts > 0)
    rank = read[np.lexsort((rng.random(len(read)), -counts[read]))]
    n1 = min(len(rank), budgets.device_cache // row_bytes)
    n2 = min(len(rank) - n1, budgets.host_cache // row_bytes)
    return np.sort(rank[:n1]), np.sort(rank[n1 : n1 + n2])


def _minhash(n_rows: int, batch_rows: Sequence[NDArray[Any]], seed: int) -> NDArray[Any]:
    """Per row (0..n_rows-1), MINHASH_K minima of hashed indices of the batches that read it."""
    rng = np.random.default_rng([seed, 7])
    a = rng.integers(1, _PRIME, size=(MINHASH_K, 1), dtype=np.int64)
    c = rng.integers(0, _PRIME, size=(MINHASH_K, 1), dtype=np.int64)
    sig = np.full((MINHASH_K, n_rows), _PRIME, dtype=np.int64)
    for j, rows in enumerate(batch_rows):
        h = (a * (j + 1) + c) % _PRIME
        sig[:, rows] = np.minimum(sig[:, rows], h)
    return sig


def assign_segment(
    p: Placement,
    first_batch: int,
    inputs: Sequence[NDArray[Any]],
    tier: NDArray[Any],
    scratch: NDArray[Any],
    blocks: bool = False,
    copy: tuple[int, NDArray[Any]] | None = None,
) -> SegmentPlan:
    """Per batch serving order and tier positions for one segment of consecutive batches.

    ``tier`` is :meth:`Placement.tier_map`; ``scratch`` an int64 array of
    ``num_nodes`` entries, all -1, returned to all -1. A ``blocks`` segment
    stores nothing: all its cold rows, sorted, are read from the base table
    as one set and its batches gather from that (their "L3" rows). With
    ``copy`` (the copy's number and each node's position in it) the set is read
    from that copy instead, in the copy's order.
    """
    cold = [ids[tier[ids] == L4] for ids in inputs] if p.segmented else [ids[:0] for ids in inputs]
    l3_pos = None
    if blocks:
        l3_ids = np.unique(np.concatenate(cold)) if cold else np.zeros(0, dtype=np.int64)
        if copy is not None:
            at = copy[1][l3_ids]
            order = np.argsort(at, kind="stable")
            l3_ids, l3_pos = l3_ids[order], at[order]
        scratch[l3_ids] = np.arange(len(l3_ids))
    else:
        l3_ids = _shared_rows(cold) if len(inputs) > 1 else np.zeros(0, dtype=np.int64)
    if len(l3_ids) and not blocks:
        scratch[l3_ids] = np.arange(len(l3_ids))
        sig = _minhash(len(l3_ids), [scratch[c[scratch[c] >= 0]] for c in cold], p.seed)
        l3_ids = l3_ids[np.lexsort(sig[::-1])]
        scratch[l3_ids] = np.arange(len(l3_ids))
    plans = tuple(_assign_batch(p, ids, tier, scratch) for ids in inputs)
    if len(l3_ids):
        scratch[l3_ids] = -1
    return SegmentPlan(first_batch, l3_ids, plans, blocks, -1 if copy is None else copy[0], l3_pos)


def _shared_rows(cold: Sequence[NDArray[Any]]) -> NDArray[Any]:
    """Cold rows read by at least two of the segment's batches (sorted)."""
    allc = np.concatenate(cold) if cold else np.zeros(0, dtype=np.int64)
    if not len(allc):
        return allc
    uniq, n = np.unique(allc, return_counts=True)
    shared: NDArray[Any] = uniq[n >= 2]
    return shared


def _assign_batch(p: Placement, ids: NDArray[Any], tier: NDArray[Any], l3pos: NDArray[Any]) -> BatchPlan:
    t = tier[ids]
    pos = np.arange(len(ids), dtype=np.int64)
    in3 = (t == L4) & (l3pos[ids] >= 0) if p.segmented else np.zeros(len(ids), dtype=bool)
    m4 = (t == L4) & ~in3
    p4 = pos[m4][np.argsort(ids[m4], kind="stable")]
    p3, p2, p1 = pos[in3], pos[t == L2], pos[t == L1]
    if not p.segmented:  # hot-only and none: cold rows come from the base table
        p4, p3 = pos[:0], pos[m4]
    order = np.concatenate([p4, p3, p2, p1])
    return BatchPlan(
        order,
        len(p4),
        len(p3),
        len(p2),
        len(p1),
        ids[p4],
        l3pos[ids[p3]] if p.segmented else ids[p3],
        np.searchsorted(p.l2_ids, ids[p2]),
        np.searchsorted(p.l1_ids, ids[p1]),
    )


class Predictor:
    """Accumulates blowup, rows per tier and disk bytes over segment plans as they are made.

    Segment costs follow the reader: a segment held whole in memory (its shared
    extent, or a blocks segment's rows) is read once, when it fits the segment
    cache; else each batch reads its own pages.
    """

    def __init__(self, p: Placement) -> None:
        self.p = p
        self.stored = self.disk_rows = self.l4_bytes = self.l3_bytes = self.l3_page_bytes = 0
        self.segments = self.blocks_segments = self.largest_segment = self.copies = self.copy_rows = 0
        self.train_bytes = self.train_need = 0
        self.rows = {"l1": 0, "l2": 0, "l3": 0, "l4": 0}

    def add_copy(self, rows: int) -> None:
        """A copy of ``rows`` rows is stored (once, however many segments read it)."""
        self.stored += rows
        self.copies += 1
        self.copy_rows += rows

    def add(self, seg: SegmentPlan) -> None:
        before, rows = self.l3_bytes + self.l4_bytes, self.disk_rows
        self._add(seg)
        if seg.first_batch < self.p.train_batches:
            self.train_bytes += self.l3_bytes + self.l4_bytes - before
            self.train_need += (self.disk_rows - rows) * self.p.row_bytes

    def _add(self, seg: SegmentPlan) -> None:
        p, rb = self.p, self.p.row_bytes
        brb = p.base_rb if seg.l3_pos is None else rb  # a blocks segment reads the base table or a copy
        self.stored += (0 if seg.blocks else len(seg.l3_ids)) + sum(bp.n4 for bp in seg.batches)
        in_extent = p.packs and not seg.blocks  # positions into a packed extent, else base-table rows
        pages = 0
        for bp in seg.batches:
            for tier, n in (("l1", bp.n1), ("l2", bp.n2), ("l3", bp.n3), ("l4", bp.n4)):
                self.rows[tier] += n
            self.disk_rows += bp.n3 + bp.n4
            self.l4_bytes += round_up(bp.n4 * rb)
            if seg.blocks:  # the reader fetches just these rows when the segment is too large to hold
                pages += bytes_read(_starts(seg, np.unique(bp.l3_rows), brb), brb)
            else:
                pages += _pages_touched(bp.l3_rows, rb if in_extent else p.base_rb, in_extent) * PAGE
        held = len(seg.l3_ids) * brb if seg.blocks else round_up(len(seg.l3_ids) * rb)
        self.segments += 1
        self.blocks_segments += seg.blocks
        self.largest_segment = max(self.largest_segment, held)
        self.l3_page_bytes += pages
        if p.segmented and 0 < held <= p.segment_cache:
            self.l3_bytes += bytes_read(_starts(seg, np.arange(len(seg.l3_ids)), brb), brb) if seg.blocks else held
        else:
            self.l3_bytes += pages

    def result(self) -> dict[str, Any]:
        p, total = self.p, sum(self.rows.values())
        need = self.disk_rows * p.row_bytes
        disk = self.l4_bytes + self.l3_bytes
        return {
            "blowup": round(self.stored / p.num_nodes, 4) if p.num_nodes else 0.0,
            "blowup_bytes": round(self.stored * p.row_bytes / (p.num_nodes * p.base_rb), 4) if p.num_nodes else 0.0,
            "stored_rows": self.stored,
            "l3_l4_bytes": self.stored * p.row_bytes,
            "rows_per_tier": dict(self.rows),
            "requested_rows": total,
            "hit_rate": {k: round(v / total, 4) if total else 0.0 for k, v in self.rows.items()},
            "disk_bytes_per_pass": disk,
            "disk_bytes_per_epoch": self.train_bytes // p.epochs if p.epochs else None,
            "predicted_amplification_per_epoch": round(self.train_bytes / self.train_need, 4)
            if self.train_need
            else None,
            "predicted_amplification": round(disk / need, 4) if need else 0.0,
            "predicted_amplification_l3_by_page": round((self.l4_bytes + self.l3_page_bytes) / need, 4)
            if need
            else 0.0,
            "segments": self.segments,
            "blocks_segments": self.blocks_segments,
            "copies": self.copies,
            "copy_rows": self.copy_rows,
            "largest_segment_bytes": self.largest_segment,
            "segment_cache_bytes": p.segment_cache,
        }


def _starts(seg: SegmentPlan, rows: NDArray[Any], rb: int) -> NDArray[Any]:
    """Byte offsets of a blocks segment's rows (positions in its set) in the file they are read from
    (a copy's offsets relative to its page-aligned start)."""
    if seg.l3_pos is not None:
        out: NDArray[Any] = seg.l3_pos[rows] * rb
    else:
        out = HEADER_BYTES + seg.l3_ids[rows] * rb
    return out


def copy_order(trace: Trace, spans: Sequence[tuple[int, int]], tier: NDArray[Any]) -> NDArray[Any]:
    """The rows of one copy, in stored order: every cold row the segments ``spans`` read, sorted by
    the set of those segments that read it (in Gray code order, then by id). A segment's rows then lie in whole runs of
    rows read by the same segments, so reading them from the copy is nearly sequential."""
    words = max(1, -(-len(spans) // 64))
    mask = np.zeros((words, len(tier)), dtype=np.uint64)
    for j, (lo, hi) in enumerate(spans):
        bit = np.uint64(1) << np.uint64(j % 64)
        for ids in trace(range(lo, hi)):
            cold = ids[tier[ids] == L4]
            mask[j // 64, cold] |= bit
    rows = np.flatnonzero(mask.any(axis=0))
    keys = [_gray_rank(mask[w, rows]) for w in reversed(range(words))]
    out: NDArray[Any] = rows[np.lexsort((rows, *keys))]
    return out


def _gray_rank(m: NDArray[Any]) -> NDArray[Any]:
    """Each mask's position in the reflected Gray code sequence: sorted by it, neighbouring masks
    differ in one segment, so each segment's rows fall into about half as many runs as in plain
    binary order."""
    r = m.copy()
    for shift in (1, 2, 4, 8, 16, 32):
        r ^= r >> np.uint64(shift)
    return r


class Copies:
    """Each copy's order and every node's position in it, computed when its first segment comes."""

    def __init__(self, p: Placement, trace: Trace, tier: NDArray[Any]) -> None:
        self.p, self.trace, self.tier = p, trace, tier
        self.segments = p.segments()
        self.current = -1
        self.ids: NDArray[Any] = np.zeros(0, dtype=np.int64)
        self.pos: NDArray[Any] = np.zeros(0, dtype=np.int64)

    def of(self, si: int) -> tuple[tuple[int, NDArray[Any]] | None, bool]:
        """(copy number, positions) for segment ``si`` (None when it reads no copy), and whether
        that copy starts here."""
        c = self.p.copy_of(si)
        if c < 0:
            return None, False
        fresh = c != self.current
        if fresh:
            spans = [self.segments[j] for j in range(len(self.segments)) if self.p.copy_of(j) == c]
            self.ids = copy_order(self.trace, spans, self.tier)
            self.pos = np.full(self.p.num_nodes, -1, dtype=np.int64)
            self.pos[self.ids] = np.arange(len(self.ids))
            self.current = c
        return (c, self.pos), fresh


def predict(p: Placement, trace: Trace) -> dict[str, Any]:
    """Blowup, bytes read per pass and read amplification of serving every batch once."""
    tier = p.tier_map()
    scratch = np.full(p.num_nodes, -1, dtype=np.int32)
    acc = Predictor(p)
    copies = Copies(p, trace, tier)
    for si, (lo, hi) in enumerate(p.segments()):
        copy, fresh = copies.of(si)
        if fresh:
            acc.add_copy(len(copies.ids))
        acc.add(assign_segment(p, lo, list(trace(range(lo, hi))), tier, scratch, p.is_blocks(si), copy))
    return acc.result()


def _pages_touched(pos: NDArray[Any], row_bytes: int, packed: bool) -> int:
    """Distinct pages holding the rows at ``pos`` (row positions in an extent or base table)."""
    if not len(pos):
        return 0
    base = 0 if packed else PAGE  # the base table's header page
    start = base + pos * row_bytes
    first, last = start // PAGE, (start + row_bytes - 1) // PAGE
    span = last - first + 1
    if int(span.max()) == 1:
        return len(np.unique(first))
    pages = np.repeat(first, span) + (np.arange(int(span.sum())) - np.repeat(np.cumsum(span) - span, span))
    return len(np.unique(pages))

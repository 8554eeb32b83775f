"""The batched packer: applies a placement, writing a complete new generation.

The base table is streamed sequentially in chunks sized by the memory budget
(the next chunk is read while the current one is scattered). Each chunk's rows
go to every extent that needs them: L4 rows with one positioned write per
(chunk, extent) piece — an extent holds its rows sorted by node id, so a
chunk's share of it is contiguous — with the extent's crc32 carried along;
L3 rows into a staging buffer written whole per segment. When the work for all
batches does not fit the budget, batches are packed in groups, one sequential
pass of the base table per group. A blocks segment stores no rows, only the
sorted ids of its cold rows (``blocks.i64``), which the reader fetches from the
base table.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import ConfigError, SchemaMismatchError
from ..io import PAGE, ChecksumWriter, round_up, write_all, write_atomic
from ..memory import DEFAULT_BUDGET, RUNTIME_BYTES, MemoryBudget
from ..pagesums import DEFAULT as EXTENT_CHECKSUM
from ..pagesums import PageCrcs
from ..progress import Progress
from ..rowformat import ColumnStats, RowFormat
from ..sampling.sampleset import SampleSet
from ..store import Store
from ..tables import Schema, TableReader, TableWriter, id_dtype
from ..traces import Trace
from . import generation
from .budget import in_rows, plan
from .document import DEFAULT_MAX_AMPLIFICATION, SEG_COLS, layout_doc, plan_warnings, require_room, serving_groups
from .extents import EXTENT_CRC, ExtentWriter, base_chunks, extent_crcs
from .plan import Budgets, Copies, Placement, Predictor, SegmentPlan, assign_segment

BATCH_COLS = 8  # n4, n3, n2, n1, l4_offset, l4_crc, map_offset, segment


@dataclass
class _Group:
    """Extents whose rows one pass over the base table will fill."""

    l4_ids: list[NDArray[Any]] = field(default_factory=list)
    l4_batch: list[int] = field(default_factory=list)
    l4_off: list[int] = field(default_factory=list)
    l3_ids: list[NDArray[Any]] = field(default_factory=list)
    l3_seg: list[int] = field(default_factory=list)
    l3_off: list[int] = field(default_factory=list)
    cp_ids: list[NDArray[Any]] = field(default_factory=list)  # copies: rows in copy order
    cp_key: list[int] = field(default_factory=list)
    cp_off: list[int] = field(default_factory=list)
    bytes: int = 0

    def empty(self) -> bool:
        return not self.l4_ids and not self.l3_ids and not self.cp_ids


def pack(
    store: Store,
    sample_set: str | None,
    table: str | None,
    budgets: Budgets,
    memory_budget: int = DEFAULT_BUDGET,
    dry_run: bool = False,
    progress: Progress = None,
    max_amplification: float = DEFAULT_MAX_AMPLIFICATION,
    strict: bool = False,
    trace: str | None = None,
    row_format: str | None = None,
) -> dict[str, Any]:
    """Plan and (unless ``dry_run``) write a new generation from a sample set, or from the
    trace ``trace`` (``sample_set=None``; ``table`` defaults to the trace's); returns its document.

    ``row_format`` (see :mod:`featdb.rowformat`; default the table's dtype) is how the
    tiers and extents store rows; the cap ``budgets.max_blowup`` counts their bytes
    against the base table's.

    When the plan predicts a read amplification above ``max_amplification`` the
    document carries a warning naming the budgets to raise; ``strict`` refuses
    instead (:class:`~featdb.errors.ConfigError`, nothing written)."""
    if not dry_run:
        store.require_writable()
    with _source(store, sample_set, trace) as ss:
        table = table or (ss.table if isinstance(ss, Trace) else DEFAULT_TABLE)
        if isinstance(ss, Trace) and table != ss.table:
            raise ConfigError(f"trace {trace!r} reads table {ss.table!r}, not {table!r}")
        schema = store.schema(table)
        if ss.num_nodes != schema.rows:
            raise SchemaMismatchError(
                f"sample set {sample_set!r} covers {ss.num_nodes:,} nodes, table {table!r} has {schema.rows:,} rows"
            )
        work = working_budget(memory_budget, ss.num_nodes, schema.row_bytes)
        started = time.perf_counter()
        fmt = _row_format(store, table, schema, row_format, work)
        groups = ss.groups() if isinstance(ss, Trace) else serving_groups(ss)
        counts, capped = ss.counts(), in_rows(budgets, fmt.row_bytes, schema.row_bytes)
        placement = plan(
            counts, ss.inputs_of, ss.num_batches, fmt.row_bytes, capped, groups, dry_run, ss.epochs, schema.row_bytes
        )
        plan_s = time.perf_counter() - started
        warnings = plan_warnings(placement, budgets, max_amplification)
        if strict and warnings:
            raise ConfigError(f"{warnings[0]} (--strict: nothing written)")
        if dry_run:
            doc = layout_doc(placement, sample_set or "", table, schema, budgets, memory_budget, plan_s)
            return doc | fmt.doc() | _source_fields(ss) | {"dry_run": True, "warnings": warnings}
        require_room(store.root, placement, counts, fmt.row_bytes)
        gen_id = generation.new_id()
        tmp, lock = generation.partial_dir(store, gen_id)
        try:
            acc = Predictor(placement)
            files = _write(store, ss, placement, fmt, table, tmp, work, progress, acc)
            placement = replace(placement, predictions=placement.predictions | acc.result())
            doc = layout_doc(placement, sample_set or "", table, schema, budgets, memory_budget, plan_s) | fmt.doc()
            doc["table_file"] = store.table_info(table)["file"]
            doc |= _source_fields(ss)  # a set sampled (a trace added) again under the same name is another one
            doc["pack_s"] = round(time.perf_counter() - started, 3)
            doc["warnings"] = warnings
            doc["checksum"] = EXTENT_CHECKSUM  # extents and the .crc sidecars' pages (read paths check them)
            generation.publish(store, gen_id, tmp, doc, files)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        finally:
            os.close(lock)
    return doc | {"id": gen_id}


DEFAULT_TABLE = "node/_/feat"


def _source(store: Store, sample_set: str | None, trace: str | None) -> SampleSet | Trace:
    """The sample set or the trace a layout is planned from (exactly one of the two)."""
    if (sample_set is None) == (trace is None):
        raise ConfigError("pack from a sample set or from a trace: name exactly one of the two")
    return Trace(store, trace) if trace is not None else SampleSet(store, str(sample_set))


def _row_format(store: Store, table: str, schema: Schema, name: str | None, work: int) -> RowFormat:
    """The format the layout stores rows in; float16 and int8 first take the table's column
    ranges in one sequential pass (what they cannot hold is refused before anything is written)."""
    if name is None or name == schema.dtype or name not in ("float16", "int8"):
        return RowFormat.choose(name, schema.dtype, schema.dim)
    RowFormat(name, schema.dtype, schema.dim, np.ones((2, schema.dim)))  # a table it cannot convert: refused now
    reader = store.open_table(table, threads=2, verify=True)
    try:
        chunk_rows = max(1, work // 3 // schema.row_bytes)
        rows = (c.view(schema.dtype).reshape(hi - lo, schema.dim) for lo, hi, c in base_chunks(reader, chunk_rows))
        return RowFormat.choose(name, schema.dtype, schema.dim, ColumnStats.of(rows, schema.dim))
    finally:
        reader.close()


def _source_fields(ss: SampleSet | Trace) -> dict[str, Any]:
    if isinstance(ss, Trace):
        return {"trace": ss.name, "trace_uid": ss.uid}
    return {"sample_set_uid": ss.uid}


PER_NODE_BYTES = 4 + 1 + 4 + 4 + 4  # read counts, tier map, L3 position scratch, two trace-pass marks
MIN_WORK = 8 << 20


def working_budget(memory_budget: int, num_nodes: int, row_bytes: int) -> int:
    """What is left of the budget for chunks and scatter lists once per-node arrays are paid for;
    :class:`~featdb.errors.BudgetExceededError` (naming the parts) when not even the minimum is."""
    m = MemoryBudget(memory_budget, f"pack ({num_nodes:,} nodes)")
    m.charge("runtime", RUNTIME_BYTES)
    m.charge(f"per-node arrays ({PER_NODE_BYTES} B/node)", num_nodes * PER_NODE_BYTES)
    return m.fit("chunks, gathered slices and scatter lists", memory_budget, minimum=max(MIN_WORK, 16 * row_bytes))


def _write(
    store: Store,
    ss: SampleSet | Trace,
    p: Placement,
    fmt: RowFormat,
    table: str,
    tmp: Path,
    memory_budget: int,
    progress: Progress,
    acc: Predictor,
) -> dict[str, dict[str, Any]]:
    rb = fmt.row_bytes  # what every extent and tier stores per row
    id_dt = id_dtype(p.num_nodes)
    tier = p.tier_map()
    scratch = np.full(p.num_nodes, -1, dtype=np.int32)
    batches = np.zeros((p.num_batches, BATCH_COLS), dtype=np.int64)
    segs = np.zeros((len(p.segments()), SEG_COLS), dtype=np.int64)
    reader = store.open_table(table, threads=8, verify=True)  # what is copied is checked first
    fd4 = os.open(tmp / "l4.dat", os.O_RDWR | os.O_CREAT, 0o644)
    fd3 = os.open(tmp / "l3.dat", os.O_RDWR | os.O_CREAT, 0o644)
    fdc = os.open(tmp / "copies.dat", os.O_RDWR | os.O_CREAT, 0o644)
    fds = (fd4, fd3, fdc)
    copies = Copies(p, ss.inputs_of, tier)
    copy_index: list[tuple[int, int, int]] = []  # offset, rows, crc per copy
    l3_pages: dict[int, list[int]] = {}  # each L3 extent's offset -> the crcs of its pages
    files: dict[str, dict[str, Any]] = {}
    hot_all = _HotWriters(tmp, p, fmt)
    try:
        with ChecksumWriter(tmp / "map.bin") as mapw, ChecksumWriter(tmp / "blocks.i64") as blocksw:
            cursor = {"l4": 0, "l3": 0, "copies": 0}
            group = _Group()
            hot: _HotWriters | None = hot_all
            for si, (lo, hi) in enumerate(p.segments()):
                copy, fresh = copies.of(si)
                if fresh:
                    acc.add_copy(len(copies.ids))
                    copy_index.append((cursor["copies"], len(copies.ids), 0))
                    group.cp_ids.append(copies.ids)
                    group.cp_key.append(-len(copy_index))
                    group.cp_off.append(cursor["copies"])
                    group.bytes += len(copies.ids) * 40
                    cursor["copies"] += round_up(len(copies.ids) * rb)
                inputs = list(ss.inputs_of(range(lo, hi)))
                sp = assign_segment(p, lo, inputs, tier, scratch, p.is_blocks(si), copy)
                acc.add(sp)
                if sp.blocks:
                    where = sp.l3_ids if sp.l3_pos is None else sp.l3_pos
                    segs[si, 5:8] = (blocksw.size // 8, len(sp.l3_ids), -1 if copy is None else copy_index[-1][0])
                    blocksw.write(where.astype("<i8").tobytes())
                else:
                    segs[si, 7] = -1
                _record_segment(sp, si, batches, segs, mapw, group, cursor, rb, id_dt)
                if progress:
                    progress(hi - lo)
                if group.bytes > memory_budget * 2 // 5:
                    _base_pass(reader, fmt, group, hot, fds, batches, segs, l3_pages, memory_budget, progress)
                    group, hot = _Group(), None
            if not group.empty() or hot is not None:
                _base_pass(reader, fmt, group, hot, fds, batches, segs, l3_pages, memory_budget, progress)
            mapw.commit()
            blocksw.commit()
            files["map.bin"] = {"size": mapw.size, "crcs": mapw.crcs, "kind": "layout"}
            files["blocks.i64"] = {"size": blocksw.size, "crcs": blocksw.crcs, "kind": "layout"}
        copy_index, copy_pages = extent_crcs(fdc, copy_index, rb)
        indexes = {
            "l4.dat": ("batches.i64", BATCH_COLS, [4, 0, 5]),
            "l3.dat": ("segments.i64", SEG_COLS, [2, 3, 4]),
            "copies.dat": ("copies.i64", 3, [0, 1, 2]),
        }
        for fd, name, total in zip(fds, indexes, (cursor["l4"], cursor["l3"], cursor["copies"]), strict=True):
            os.ftruncate(fd, total)
            os.fsync(fd)
            index, width, cols = indexes[name]
            files[name] = {
                "size": total,
                "crcs": [],
                "kind": "extents",
                "checksum": EXTENT_CHECKSUM,
                "index": index,
                "width": width,
                "cols": cols,
                "row_bytes": rb,
            }
        l3_crcs = np.zeros(cursor["l3"] // PAGE, dtype="<u4")
        for off, crcs in l3_pages.items():
            l3_crcs[off // PAGE : off // PAGE + len(crcs)] = crcs
        named = [("copies.crc", copy_pages), ("l3.crc", l3_crcs.tobytes())]  # pages read piecemeal
        if fmt.scales is not None:
            named.append(("scales.f32", fmt.scales.astype("<f4").tobytes()))
        for name, raw in named:
            size, crcs = write_atomic(tmp / name, raw)
            files[name] = {"size": size, "crcs": crcs, "kind": "layout"}
        for name, arr in (
            ("batches.i64", batches),
            ("segments.i64", segs),
            ("copies.i64", np.asarray(copy_index, dtype=np.int64).reshape(-1, 3)),
            ("l1_ids.i64", p.l1_ids.astype("<i8")),
            ("l2_ids.i64", p.l2_ids.astype("<i8")),
        ):
            size, crcs = write_atomic(tmp / name, arr.astype("<i8").tobytes())
            files[name] = {"size": size, "crcs": crcs, "kind": "layout"}
        files |= hot_all.records
    except BaseException:
        hot_all.abort()
        raise
    finally:
        for fd in fds:
            os.close(fd)
        reader.close()
    return files


def _record_segment(
    sp: SegmentPlan,
    si: int,
    batches: NDArray[Any],
    segs: NDArray[Any],
    mapw: ChecksumWriter,
    group: _Group,
    cursor: dict[str, int],
    rb: int,
    id_dt: np.dtype[Any],
) -> None:
    n3 = 0 if sp.blocks else len(sp.l3_ids)
    segs[si, :5] = (sp.first_batch, len(sp.batches), cursor["l3"], n3, 0)
    if n3:
        group.l3_ids.append(sp.l3_ids)
        group.l3_seg.append(si)
        group.l3_off.append(cursor["l3"])
        cursor["l3"] += round_up(n3 * rb)
        group.bytes += n3 * (rb + 32)
    for k, bp in enumerate(sp.batches):
        b = sp.first_batch + k
        map_off = mapw.size
        for arr, dt in ((bp.order, "<i4"), (bp.l3_rows, id_dt), (bp.l2_slots, "<i4"), (bp.l1_slots, "<i4")):
            mapw.write(np.asarray(arr).astype(dt, copy=False).tobytes())
        batches[b] = (bp.n4, bp.n3, bp.n2, bp.n1, cursor["l4"], 0, map_off, si)
        if bp.n4:
            group.l4_ids.append(bp.l4_ids)
            group.l4_batch.append(b)
            group.l4_off.append(cursor["l4"])
            cursor["l4"] += round_up(bp.n4 * rb)
            group.bytes += bp.n4 * 40


class _HotWriters:
    """Writes the L1 (device) and L2 (host) row files during the first base-table pass."""

    def __init__(self, tmp: Path, p: Placement, fmt: RowFormat) -> None:
        self.records: dict[str, dict[str, Any]] = {}
        self.parts = [
            (name, ids, TableWriter(tmp / name, Schema(fmt.stored.name, len(ids), fmt.dim)))
            for name, ids in (("device.tbl", p.l1_ids), ("host.tbl", p.l2_ids))
        ]

    def take(self, chunk: NDArray[Any], lo: int, hi: int) -> None:
        for _, ids, w in self.parts:
            a, b = np.searchsorted(ids, [lo, hi])
            if b > a:
                w.write(chunk[ids[a:b] - lo].view(w.schema.dtype))

    def abort(self) -> None:
        for _, _, w in self.parts:
            w.abort()

    def commit(self) -> None:
        for name, _, w in self.parts:
            rec = w.commit()
            self.records[name] = {"size": rec["size"], "crcs": rec["crcs"], "kind": "layout"}


def _base_pass(
    reader: TableReader,
    fmt: RowFormat,
    g: _Group,
    hot: _HotWriters | None,
    fds: tuple[int, int, int],
    batches: NDArray[Any],
    segs: NDArray[Any],
    l3_pages: dict[int, list[int]],
    memory_budget: int,
    progress: Progress,
) -> None:
    rb = fmt.row_bytes
    fd4, fd3, fdc = fds
    src, dst, ext = _targets(g.l4_ids, g.l4_off, g.l4_batch, rb)
    csrc, cdst, cext = _targets(g.cp_ids, g.cp_off, g.cp_key, rb)
    l3src, l3row, l3buf = _l3_targets(g, rb)
    crc = {b: 0 for b in g.l4_batch}
    unused = {k: 0 for k in g.cp_key}  # a copy's crc is taken when it is whole (its rows come out of order)
    # two read buffers and two gathered slices in flight, a fifth each of the working budget
    # (a chunk in a narrower row format is converted piece by piece into a sixth more)
    chunk_rows = max(1, (memory_budget // (5 if fmt.identity else 6)) // reader.schema.row_bytes)
    slice_rows = max(1, (memory_budget // 20) // rb)
    with (
        ExtentWriter(fd4, crc, slice_rows, rb) as writer,
        ExtentWriter(fdc, unused, slice_rows, rb, "copies.dat") as cwriter,
    ):
        for lo, hi, raw in base_chunks(reader, chunk_rows):
            chunk = fmt.encode_pieces(raw)
            a, b = np.searchsorted(src, [lo, hi])
            if b > a:
                writer.scatter(chunk, src[a:b] - lo, dst[a:b], ext[a:b])
            a, b = np.searchsorted(csrc, [lo, hi])
            if b > a:
                cwriter.scatter(chunk, csrc[a:b] - lo, cdst[a:b], cext[a:b])
                cwriter.drain()
            a, b = np.searchsorted(l3src, [lo, hi])
            if b > a:
                l3buf[l3row[a:b]] = chunk[l3src[a:b] - lo]
            if hot is not None:
                hot.take(chunk, lo, hi)
            writer.drain()  # the chunk's buffer is read ahead into again next
            if progress:
                progress(0)
    for bid in g.l4_batch:
        n = int(batches[bid, 0]) * rb
        batches[bid, 5] = EXTENT_CRC(bytes(round_up(n) - n), crc[bid])
    _write_l3(fd3, g, l3buf, segs, l3_pages, rb)
    if hot is not None:
        hot.commit()


def _targets(
    ids: list[NDArray[Any]], offs: list[int], keys: list[int], rb: int
) -> tuple[NDArray[Any], NDArray[Any], NDArray[Any]]:
    """For extents (rows ``ids[i]`` in order at byte offset ``offs[i]``): every row's source id,
    destination offset and extent key, sorted by source id."""
    if not ids:
        z = np.zeros(0, dtype=np.int64)
        return z, z, z
    lens = np.array([len(x) for x in ids])
    src = np.concatenate(ids)
    starts = np.repeat(np.asarray(offs, dtype=np.int64), lens)
    k = np.arange(len(src), dtype=np.int64) - np.repeat(np.cumsum(lens) - lens, lens)
    dst = starts + k * rb
    ext = np.repeat(np.asarray(keys, dtype=np.int64), lens)
    order = np.argsort(src, kind="stable")
    return src[order], dst[order], ext[order]


def _l3_targets(g: _Group, rb: int) -> tuple[NDArray[Any], NDArray[Any], NDArray[Any]]:
    if not g.l3_ids:
        z = np.zeros(0, dtype=np.int64)
        return z, z, np.zeros((0, rb), dtype=np.uint8)
    src = np.concatenate(g.l3_ids)
    order = np.argsort(src, kind="stable")
    return src[order], order, np.zeros((len(src), rb), dtype=np.uint8)


def _write_l3(
    fd: int, g: _Group, l3buf: NDArray[Any], segs: NDArray[Any], pages: dict[int, list[int]], rb: int
) -> None:
    pos = 0
    for ids, si, off in zip(g.l3_ids, g.l3_seg, g.l3_off, strict=True):
        raw = l3buf[pos : pos + len(ids)].tobytes()
        raw += bytes(round_up(len(raw)) - len(raw))
        write_all(fd, raw, off, name="l3.dat")
        segs[si, 4] = EXTENT_CRC(raw, 0)
        crcs = PageCrcs(EXTENT_CHECKSUM)
        crcs.update(memoryview(raw))
        pages[off] = crcs.crcs
        pos += len(ids)

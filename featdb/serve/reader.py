"""The tiered reader: serves a batch's input rows from L1 -> L2 -> L3 -> L4 (and the base table).

``read_batch(b)`` returns the rows in the layout's serving order (L4 rows, then
L3, L2, L1), which is how the batch's extent lies on disk: the L4 extent is
read by one direct sequential read straight into the head of a pooled,
page-aligned output buffer; L3 rows are gathered from the coalesced pages of
their segment extent; hot rows are gathered from memory into their slices.
``BatchRows.order`` maps the rows back to the sample's input order, and
``BatchRows.batch()`` gives the message-flow graph relabelled to match.
"""

from __future__ import annotations

import contextlib
import itertools
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import ConfigError, CorruptDataError
from ..io import PAGE, PageFile, aligned_buffer, round_up, start_pieces
from ..layout import generation
from ..layout.generation import Pin
from ..memory import MemoryBudget
from ..rowcopy import take_rows
from ..rowformat import layout_format
from ..sampling.mfg import Batch
from ..sampling.sampleset import SampleSet
from ..store import Store
from ..tables import check_ids, check_index, id_dtype
from ..traces.trace import Trace, layout_trace
from ..units import format_size
from .batch import BatchRows, Once, read_map
from .checks import ReadChecks
from .dynamic import RowCache
from .pool import BufferPool
from .segments import segment_cache_for
from .segread import SegmentReader, largest_segment, segment_index
from .stats import ServeStats
from .tiers import check_budget, read_ids, resolve_device

L4_PIECE = 16 << 20  # an extent larger than this is read as parallel pieces of this size
PAGE_SCRATCH_BYTES = 8 << 20  # per batch in flight: the page buffer of scattered L3/base reads


class LayoutReader:
    """Serves the current generation of a store; pins it while open.

    Rows come in the table's dtype, decoded from the layout's row format; ``out_dtype="stored"``
    serves :meth:`read_batch`'s rows as the layout stores them (``reader.fmt`` decodes them)."""

    def __init__(
        self,
        store: Store,
        *,
        sample_set: str | None = None,
        device: str = "auto",
        host_cache: int | None = None,
        device_cache: int | None = None,
        queue_depth: int = 4,
        threads: int = 4,
        cache_bytes: int = 0,
        cache_policy: str = "lru",
        buffer_timeout: float = 120.0,
        segment_cache_bytes: int | None = None,
        memory_budget: int | MemoryBudget | None = None,
        trace: str | None = None,
        table: str | None = None,
        out_dtype: str | None = None,
    ) -> None:
        self.store, self._trace, self._out_dtype = store, trace, out_dtype
        self.memory = (
            memory_budget
            if isinstance(memory_budget, MemoryBudget)
            else MemoryBudget(memory_budget or (1 << 62), "the reader")
        )
        self._pin = generation.Pin(store, table, trace, sample_set)
        self._files: list[Any] = []
        try:
            self._open(
                sample_set,
                device,
                host_cache,
                device_cache,
                queue_depth,
                threads,
                cache_bytes,
                cache_policy,
                buffer_timeout,
                segment_cache_bytes,
            )
        except BaseException:
            for pool in (getattr(self, "_exec", None), getattr(self, "_io", None), getattr(self, "_ahead", None)):
                if pool is not None:
                    pool.shutdown(wait=False)
            LayoutReader._cleanup(self._pin, self._files)
            raise
        self._finalizer = weakref.finalize(self, LayoutReader._cleanup, self._pin, self._files)

    # -- opening -----------------------------------------------------------------------
    def _open(
        self,
        sample_set: str | None,
        device: str,
        host_cache: int | None,
        device_cache: int | None,
        queue_depth: int,
        threads: int,
        cache_bytes: int,
        cache_policy: str,
        buffer_timeout: float,
        segment_cache_bytes: int | None,
    ) -> None:
        doc = self.doc = self._pin.doc
        if sample_set is not None and sample_set != doc["sample_set"]:
            raise ConfigError(
                f"the current layout was packed for sample set {doc['sample_set']!r}, "
                f"not {sample_set!r}: run featdb pack --sample-set {sample_set}"
            )
        info = self.store.table_info(doc["table"])
        if info["file"] != doc.get("table_file", info["file"]):
            raise ConfigError(f"table {doc['table']!r} was replaced after the layout was packed: repack")
        self.gen_dir = self.store.root / generation.GENS / doc["id"]
        self.dtype, self.dim, self.rb = np.dtype(doc["dtype"]), int(doc["dim"]), int(doc["row_bytes"])
        self.checks = ck = ReadChecks(self.store, self.gen_dir, doc, self.store.verify_reads)
        self.fmt = fmt = layout_format(doc, ck.scales())
        self.srb = fmt.row_bytes  # a row as the tiers and extents store it (rb: as the table has it)
        self.serve_stored = fmt.serves_stored(self._out_dtype)  # read_batch's rows as stored, not decoded
        self.policy = doc["policy"]
        self.segmented = doc["policy"] in ("full", "pack-only", "blocks")
        self.id_dt = id_dtype(int(doc["num_nodes"]))
        self.batches = ck.index("batches.i64", 8, doc["num_batches"])
        self.segs = segment_index(ck.index("segments.i64", 1).reshape(-1), doc.get("segment_cols", 5))
        self.l1_ids, self.l2_ids = (ck.index(f"{t}_ids.i64", 1).reshape(-1) for t in ("l1", "l2"))
        check_budget("host", len(self.l2_ids) * self.srb, host_cache)
        check_budget("device", len(self.l1_ids) * self.srb, device_cache)
        nmax = int(self.batches[:, :4].sum(axis=1).max(initial=0))
        largest = largest_segment(self.segs, self.srb, self.rb) if self.segmented else 0
        want = int(doc.get("segment_cache", 512 << 20)) if segment_cache_bytes is None else segment_cache_bytes
        # a batch's buffer holds its rows as served; a narrower row format is read into the buffer's tail
        # and decoded forward over it, or (rows also come from the base table) into a region of its own
        from_base = (self.segs[:, 6] > 0) & (self.segs[:, 7] < 0) if self.segmented else self.batches[:, 1] > 0
        self._tight = not fmt.identity and not bool(from_base.any())
        self._stage_at = 0 if fmt.identity or self._tight else round_up(nmax * self.rb)
        buffer_bytes = self._stage_at + round_up(nmax * (self.rb if self._tight else self.srb)) + 2 * PAGE
        queue_depth = self._charge(device, cache_bytes, buffer_bytes, queue_depth, min(want, 2 * largest))
        self.cache = RowCache(cache_bytes, cache_policy, self.rb) if cache_bytes else None
        self.host = ck.rows("host.tbl", self.dim, fmt.stored)
        self.device, self.l1 = self._load_device(device)
        self.l4 = self._add(PageFile(self.gen_dir / "l4.dat", direct=self.store.direct))
        self.l3 = self._add(PageFile(self.gen_dir / "l3.dat", direct=self.store.direct))
        self.base = self._add(self.store.open_table(doc["table"]))
        self._map_file = self._add(ck.blocks("map.bin"))
        self.stats = ServeStats(self.rb, self.srb, fmt.name)
        self._io = ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="featdb-io")
        self._ahead = ThreadPoolExecutor(max_workers=1, thread_name_prefix="featdb-read-ahead")
        copies = self.gen_dir / "copies.dat"
        cp = self._add(PageFile(copies, direct=self.store.direct)) if copies.exists() else None
        self.seg_reader = self._add(
            SegmentReader(self.segs, self.srb, self.l3, self.base, ck, cp, self._io, threads, self.stats, self.rb)
        )
        self.segments = segment_cache_for(self.memory, largest, want)
        self.seg_reader.limit = max(largest, self.segments.capacity // 2)
        self._next: dict[int, int] = {}
        self.stats.caches["segments"] = self.segments
        if self.cache is not None:
            self.stats.caches["rows"] = self.cache
        self.queue_depth = queue_depth
        self.pool = BufferPool(queue_depth + 2, buffer_bytes, buffer_timeout)
        self._exec = ThreadPoolExecutor(max_workers=max(1, queue_depth), thread_name_prefix="featdb-batch")
        self._sample_set: SampleSet | Trace | None = layout_trace(self.store, doc, self._trace, self._files)

    def _charge(self, device: str, cache_bytes: int, buffer_bytes: int, queue_depth: int, segments: int) -> int:
        """Charge what serving holds to the memory budget; returns the queue depth that fits.

        Fixed: the index arrays, the host tier (and the device tier when it stays on the
        host), the row cache, one page-read scratch buffer per batch in flight. Flexible:
        the queue depth (read buffers are depth + 2) from what the segment cache leaves.
        """
        m = self.memory
        m.charge("reader index", sum(a.nbytes for a in (self.batches, self.segs, self.l1_ids, self.l2_ids)))
        m.charge("host tier (L2)", len(self.l2_ids) * self.srb)
        if resolve_device(device) == "cpu":
            m.charge("device tier (L1), on the host", len(self.l1_ids) * self.srb)
        if cache_bytes:
            m.charge("row cache", cache_bytes)
        room = m.left() - 2 * buffer_bytes - segments  # whole segments come first: they save the most reads
        depth = max(1, min(queue_depth, room // (buffer_bytes + PAGE_SCRATCH_BYTES)))
        m.charge(f"read buffers ({depth + 2} x {format_size(buffer_bytes)})", (depth + 2) * buffer_bytes)
        m.charge("page-read scratch", depth * PAGE_SCRATCH_BYTES)
        m.check()
        return depth

    def _add(self, f: Any) -> Any:
        self._files.append(f)
        return f

    def _load_device(self, device: str) -> tuple[str, Any]:
        rows = self.checks.rows("device.tbl", self.dim, self.fmt.stored)
        want = resolve_device(device)
        if want == "cpu":
            return "cpu", rows
        import torch

        if not self.fmt.identity:  # kept as stored, decoded on the device as gathered
            rows = rows.view(np.uint8).reshape(len(rows), self.srb)
        return want, torch.from_numpy(rows).to(want)

    # -- serving -------------------------------------------------------------------------
    @property
    def num_batches(self) -> int:
        return len(self.batches)

    def epoch_order(self, batch_ids: Sequence[int], rng: np.random.Generator) -> list[int]:
        """A shuffled serving order that keeps each L3 segment's batches together.

        Segments are shuffled and so are batches within a segment; with no L3
        (segment length 1) this is a plain shuffle.
        """
        ids = np.asarray(batch_ids, dtype=np.int64)
        seg = self.batches[ids, 7]
        segs = np.unique(seg)
        rank = np.empty(int(segs.max(initial=0)) + 1, dtype=np.int64)
        rank[segs] = rng.permutation(len(segs))
        order: list[int] = ids[np.lexsort((rng.random(len(ids)), rank[seg]))].tolist()
        self.expect(order)
        return order

    def expect(self, batch_ids: Sequence[int]) -> None:
        """Tell the reader the order batches will be asked for, so that while one segment is
        served the next one held whole (skipping packed batches, which need none) is read
        ahead. :meth:`epoch_order` does; without it, segments in id order are assumed."""
        segs = self.batches[np.asarray(batch_ids, dtype=np.int64), 7]
        keep = np.ones(len(segs), dtype=bool)
        keep[1:] = segs[1:] != segs[:-1]
        run = [s for s in segs[keep].tolist() if self._held_whole(s)]
        self._next.update(itertools.pairwise(run))
        if run:
            self._next[run[-1]] = -1
            self.segments.prefetch(run[0], self.seg_reader.nbytes(run[0]), self.seg_reader.load, self._ahead, keep=-1)

    def _held_whole(self, seg: int) -> bool:
        return self.segmented and bool(self.segs[seg, 3] or self.segs[seg, 6])

    def read_batch(self, b: int, _ticket: int | None = None) -> BatchRows:
        """Batch ``b``'s input rows, in serving order (see :class:`BatchRows`)."""
        ticket = self.pool.ticket() if _ticket is None else _ticket
        try:
            check_index(b, self.num_batches, "batch")
            n4, n3, n2, n1, l4_off, l4_crc, map_off, seg = (int(x) for x in self.batches[b])
            order, l3_rows, l2_slots, l1_slots = self._map(map_off, n4, n3, n2, n1)
        except BaseException:
            self.pool.skip(ticket)
            raise
        buf = self.pool.acquire(ticket)
        try:
            n_host = n4 + n3 + n2 + (0 if self.device != "cpu" else n1)
            out = np.frombuffer(buf, dtype=np.uint8, count=n_host * self.rb).reshape(n_host, self.rb)
            at = round_up(n_host * (self.rb - self.srb)) if self._tight else self._stage_at
            stage = np.frombuffer(buf, dtype=np.uint8, count=n_host * self.srb, offset=at)
            stage = stage.reshape(n_host, self.srb)  # ``out`` itself when rows are stored as served
            l4_done = self._start_l4(memoryview(buf)[at:], n4, l4_off, l4_crc)
            try:  # the memory tiers are gathered while the device reads the batch extent
                l3_stored = self._read_l3(out[n4 : n4 + n3], stage[n4 : n4 + n3], l3_rows, seg)
                self._gather("l2", self.host, l2_slots, stage[n4 + n3 : n4 + n3 + n2])
                dev = self._gather_l1(l1_slots, stage[n4 + n3 + n2 :])
            finally:
                l4_done()
            if self.serve_stored and not l3_stored:  # L3 rows read from the base table, as stored
                stage[n4 : n4 + n3] = self.fmt.encode(out[n4 : n4 + n3])
            elif self._tight and not self.serve_stored:  # decoded on the batch's thread
                self.fmt.decode_forward(stage, out)
            elif not self.fmt.identity and not self.serve_stored:
                for lo, hi in ((0, n_host),) if l3_stored else ((0, n4), (n4 + n3, n_host)):
                    self.fmt.decode(stage[lo:hi], out[lo:hi])
        except BaseException:
            self.pool.release(buf)
            raise
        self.stats.count_batch()
        rows, dt = (stage, self.fmt.stored) if self.serve_stored else (out, self.dtype)
        return BatchRows(
            b,
            rows.view(dt).reshape(n_host, self.dim),
            order,
            dev,
            Once(self.pool.release, buf),
            self._sample_set,
        )

    def read_batch_async(self, b: int) -> Future[BatchRows]:
        """A future for :meth:`read_batch`; buffers go to batches in the order they were asked for."""
        ticket = self.pool.ticket()
        seg = int(self.batches[b, 7]) if 0 <= b < self.num_batches and self.segmented else -1
        if seg >= 0:
            self.segments.want(seg)
        fut = self._exec.submit(self.read_batch, b, ticket)

        def done(f: Future[BatchRows]) -> None:
            if f.cancelled():
                self.pool.skip(ticket)
            if seg >= 0:
                self.segments.want(seg, -1)

        fut.add_done_callback(done)
        return fut

    def prefetch(self, batch_ids: Iterable[int]) -> list[Future[BatchRows]]:
        """Futures for several batches; at most ``queue_depth`` read at once, buffers permitting."""
        return [self.read_batch_async(b) for b in batch_ids]

    def attach(self, sample_set: SampleSet) -> None:
        """Let :class:`BatchRows` carry input ids and :meth:`batch` return relabelled MFGs."""
        if sample_set.name != self.doc["sample_set"]:
            raise ConfigError(f"layout is for sample set {self.doc['sample_set']!r}, not {sample_set.name!r}")
        if not sample_set.same_as(self.store) or self.doc.get("sample_set_uid", sample_set.uid) != sample_set.uid:
            raise ConfigError(  # another store's set of that name, or one sampled again since the pack
                f"sample set {sample_set.name!r} at {sample_set.root} is not the one this layout was packed "
                f"for: run featdb pack --sample-set {sample_set.name}"
            )
        self._sample_set = sample_set

    def batch(self, b: int, order: NDArray[Any]) -> Batch:
        """The sample's MFG for batch ``b`` relabelled to the served row order."""
        if not isinstance(self._sample_set, SampleSet):
            raise ConfigError("attach(sample_set) first")
        return self._sample_set.batch(b).reordered(order)

    def _map(self, off: int, n4: int, n3: int, n2: int, n1: int) -> tuple[NDArray[Any], ...]:
        return read_map(self._map_file.pread, off, (n4, n3, n2, n1), self.id_dt)

    def _start_l4(self, buf: memoryview, n4: int, off: int, crc: int) -> Callable[[], None]:
        """Start reading the batch extent into the head of ``buf`` (one sequential read, in large pieces
        read in parallel); returns the function that waits for it (call it, error or not). Its last partial
        page goes to a page of its own, copied in when done (direct reads fill whole pages: the rows gathered
        meanwhile after the extent are never overwritten). The extent is checked against ``crc``."""
        if not n4:
            return lambda: None
        t = time.perf_counter()
        size = n4 * self.srb
        whole = size - size % PAGE
        waits = [start_pieces(self.l4, self._io, buf[:whole], off, L4_PIECE)] if whole else []
        last = aligned_buffer(PAGE) if whole < size else None
        if last is not None:
            waits.append(start_pieces(self.l4, self._io, memoryview(last), off + whole, PAGE))

        def done() -> None:
            n = sum(wait() for wait in waits)
            if self.checks.on:
                got = self.checks.crc(buf[:whole], 0)
                if last is not None:
                    got = self.checks.crc(last, got)
                if got != crc:
                    raise CorruptDataError(f"{self.gen_dir}/l4.dat: the extent at byte {off} fails its checksum")
            if last is not None:
                buf[whole:size] = last[: size - whole]
            self.stats.add("l4", n4, n, time.perf_counter() - t)

        return done

    def _read_l3(self, out: NDArray[Any], stage: NDArray[Any], rows: NDArray[Any], seg: int) -> bool:
        """The batch's L3 rows: into ``out`` from the base table, else into ``stage`` as stored (True)."""
        if not len(rows):
            return not self.fmt.identity
        if not self.segmented:
            t = time.perf_counter()
            nbytes = self.base.read_counted(rows, out.view(self.dtype).reshape(len(rows), self.dim))
            self.stats.add("base", len(rows), nbytes, time.perf_counter() - t)
            return False
        sr = self.seg_reader
        stored = sr.row_bytes_of(seg) == self.srb and not self.fmt.identity
        dst = stage if stored else out
        with self.segments.use(seg, sr.nbytes(seg), sr.load) as held:
            self._read_ahead(seg)
            if held is None:  # too large to hold: only this batch's pages
                sr.read_rows(seg, rows, dst)
                return stored
            t = time.perf_counter()
            held.take(rows, dst)
        self.stats.add(sr.tier(seg), len(rows), 0, time.perf_counter() - t)
        return stored

    def _read_ahead(self, seg: int) -> None:
        nxt = self._next.get(seg)
        if nxt is None:  # no order given: the next segment in id order that is held whole
            nxt = next((s for s in range(seg + 1, min(len(self.segs), seg + 64)) if self._held_whole(s)), -1)
        if nxt >= 0:
            sr = self.seg_reader
            self.segments.prefetch(nxt, sr.nbytes(nxt), sr.load, self._ahead, keep=seg)

    def _gather(self, tier: str, src: NDArray[Any], slots: NDArray[Any], out: NDArray[Any]) -> None:
        if not len(slots):
            return
        t = time.perf_counter()
        take_rows(src.view(np.uint8).reshape(len(src), self.srb), slots, out)
        self.stats.add(tier, len(slots), 0, time.perf_counter() - t)

    def _gather_l1(self, slots: NDArray[Any], out: NDArray[Any]) -> Any:
        if self.device == "cpu":
            self._gather("l1", self.l1, slots, out)
            return None
        import torch

        t = time.perf_counter()
        rows = self.l1[torch.from_numpy(slots).to(self.device)]
        if not self.fmt.identity and not self.serve_stored:
            rows = self.fmt.decode_torch(rows)
        self.stats.add("l1", len(slots), 0, time.perf_counter() - t)
        return rows

    # -- arbitrary ids -------------------------------------------------------------------
    def read(self, ids: Any) -> NDArray[Any]:
        """Rows for any ids: hot tiers first, then the dynamic cache, then the base table."""
        return read_ids(self, check_ids(ids, int(self.doc["num_nodes"])))

    # -- lifecycle -----------------------------------------------------------------------
    @property
    def generation(self) -> str:
        return str(self.doc["id"])

    def close(self) -> None:
        self._exec.shutdown(wait=True)
        self._ahead.shutdown(wait=True)
        self._io.shutdown(wait=True)
        self._finalizer()

    @staticmethod
    def _cleanup(pin: Pin, files: list[Any]) -> None:
        for f in files:
            with contextlib.suppress(Exception):
                f.close()
        pin.release()

    def __enter__(self) -> LayoutReader:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


open_reader = LayoutReader
"""Open the store's current layout for serving: ``open_reader(store, sample_set=..., memory_budget=...)``
(the :class:`LayoutReader` constructor, keyword arguments as it lists them)."""


__all__: Sequence[str] = ("BatchRows", "LayoutReader", "open_reader")

"""``featdb-train --dist ... --sampling offline``: sample once, pack locally, train from sequential reads.

Each trainer, once, before training:

1. samples every batch of its share of the training nodes for every epoch (and its share of the
   valid and test nodes) through DGL's distributed sampler — the same sampler and batches as
   ``--sampling online`` — and keeps the MFGs and seed labels in a local record file;
2. pulls the rows its batches read, each row once, from the KVStore (rows of other partitions
   cross the network here and only here) into a local featdb store, in id order;
3. records the batches as a featdb trace over that table and packs it: hot rows in host memory,
   each batch's other rows in one page-aligned extent.

Then it trains with no sampling RPCs and no feature pulls: a pipeline loads the MFG, reads the
batch's extent and assembles the input, while DDP synchronises the gradients. Everything lives
under ``<partition folder>/offline/rank<R>`` (replaced by every run); the summary reports its size
and the seconds the preparation took.
"""

from __future__ import annotations

import pickle
import shutil
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray

import featdb
from featdb import Budgets, add_trace, open_reader, pack, peak_rss
from featdb.distributed import write_table_chunks
from featdb.errors import CorruptDataError
from featdb.sampling import Batch

from .dist import DistConfig, _at_best_val, _Ctx, all_min, all_sum, connect, split_nodes, write_report
from .loop import TrainConfig
from .mfg import from_dgl_blocks, served, to_torch
from .models import build_model
from .pipeline import Pipeline

TABLE = "node/_/feat"
TRACE = "train"
PULL_ROWS = 1 << 16  # rows per KVStore pull while preparing
PHASE_MIN = 64 << 20  # the least a preparation phase (trace, pack) is given
HOST_CACHE_FRACTION = 0.1  # of the local rows, held in host memory (DiskGNN's ~10 %)


class Records:
    """A local file of (MFG, seed labels) records, each checked against its crc32 when read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.index: list[tuple[int, int, int]] = []
        self._f = open(path, "w+b")  # noqa: SIM115 - closed by close()

    def append(self, batch: Batch, labels: NDArray[Any]) -> int:
        raw = pickle.dumps((batch, labels), protocol=pickle.HIGHEST_PROTOCOL)
        self.index.append((self._f.seek(0, 2), len(raw), zlib.crc32(raw)))
        self._f.write(raw)
        return len(self.index) - 1

    def get(self, r: int) -> tuple[Batch, NDArray[Any]]:
        off, n, crc = self.index[r]
        raw = np.fromfile(self.path, dtype=np.uint8, count=n, offset=off).tobytes()
        if len(raw) != n or zlib.crc32(raw) != crc:
            raise CorruptDataError(f"{self.path}: record {r} fails its checksum")
        batch, labels = pickle.loads(raw)  # this process wrote it, and the crc matched
        return batch, labels

    def flush(self) -> None:
        self._f.flush()

    def close(self) -> None:
        self._f.close()


def train_offline(cfg: TrainConfig, d: DistConfig) -> dict[str, Any]:
    ctx, remove = connect(cfg, d)
    try:
        work = ctx.m.root / "offline" / f"rank{ctx.rank}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        rec = Records(work / "mfgs.bin")
        try:
            t0 = time.perf_counter()
            prep = _prepare(ctx, rec, work)
            prep["prepare_s"] = round(time.perf_counter() - t0, 3)
            with featdb.open(work / "store") as store:
                return _train(ctx, rec, store, prep)
        finally:
            rec.close()
    finally:
        if remove is not None:
            remove()


def _prepare(ctx: _Ctx, rec: Records, work: Path) -> dict[str, Any]:
    """Sample (once), pull the needed rows (once), record the trace and pack it."""
    import dgl

    cfg, d = ctx.cfg, ctx.d
    sampler = dgl.dataloading.NeighborSampler(list(d.fanouts))
    train_ids = split_nodes(ctx, "train_mask")
    steps, needed = 0, np.zeros(0, dtype=np.int64)
    t0 = time.perf_counter()
    for epoch in range(cfg.epochs):
        np.random.seed(cfg.seed * 1000 + epoch)  # the same shuffles and samples as online mode
        dgl.seed(cfg.seed * 1000 + epoch * 7 + ctx.rank)
        loader = dgl.dataloading.DistNodeDataLoader(
            ctx.g, train_ids, sampler, batch_size=d.batch_size, shuffle=True, drop_last=False
        )
        steps = all_min(-(-len(train_ids) // d.batch_size)) if epoch == 0 else steps
        if cfg.max_batches:
            steps = min(steps, cfg.max_batches)
        needed = _record(ctx, rec, _take(loader, steps), needed)
    evals: dict[str, list[int]] = {}
    for split, mask in (("valid", "val_mask"), ("test", "test_mask")):
        ids = split_nodes(ctx, mask)
        first = len(rec.index)
        if len(ids) and not cfg.max_batches:
            loader = dgl.dataloading.DistNodeDataLoader(ctx.g, ids, sampler, batch_size=d.batch_size, shuffle=False)
            needed = _record(ctx, rec, iter(loader), needed)
        evals[split] = list(range(first, len(rec.index)))
    rec.flush()
    sample_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    dim = int(ctx.g.ndata[ctx.feat].shape[1])
    dtype = str(ctx.g.ndata[ctx.feat].dtype).removeprefix("torch.")
    store = featdb.create(work / "store")
    try:
        write_table_chunks(store, TABLE, dtype, len(needed), dim, _pull(ctx, needed))
        pull_s = time.perf_counter() - t1
        t2 = time.perf_counter()
        n_train = steps * cfg.epochs
        batches = (np.searchsorted(needed, rec.get(r)[0].input_ids) for r in range(n_train))
        # this process already holds the runtime, model and a step: trace and pack get what is left
        work_budget = max(PHASE_MIN, ctx.memory.left())
        add_trace(store, TRACE, TABLE, batches, epochs=cfg.epochs, memory_budget=work_budget)
        row_bytes = dim * np.dtype(dtype).itemsize
        host = int(min(HOST_CACHE_FRACTION * len(needed) * row_bytes, ctx.memory.left() // 4))
        layout = pack(store, None, None, Budgets(host_cache=host), memory_budget=work_budget, trace=TRACE)
    finally:
        store.close()
    return {
        "steps": steps,
        "needed": needed,
        "evals": evals,
        "sample_s": round(sample_s, 3),
        "pull_s": round(pull_s, 3),
        "pack_s": round(time.perf_counter() - t2, 3),
        "local_rows": len(needed),
        "remote_rows": int(np.count_nonzero(ctx.m.part_of(needed) != _machine(ctx))),
        "host_cache_bytes": host,
        "layout_blowup": layout.get("blowup"),
    }


def _machine(ctx: _Ctx) -> int:
    from featdb.distributed import client_machine_id

    return client_machine_id()


def _take(loader: Any, n: int) -> Iterator[Any]:
    it = iter(loader)
    for _ in range(n):
        yield next(it)


def _record(ctx: _Ctx, rec: Records, items: Iterator[Any], needed: NDArray[Any]) -> NDArray[Any]:
    """Store each sampled batch (MFG in global ids, seed labels); returns the grown set of ids read."""
    seen = [needed]
    for _input_nodes, seeds, blocks in items:
        batch = from_dgl_blocks(blocks)
        # input rows in id order, as the trace stores each batch's rows: a step then relabels the
        # batch by the served order alone (the sort is paid here, once)
        batch = served(batch, np.argsort(batch.input_ids, kind="stable"))
        labels = ctx.g.ndata["label"][seeds].numpy().astype(np.int64)
        rec.append(batch, labels)
        seen.append(batch.input_ids)
        if len(seen) > 64:
            seen = [np.unique(np.concatenate(seen))]
    out: NDArray[Any] = np.unique(np.concatenate(seen)).astype(np.int64)
    return out


def _pull(ctx: _Ctx, ids: NDArray[Any]) -> Iterator[NDArray[Any]]:
    """The rows of ``ids`` from the KVStore, a chunk at a time (remote rows cross the network once)."""
    feat = ctx.g.ndata[ctx.feat]
    for i in range(0, len(ids), PULL_ROWS):
        yield feat[torch.from_numpy(ids[i : i + PULL_ROWS])].numpy()


def _train(ctx: _Ctx, rec: Records, store: featdb.Store, prep: dict[str, Any]) -> dict[str, Any]:
    from torch.nn.parallel import DistributedDataParallel

    cfg = ctx.cfg
    torch.manual_seed(cfg.seed)
    dim = store.schema(TABLE).dim
    model = build_model(cfg.model, dim, cfg.hidden, ctx.m.num_classes, len(ctx.d.fanouts), cfg.dropout, cfg.heads)
    ddp = DistributedDataParallel(model.to(ctx.device))
    opt = torch.optim.Adam(ddp.parameters(), lr=cfg.lr)
    memory = ctx.memory
    history = []
    first, _ = rec.get(0)  # compile the relabelling now, not inside the first epoch's timing
    served(first, np.arange(first.layers[0].num_src))
    with open_reader(store, trace=TRACE, queue_depth=cfg.queue_depth, memory_budget=memory) as reader:
        for epoch in range(cfg.epochs):
            # the order they were sampled in (already shuffled, the same as online mode's); a layout
            # with shared segments would want reader.epoch_order, but this one stores none (no --max-blowup)
            bids = list(range(epoch * prep["steps"], (epoch + 1) * prep["steps"]))
            r = _epoch(ctx, ddp, opt, rec, reader, bids, epoch)
            if not cfg.max_batches:
                r["val_acc"] = _evaluate(ctx, model, rec, store, prep, "valid")
                r["test_acc"] = _evaluate(ctx, model, rec, store, prep, "test")
            history.append(r)
        serve = reader.stats.as_dict()
    import torch.distributed as tdist

    tdist.barrier()
    return _summary(ctx, history, prep, serve, store)


def _epoch(
    ctx: _Ctx, ddp: Any, opt: torch.optim.Optimizer, rec: Records, reader: Any, bids: list[int], epoch: int
) -> dict[str, Any]:
    ddp.train()

    def load(b: int) -> tuple[int, Batch, NDArray[Any]]:
        batch, y = rec.get(b)
        return b, batch, y

    def read(item: tuple[int, Batch, NDArray[Any]]) -> tuple[Batch, NDArray[Any], Any]:
        return item[1], item[2], reader.read_batch(item[0])

    def assemble(item: tuple[Batch, NDArray[Any], Any]) -> tuple[Any, torch.Tensor, torch.Tensor, Any, Any]:
        batch, y, rows = item
        # records hold each batch's rows in id order, as the trace does (local ids rise with global
        # ids: ``needed`` is sorted), so the served order relabels the record directly
        mfg = served(batch, rows.order)
        return to_torch(mfg, ctx.device), torch.from_numpy(rows.rows), torch.from_numpy(y), rows, mfg.input_ids

    stages: list[tuple[str, Any]] = [("load", load), ("read", read), ("assemble", assemble)]
    pipe = Pipeline(bids, stages, ctx.cfg.queue_depth, on_drop=_release)
    loss_sum, n, checked, check_s = 0.0, 0, 0, 0.0
    t_start = time.perf_counter()
    try:
        for mfg, x, y, rows, input_ids in pipe:
            try:
                if ctx.checker is not None and n < ctx.d.check_rows:
                    c0 = time.perf_counter()
                    ctx.checker.check(torch.from_numpy(input_ids), x, mfg.seeds, y)
                    checked += 1
                    check_s += time.perf_counter() - c0
                opt.zero_grad(set_to_none=True)
                loss = F.cross_entropy(ddp(mfg, x.to(ctx.device).float()), y.to(ctx.device))
                loss.backward()  # type: ignore[no-untyped-call]
                opt.step()
            finally:
                rows.release()
            loss_sum += float(loss)
            n += 1
    finally:
        pipe.close()
    epoch_s = time.perf_counter() - t_start - check_s
    mean = all_sum([loss_sum, n])
    return {
        "epoch": epoch,
        "steps": n,
        "epoch_s": round(epoch_s, 3),
        "ms_per_step": round(1000 * epoch_s / max(1, n), 2),
        "stage_s": {k: v.as_dict() for k, v in pipe.times.items()},
        "loss": round(mean[0] / max(1.0, mean[1]), 4),
        "checked_batches": checked,
    }


@torch.no_grad()
def _evaluate(
    ctx: _Ctx, model: torch.nn.Module, rec: Records, store: featdb.Store, prep: dict[str, Any], split: str
) -> float:
    """Accuracy over the stored evaluation batches, rows from the local store; counts summed."""
    model.eval()
    correct = total = 0
    for r in prep["evals"][split]:
        batch, y = rec.get(r)
        x = torch.from_numpy(store.read(TABLE, np.searchsorted(prep["needed"], batch.input_ids)))
        pred = model(to_torch(batch, ctx.device), x.to(ctx.device).float()).argmax(dim=1)
        correct += int((pred.cpu() == torch.from_numpy(y)).sum())
        total += len(y)
    c, t = all_sum([correct, total])
    return round(c / max(1.0, t), 4)


def _release(item: Any) -> None:
    """Give back the pooled buffer of an item the pipeline dropped (an epoch that stopped early)."""
    for part in item if isinstance(item, tuple) else ():
        if hasattr(part, "release"):
            part.release()


def _disk_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def _summary(
    ctx: _Ctx, hist: list[dict[str, Any]], prep: dict[str, Any], serve: dict[str, Any], store: featdb.Store
) -> dict[str, Any]:
    s = {
        "mode": "dist-offline",
        "features": "featdb",
        "rank": ctx.rank,
        "world_size": ctx.world,
        "machine": _machine(ctx),
        "model": ctx.cfg.model,
        "seed": ctx.cfg.seed,
        "fanouts": list(ctx.d.fanouts),
        "batch_size": ctx.d.batch_size,
        "epochs": len(hist),
        "ms_per_step": [r["ms_per_step"] for r in hist],
        "epoch_s": [r["epoch_s"] for r in hist],
        "loss": [r["loss"] for r in hist],
        "val_acc": [r.get("val_acc") for r in hist],
        "test_acc": _at_best_val(hist),
        "checked_batches": sum(r["checked_batches"] for r in hist),
        "prepare": {k: v for k, v in prep.items() if k not in ("needed", "evals")},
        "local_disk_bytes": _disk_bytes(store.root.parent),
        "tier_hit_rates": {k: v["hit_rate"] for k, v in serve.get("tiers", {}).items()},
        "history": hist,
        "peak_rss_bytes": peak_rss(),
        "memory": ctx.memory.as_dict(),
    }
    write_report(ctx.d.report, s)
    return s

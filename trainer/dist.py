"""Data-parallel training over DGL distributed, features from featdb-backed KVStore servers.

One trainer per process, started by ``featdb dist machine`` (or any launcher that sets DGL's
environment contract and torch.distributed's). ``--sampling online`` is stock DGL's loop —
``DistNodeDataLoader`` sampling through the servers, each batch's rows pulled from the KVStore —
except that, with the featdb partition config, the servers (and this process, through the client
hook) map the rows from each partition's featdb store instead of shared memory. Gradients are
synchronised with DDP (gloo on CPU, NCCL on GPUs); every trainer runs the same number of steps
(the smallest split's), and evaluation samples the valid and test nodes the same way and sums
the counts over trainers.

``check_rows`` compares each of the first batches' pulled rows and labels with the unpartitioned
source store (through the manifest's id map) and stops at the first difference: the end-to-end
check that partitioning, the hooks and DGL's pulls hand the model the right rows.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray

import featdb
from featdb import DGL_RUNTIME_BYTES, MemoryBudget, node_labels, peak_rss, write_atomic
from featdb.distributed import Manifest, check_dgl, client_machine_id, install_hook, load_manifest
from featdb.errors import ConfigError, CorruptDataError

from .loop import TrainConfig, check_device
from .mfg import from_dgl_blocks, to_torch
from .models import build_model

SAMPLING = ("online", "offline")


@dataclass(frozen=True)
class DistConfig:
    ip_config: str
    part_config: str | None = None  # default: the manifest's featdb partition config
    sampling: str = "online"
    fanouts: tuple[int, ...] = (10, 10)
    batch_size: int = 1024
    report: str | None = None
    check_rows: int = 0  # batches per epoch whose rows are compared with the source store


@dataclass
class _Ctx:
    cfg: TrainConfig
    d: DistConfig
    m: Manifest
    g: Any
    feat: str
    rank: int
    world: int
    device: torch.device
    checker: _RowChecker | None
    memory: MemoryBudget


def train_dist(cfg: TrainConfig, d: DistConfig) -> dict[str, Any]:
    """Train on this process's share of the training nodes; returns this trainer's summary."""
    check_dgl()
    if d.sampling not in SAMPLING:
        raise ConfigError(f"--sampling {d.sampling!r}: one of {', '.join(SAMPLING)}")
    check_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if d.sampling == "offline":
        from .dist_offline import train_offline

        out: dict[str, Any] = train_offline(cfg, d)
        return out
    ctx, remove = connect(cfg, d)
    try:
        return _train(ctx)
    finally:
        if remove is not None:
            remove()


def connect(cfg: TrainConfig, d: DistConfig) -> tuple[_Ctx, Any]:
    """DGL's client (with the featdb hook when the part config is featdb's), torch.distributed, the graph."""
    import dgl
    import torch.distributed as tdist

    m = load_manifest(cfg.store)
    part_config = Path(d.part_config or m.root / m.part_config).resolve()
    featdb_served = part_config == (m.root / m.part_config).resolve()
    key = next((k for k in m.keys if k.table == cfg.table), None)
    if key is None:
        raise ConfigError(f"table {cfg.table!r} is not in {m.root}'s manifest ({[k.table for k in m.keys]})")
    remove = install_hook(m, client_machine_id) if featdb_served else None
    try:
        dgl.distributed.initialize(d.ip_config)
        device = torch.device(cfg.device)
        tdist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        g = dgl.distributed.DistGraph(m.graph_name, part_config=str(part_config))
    except BaseException:
        if remove is not None:
            remove()
        raise
    checker = _RowChecker(m, cfg.table, key.ndata) if d.check_rows else None
    memory = charge(cfg, d, key.dim, m.num_classes)
    ctx = _Ctx(cfg, d, m, g, key.ndata, tdist.get_rank(), tdist.get_world_size(), device, checker, memory)
    return ctx, remove


def charge(cfg: TrainConfig, d: DistConfig, dim: int, classes: int) -> MemoryBudget:
    """A trainer's own parts, charged before training (offline mode's reader charges its tiers after):
    the runtime, the model with its gradients and optimizer state, and one step's working set
    (input rows, their gradient and copy, from the batch size and fanouts)."""
    memory = MemoryBudget(cfg.memory_budget, "featdb-train --dist")
    memory.charge("runtime (torch, DGL, DGL's RPC)", DGL_RUNTIME_BYTES)
    width = cfg.hidden * (cfg.heads if cfg.model == "gat" else 1)
    params = dim * width + (len(d.fanouts) - 1) * width * width + width * max(1, classes)
    memory.charge("model, gradients and optimizer state", 2 * 4 * 4 * params)
    rows = d.batch_size
    for f in d.fanouts:
        rows += rows * f
    memory.charge("one training step", 3 * rows * dim * 4 + rows * width * 4)
    memory.check()
    return memory


def split_nodes(ctx: _Ctx, mask: str) -> torch.Tensor:
    import dgl

    ids: torch.Tensor = dgl.distributed.node_split(ctx.g.ndata[mask], ctx.g.get_partition_book(), force_even=True)
    return ids


def _train(ctx: _Ctx) -> dict[str, Any]:
    import dgl
    import torch.distributed as tdist
    from torch.nn.parallel import DistributedDataParallel

    cfg, d = ctx.cfg, ctx.d
    torch.manual_seed(cfg.seed)
    dim = int(ctx.g.ndata[ctx.feat].shape[1])
    model = build_model(cfg.model, dim, cfg.hidden, ctx.m.num_classes, len(d.fanouts), cfg.dropout, cfg.heads)
    ddp = DistributedDataParallel(model.to(ctx.device))
    opt = torch.optim.Adam(ddp.parameters(), lr=cfg.lr)
    train_ids = split_nodes(ctx, "train_mask")
    sampler = dgl.dataloading.NeighborSampler(list(d.fanouts))
    history = []
    for epoch in range(cfg.epochs):
        np.random.seed(cfg.seed * 1000 + epoch)  # DistDataLoader shuffles with numpy's generator
        dgl.seed(cfg.seed * 1000 + epoch * 7 + ctx.rank)
        loader = dgl.dataloading.DistNodeDataLoader(
            ctx.g, train_ids, sampler, batch_size=d.batch_size, shuffle=True, drop_last=False
        )
        steps = all_min(-(-len(train_ids) // d.batch_size))
        if cfg.max_batches:
            steps = min(steps, cfg.max_batches)
        rec = _epoch(ctx, ddp, opt, loader, steps, epoch)
        if not cfg.max_batches:
            rec["val_acc"] = evaluate(ctx, model, "val_mask", sampler)
            rec["test_acc"] = evaluate(ctx, model, "test_mask", sampler)
        history.append(rec)
    tdist.barrier()
    return _summary(ctx, history, len(train_ids))


def all_min(n: int) -> int:
    import torch.distributed as tdist

    t = torch.tensor([n], dtype=torch.int64)
    tdist.all_reduce(t, op=tdist.ReduceOp.MIN)
    return int(t.item())


def all_sum(values: list[float]) -> list[float]:
    import torch.distributed as tdist

    t = torch.tensor(values, dtype=torch.float64)
    tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
    return [float(v) for v in t.tolist()]


def _epoch(ctx: _Ctx, ddp: Any, opt: torch.optim.Optimizer, loader: Any, steps: int, epoch: int) -> dict[str, Any]:
    ddp.train()
    times = {"sample": 0.0, "pull": 0.0, "compute": 0.0}
    loss_sum, n, checked = 0.0, 0, 0
    it = iter(loader)
    t_start = time.perf_counter()
    while n < steps:
        t0 = time.perf_counter()
        input_nodes, seeds, blocks = next(it)
        t1 = time.perf_counter()
        x = ctx.g.ndata[ctx.feat][input_nodes]
        y = ctx.g.ndata["label"][seeds].long()
        t2 = time.perf_counter()
        if ctx.checker is not None and n < ctx.d.check_rows:
            ctx.checker.check(input_nodes, x, seeds, y)
            checked += 1
        t3 = time.perf_counter()
        mfg = to_torch(from_dgl_blocks(blocks), ctx.device)
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(ddp(mfg, x.to(ctx.device).float()), y.to(ctx.device))
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
        loss_sum += float(loss)
        n += 1
        times["sample"] += t1 - t0
        times["pull"] += t2 - t1
        times["compute"] += time.perf_counter() - t3
    epoch_s = time.perf_counter() - t_start - (ctx.checker.seconds if ctx.checker else 0.0)
    if ctx.checker is not None:
        ctx.checker.seconds = 0.0
    mean_loss = all_sum([loss_sum, n])
    return {
        "epoch": epoch,
        "steps": n,
        "epoch_s": round(epoch_s, 3),
        "ms_per_step": round(1000 * epoch_s / max(1, n), 2),
        "stage_s": {k: round(v, 3) for k, v in times.items()},
        "loss": round(mean_loss[0] / max(1.0, mean_loss[1]), 4),
        "checked_batches": checked,
    }


@torch.no_grad()
def evaluate(ctx: _Ctx, model: torch.nn.Module, mask: str, sampler: Any) -> float:
    """Accuracy over the split's nodes, sampled like training's, counts summed over trainers."""
    import dgl

    model.eval()
    ids = split_nodes(ctx, mask)
    correct = total = 0
    if len(ids):
        loader = dgl.dataloading.DistNodeDataLoader(ctx.g, ids, sampler, batch_size=ctx.d.batch_size, shuffle=False)
        for input_nodes, seeds, blocks in loader:
            x = ctx.g.ndata[ctx.feat][input_nodes].to(ctx.device).float()
            y = ctx.g.ndata["label"][seeds].long().to(ctx.device)
            pred = model(to_torch(from_dgl_blocks(blocks), ctx.device), x).argmax(dim=1)
            correct += int((pred == y).sum())
            total += len(y)
    c, t = all_sum([correct, total])
    return round(c / max(1.0, t), 4)


class _RowChecker:
    """Compares pulled rows and labels with the unpartitioned source store (via the id map)."""

    def __init__(self, m: Manifest, table: str, feat: str) -> None:
        self.store = featdb.open(m.source)
        self.orig = m.load_orig_ids()
        self.labels = node_labels(self.store)
        self.table, self.feat = table, feat
        self.seconds = 0.0

    def check(self, input_nodes: torch.Tensor, x: torch.Tensor, seeds: torch.Tensor, y: torch.Tensor) -> None:
        t0 = time.perf_counter()
        ids = self.orig[input_nodes.numpy()]
        want = self.store.read(self.table, ids)
        if not np.array_equal(np.asarray(x.numpy()).reshape(want.shape), want):
            bad = int(np.argmax((np.asarray(x.numpy()).reshape(want.shape) != want).any(axis=1)))
            raise CorruptDataError(
                f"{self.feat}: the row pulled for node {int(input_nodes[bad])} (source node {int(ids[bad])}) "
                "differs from the source store's"
            )
        labels: NDArray[Any] = np.asarray(self.labels[self.orig[seeds.numpy()]], dtype=np.int64)
        if not np.array_equal(labels, y.numpy()):
            raise CorruptDataError("labels pulled from the partitions differ from the source store's")
        self.seconds += time.perf_counter() - t0


def _summary(ctx: _Ctx, hist: list[dict[str, Any]], train_nodes: int) -> dict[str, Any]:
    s = {
        "mode": f"dist-{ctx.d.sampling}",
        "features": "featdb" if _featdb_served(ctx) else "stock",
        "rank": ctx.rank,
        "world_size": ctx.world,
        "machine": client_machine_id(),
        "train_nodes": train_nodes,
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
        "history": hist,
        "peak_rss_bytes": peak_rss(),
        "memory": ctx.memory.as_dict(),
    }
    write_report(ctx.d.report, s)
    return s


def _at_best_val(hist: list[dict[str, Any]]) -> float | None:
    """Test accuracy at the epoch of the best validation accuracy (as single-machine training reports)."""
    scored = [r for r in hist if r.get("val_acc") is not None]
    return max(scored, key=lambda r: r["val_acc"])["test_acc"] if scored else None


def _featdb_served(ctx: _Ctx) -> bool:
    part = Path(ctx.d.part_config or ctx.m.root / ctx.m.part_config).resolve()
    return part == (ctx.m.root / ctx.m.part_config).resolve()


def write_report(path: str | None, s: dict[str, Any]) -> None:
    if path:
        write_atomic(Path(path), json.dumps(s, indent=2).encode())

"""Epochs, evaluation, checkpoints: the training loop over any loader.

Memory: a featdb run charges what it holds to ``memory_budget`` before it
allocates — the runtime, the model and its optimizer state, one step's
working set, the batches in flight, and (through the reader) the memory tiers
and read buffers — and refuses at start, naming the parts, when they cannot
fit. It never loads the graph: batches come from the sample set, labels are
indexed per batch from the memory-mapped label table, and evaluation reads
the stored evaluation batches through the same layout as training.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray

import featdb
from featdb import (
    DEFAULT_BUDGET,
    MemoryBudget,
    graph_info,
    load_graph,
    node_labels,
    peak_rss,
    write_atomic,
)
from featdb.errors import ConfigError
from featdb.sampling import SampleSet

from .allocator import retain_large_allocations, trim_threshold
from .budget import charge_training, step_bytes
from .hetero import RGCN, NodeTypes, TypedFeatDBLoader, TypedTables, as_float, model_params
from .loaders import DGLLoader, Epoch, FeatDBLoader, Loader
from .models import build_model

LOADERS = ("featdb", "in-memory", "dgl-mmap")


@dataclass
class TrainConfig:
    store: str
    sample_set: str
    model: str = "sage"
    hidden: int = 256
    epochs: int = 3
    lr: float = 3e-3
    dropout: float = 0.3
    heads: int = 4
    device: str = "cpu"
    seed: int = 0
    queue_depth: int = 4
    loader: str = "featdb"
    table: str = "node/_/feat"
    checkpoint: str | None = None
    resume: bool = False
    threads: int = 0  # torch intra-op threads; 0 = torch's default
    memory_budget: int = DEFAULT_BUDGET  # bytes the run may hold (featdb loader; baselines report only)
    max_batches: int = 0  # > 0: train this many batches per epoch and skip evaluation (slow baselines)
    verify_reads: bool = True  # featdb checks what it reads against its checksums
    progress: Callable[[str, int, int], None] | None = field(default=None, repr=False)


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train, evaluate every epoch, keep the best-validation checkpoint; return a summary."""
    _check(cfg)
    retain_large_allocations(trim_threshold(cfg.memory_budget))
    torch.manual_seed(cfg.seed)
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _train(cfg)
    finally:
        torch.set_num_threads(threads)


def _check(cfg: TrainConfig) -> None:
    """``ConfigError`` for settings no run could use, before anything is opened or written."""
    if cfg.loader not in LOADERS:
        raise ConfigError(f"loader {cfg.loader!r}: one of {', '.join(LOADERS)}")
    for name in ("epochs", "hidden", "heads", "queue_depth", "memory_budget"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"{name} must be at least 1, got {getattr(cfg, name)}")
    if cfg.max_batches < 0:
        raise ConfigError(f"max_batches must be 0 (every batch) or more, got {cfg.max_batches}")
    if cfg.threads < 0:
        raise ConfigError(f"threads must be 0 (torch's default) or more, got {cfg.threads}")
    if not cfg.lr > 0:
        raise ConfigError(f"lr must be positive, got {cfg.lr}")
    if not 0 <= cfg.dropout < 1:
        raise ConfigError(f"dropout must be in [0, 1), got {cfg.dropout}")
    check_device(cfg.device)


def check_device(name: str) -> torch.device:
    """The torch device ``name`` names, if this machine has it; ``ConfigError`` before anything runs otherwise."""
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"device {name!r}: use cpu or cuda[:N]")
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"device {name!r}: torch sees no CUDA device on this machine; use --device cpu")
        if dev.index is not None and dev.index >= count:
            raise ConfigError(f"device {name!r}: this machine has {count} CUDA device(s), cuda:0..cuda:{count - 1}")
    return dev


def _train(cfg: TrainConfig) -> dict[str, Any]:
    device = torch.device(cfg.device)
    memory = MemoryBudget(cfg.memory_budget, "featdb-train")
    with featdb.open(cfg.store) as store:  # read-only: training writes nothing into the store
        store.verify_reads = cfg.verify_reads
        types = NodeTypes.of(store) if cfg.model == "rgcn" else None
        dim = types.width if types else store.schema(cfg.table).dim
        with SampleSet(store, cfg.sample_set) as ss:
            fanouts, batch_size = list(ss.doc["fanouts"]), int(ss.doc["batch_size"])
            missing = [s for s in ("valid", "test") if not len(ss.part_batches(s))]
            step = step_bytes(ss, dim, cfg, types.num_relations if types else 0)
            mfg = 4 * int(ss.index[:, 2].max(initial=0))  # decoded, then int64 tensors
        if missing and not cfg.max_batches:
            raise ConfigError(
                f"sample set {cfg.sample_set!r} has no {' or '.join(missing)} batches to evaluate on "
                "(sampled with --no-eval): sample it again with --eval, or train with --max-batches"
            )
        num_classes = int(graph_info(store).get("num_classes", 0))
        if cfg.loader == "featdb":
            labels = node_labels(store)
            params = model_params(types, cfg.hidden, num_classes, len(fanouts)) if types else None
            charge_training(memory, cfg, dim, num_classes, len(fanouts), step, mfg, params)
            feed = TypedFeatDBLoader if types else FeatDBLoader
            loader: Loader = feed(store, cfg.sample_set, device, cfg.queue_depth, labels, memory)
        else:
            graph = load_graph(store, mmap=cfg.loader == "dgl-mmap")
            labels = graph.labels
            loader = DGLLoader(
                store,
                cfg.table,
                graph,
                fanouts,
                batch_size,
                device,
                cfg.loader,
                SampleSet(store, cfg.sample_set),
                cfg.queue_depth,
                TypedTables(store, types, mmap=cfg.loader == "dgl-mmap") if types else None,
            )
        try:
            ctx = _Run(store, cfg, loader, labels, num_classes, len(fanouts), device, types)
            return _run(ctx) | {"memory": memory.as_dict() | {"enforced": cfg.loader == "featdb"}}
        finally:
            loader.close()


@dataclass
class _Run:
    store: featdb.Store
    cfg: TrainConfig
    loader: Loader
    labels: NDArray[Any]
    num_classes: int
    layers: int
    device: torch.device
    types: NodeTypes | None = None  # a relational model's node types


def _run(r: _Run) -> dict[str, Any]:
    cfg, store = r.cfg, r.store
    if r.types is not None:
        model: torch.nn.Module = RGCN(r.types, cfg.hidden, r.num_classes, r.layers, cfg.dropout).to(r.device)
    else:
        in_dim = store.schema(cfg.table).dim
        model = build_model(cfg.model, in_dim, cfg.hidden, r.num_classes, r.layers, cfg.dropout, cfg.heads)
        model = model.to(r.device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    ckpt = Path(
        cfg.checkpoint
        or Path("checkpoints") / f"{store.root.resolve().name}-{cfg.sample_set}-{cfg.model}-{cfg.loader}-s{cfg.seed}.pt"
    )
    check_writable(ckpt)
    state: dict[str, Any] = (
        _resume(ckpt, model, opt) if cfg.resume else {"epoch": -1, "best_val": -1.0, "test_at_best": 0.0, "history": []}
    )
    for epoch in range(state["epoch"] + 1, cfg.epochs):
        rng = np.random.default_rng([cfg.seed, epoch])  # batch order: the same on --resume
        before = r.loader.serve_stats()
        rec = _train_epoch(cfg, model, opt, r.loader, epoch, rng, r.device)
        between = r.loader.serve_stats()
        rec["read_amplification"] = _disk_amplification(before, between)
        t = time.perf_counter()
        if cfg.max_batches:  # a partial epoch: nothing to evaluate
            rec["val_acc"] = rec["test_acc"] = rec["eval_s"] = None
        else:
            rec["val_acc"] = evaluate(r, model, "valid")
            rec["test_acc"] = evaluate(r, model, "test")
            rec["eval_s"] = round(time.perf_counter() - t, 3)
            rec["eval_read_amplification"] = _disk_amplification(between, r.loader.serve_stats())
        state["history"].append(rec)
        state["epoch"] = epoch
        if rec["val_acc"] is not None and rec["val_acc"] > state["best_val"]:
            state["best_val"], state["test_at_best"] = rec["val_acc"], rec["test_acc"]
            _save(ckpt, model, opt, state, best=True)
        _save(ckpt.with_suffix(".last.pt"), model, opt, state, best=False)
    return _summary(cfg, state, r.loader, ckpt)


def _train_epoch(
    cfg: TrainConfig,
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    loader: Loader,
    epoch: int,
    rng: np.random.Generator,
    device: torch.device,
) -> dict[str, Any]:
    model.train()
    ep = loader.epoch(epoch, rng)
    compute = wait = 0.0
    n = rows = 0
    loss_sum = 0.0
    total = min(ep.batches, cfg.max_batches) if cfg.max_batches else ep.batches
    io_start = io_read_bytes()
    t_start = time.perf_counter()
    try:
        while n < total:
            t0 = time.perf_counter()
            item = next(ep.items, None)
            t1 = time.perf_counter()
            wait += t1 - t0
            if item is None:
                break
            mfg, x, y, release = item
            try:
                opt.zero_grad(set_to_none=True)
                loss = F.cross_entropy(model(mfg, as_float(x)), y)
                loss.backward()  # type: ignore[no-untyped-call]
                opt.step()
            finally:
                release()
            loss_sum += float(loss)
            n += 1
            rows += mfg.num_inputs
            compute += time.perf_counter() - t1
            if cfg.progress:
                cfg.progress(f"epoch {epoch}", n, total)
    finally:
        ep.close()
    epoch_s = time.perf_counter() - t_start
    io_end = io_read_bytes()
    stages = {k: v.as_dict() for k, v in ep.times.items()}
    stages["compute"] = {"busy_s": round(compute, 3), "stall_s": round(wait, 3), "items": n}
    slowest = max(s["busy_s"] for s in stages.values())
    return {
        "epoch": epoch,
        "epoch_s": round(epoch_s, 3),
        "batches": n,
        "input_rows": rows,
        "io_read_bytes": None if io_start is None or io_end is None else io_end - io_start,
        "loss": round(loss_sum / max(1, n), 4),
        "stages": stages,
        "slowest_stage_s": slowest,
        "epoch_over_slowest": round(epoch_s / slowest, 3) if slowest else None,
    }


@torch.no_grad()
def evaluate(r: _Run, model: torch.nn.Module, split: str) -> float:
    """Accuracy over the split's stored evaluation batches; rows come through the loader's source."""
    model.eval()
    ep = r.loader.eval_epoch(split)
    if ep is None:
        raise ConfigError(f"sample set {r.cfg.sample_set!r} has no {split} batches")
    return _accuracy(model, ep)


def _accuracy(model: torch.nn.Module, ep: Epoch) -> float:
    correct = total = 0
    try:
        for mfg, x, y, release in ep.items:
            try:
                pred = model(mfg, as_float(x)).argmax(dim=1)
            finally:
                release()
            correct += int((pred == y).sum())
            total += len(y)
    finally:
        ep.close()
    return round(correct / max(1, total), 4)


def check_writable(ckpt: Path) -> None:
    """``ConfigError`` before training if the checkpoint's folder cannot be created or written."""
    d = ckpt.absolute().parent
    while not d.exists() and d != d.parent:
        d = d.parent
    if not (d.is_dir() and os.access(d, os.W_OK | os.X_OK)):
        raise ConfigError(f"checkpoint {ckpt}: {d} is not writable; pass --checkpoint PATH on a writable disk")


def _save(
    path: Path,
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    state: dict[str, Any],
    best: bool,
) -> None:
    """Atomic checkpoint: featdb's atomic write (temp file, fsync, rename, fsync of the directory)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(
        {"model": model.state_dict(), "opt": opt.state_dict(), "state": state, "best": best, "rng": _rng_state()},
        buf,
    )
    write_atomic(path, buf.getvalue())


def _resume(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict[str, Any]:
    last = path.with_suffix(".last.pt")
    src = last if last.exists() else path
    if not src.exists():
        raise ConfigError(f"--resume: no checkpoint at {src}")
    ck = torch.load(src, map_location="cpu")
    model.load_state_dict(ck["model"])
    opt.load_state_dict(ck["opt"])
    if "rng" in ck:  # dropout continues where it stopped: a resumed run equals an uninterrupted one
        torch.set_rng_state(ck["rng"]["cpu"])
        if ck["rng"]["cuda"] is not None and torch.cuda.is_available():
            states = ck["rng"]["cuda"][: torch.cuda.device_count()]  # resumed on fewer GPUs
            torch.cuda.set_rng_state_all(states)
    return dict(ck["state"])


def _rng_state() -> dict[str, Any]:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None  # type: ignore[no-untyped-call]
    return {"cpu": torch.get_rng_state(), "cuda": cuda}


def io_read_bytes() -> int | None:
    """Bytes this process has read from storage (``read_bytes`` of /proc/self/io), where Linux says."""
    try:
        with open("/proc/self/io", encoding="ascii") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("read_bytes:"))
    except (OSError, StopIteration, ValueError):
        return None


def _disk_amplification(before: dict[str, Any], after: dict[str, Any]) -> float | None:
    """Bytes read from disk (L3, L4, base) over the bytes of the rows served from them, between two
    snapshots of the reader's statistics (``None`` for loaders without a reader)."""
    if not before.get("tiers") or not after.get("tiers"):
        return None
    disk = ("l3", "l4", "base")
    read = sum(after["tiers"][t]["bytes_read"] - before["tiers"][t]["bytes_read"] for t in disk)
    rows = sum(_stored(after, t) - _stored(before, t) for t in disk)
    return round(read / rows, 4) if rows else None


def _packed_amplification(serve: dict[str, Any]) -> float | None:
    """Bytes read from L3 + L4 over their row bytes, training and evaluation batches together
    (each phase alone: ``epoch_read_amplification``, ``eval_read_amplification``)."""
    tiers = serve.get("tiers")
    if not tiers:
        return None
    rows = sum(_stored(serve, t) for t in ("l3", "l4"))
    return round(sum(tiers[t]["bytes_read"] for t in ("l3", "l4")) / rows, 4) if rows else None


def _stored(serve: dict[str, Any], tier: str) -> int:
    """The bytes a tier's rows take as stored (the layout's row format), which is what is read."""
    t = serve["tiers"][tier]
    return int(t.get("stored_bytes", t["bytes"]))


def _summary(cfg: TrainConfig, state: dict[str, Any], loader: Loader, ckpt: Path) -> dict[str, Any]:
    hist = state["history"]
    serve = loader.serve_stats()
    stage_s: dict[str, float] = {}
    stall_s: dict[str, float] = {}
    for rec in hist:
        for k, v in rec["stages"].items():
            stage_s[k] = round(stage_s.get(k, 0.0) + v["busy_s"], 3)
            stall_s[k] = round(stall_s.get(k, 0.0) + v["stall_s"], 3)
    return {
        "loader": cfg.loader,
        "model": cfg.model,
        "seed": cfg.seed,
        "epochs": len(hist),
        "epoch_s": [r["epoch_s"] for r in hist],
        "stage_s": stage_s,
        "stage_stall_s": stall_s,
        "epoch_over_slowest": [r["epoch_over_slowest"] for r in hist],
        "val_acc": [r["val_acc"] for r in hist],
        "test_acc": state["test_at_best"],
        "best_val_acc": state["best_val"],
        "loss": [r["loss"] for r in hist],
        "eval_s": [r.get("eval_s") for r in hist],
        "epoch_read_amplification": [r.get("read_amplification") for r in hist],
        "eval_read_amplification": [r.get("eval_read_amplification") for r in hist],
        "row_format": serve.get("row_format"),
        "tier_hit_rates": {k: v["hit_rate"] for k, v in serve.get("tiers", {}).items()},
        "read_amplification": _packed_amplification(serve),
        "segment_cache": serve.get("caches", {}).get("segments"),
        "checkpoint": str(ckpt),
        "allocator": retain_large_allocations(trim_threshold(cfg.memory_budget)),
        "peak_rss_bytes": peak_rss(),
        "batches": [r["batches"] for r in hist],
        "input_rows": [r["input_rows"] for r in hist],
        "io_read_bytes": io_read_bytes(),
        "epoch_io_read_bytes": [r["io_read_bytes"] for r in hist],
        "config": {f.name: getattr(cfg, f.name) for f in fields(cfg) if f.name != "progress"},
    }

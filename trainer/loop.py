"""Epochs, evaluation, checkpoints: the training loop over any loader."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

import featdb
from featdb.errors import ConfigError
from featdb.graph import load_graph
from featdb.sampling import SampleSet
from featdb.sampling.offline import SampleConfig, sample

from .allocator import retain_large_allocations
from .loaders import DGLLoader, FeatDBLoader
from .mfg import to_torch
from .models import build_model
from .pipeline import Pipeline

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
    eval_batch_size: int = 4096
    checkpoint: str | None = None
    resume: bool = False
    threads: int = 0  # torch intra-op threads; 0 = torch's default
    progress: Callable[[str, int, int], None] | None = field(default=None, repr=False)


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train, evaluate every epoch, keep the best-validation checkpoint; return a summary."""
    _check(cfg)
    retain_large_allocations()
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
    for name in ("epochs", "hidden", "heads", "queue_depth", "eval_batch_size"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"{name} must be at least 1, got {getattr(cfg, name)}")
    if cfg.threads < 0:
        raise ConfigError(f"threads must be 0 (torch's default) or more, got {cfg.threads}")
    if not cfg.lr > 0:
        raise ConfigError(f"lr must be positive, got {cfg.lr}")
    if not 0 <= cfg.dropout < 1:
        raise ConfigError(f"dropout must be in [0, 1), got {cfg.dropout}")


def _train(cfg: TrainConfig) -> dict[str, Any]:
    device = torch.device(cfg.device)
    with featdb.open(cfg.store, mode="a") as store:
        graph = load_graph(store)
        with SampleSet(store, cfg.sample_set) as ss:
            fanouts, batch_size = list(ss.doc["fanouts"]), int(ss.doc["batch_size"])
        evals = {
            s: _eval_set(store, cfg.sample_set, s, fanouts, cfg.eval_batch_size)
            for s in ("valid", "test")
        }
        loader = _make_loader(store, cfg, graph, fanouts, batch_size, device)
        try:
            return _run(store, cfg, graph, loader, evals, fanouts, device)
        finally:
            loader.close()


def _make_loader(
    store: featdb.Store,
    cfg: TrainConfig,
    graph: Any,
    fanouts: list[int],
    batch_size: int,
    device: torch.device,
) -> Any:
    if cfg.loader == "featdb":
        return FeatDBLoader(store, cfg.sample_set, device, cfg.queue_depth, graph)
    return DGLLoader(store, cfg.table, graph, fanouts, batch_size, device, cfg.loader)


def _eval_set(
    store: featdb.Store, train_set: str, split: str, fanouts: list[int], batch_size: int
) -> str:
    """The stored evaluation sample set for ``split`` (created once, shared by every loader)."""
    name = f"{train_set}.eval-{split}"
    if store.catalog.get(f"sampleset/{name}") is None:
        sample(store, SampleConfig(name, tuple(fanouts), batch_size, 1, seed=12345, split=split))
    return name


def _run(
    store: featdb.Store,
    cfg: TrainConfig,
    graph: Any,
    loader: Any,
    evals: dict[str, str],
    fanouts: list[int],
    device: torch.device,
) -> dict[str, Any]:
    in_dim = store.schema(cfg.table).dim
    model = build_model(
        cfg.model, in_dim, cfg.hidden, graph.num_classes, len(fanouts), cfg.dropout, cfg.heads
    ).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    ckpt = Path(
        cfg.checkpoint
        or store.root / "checkpoints" / f"{cfg.sample_set}-{cfg.model}-{cfg.loader}-s{cfg.seed}.pt"
    )
    state = (
        _resume(ckpt, model, opt)
        if cfg.resume
        else {"epoch": -1, "best_val": -1.0, "test_at_best": 0.0, "history": []}
    )
    for epoch in range(state["epoch"] + 1, cfg.epochs):
        rng = np.random.default_rng([cfg.seed, epoch])  # batch order: the same on --resume
        rec = _train_epoch(cfg, model, opt, loader, epoch, rng, device)
        rec["val_acc"] = evaluate(
            store, model, evals["valid"], loader, graph, device, cfg.queue_depth
        )
        rec["test_acc"] = evaluate(
            store, model, evals["test"], loader, graph, device, cfg.queue_depth
        )
        state["history"].append(rec)
        state["epoch"] = epoch
        if rec["val_acc"] > state["best_val"]:
            state["best_val"], state["test_at_best"] = rec["val_acc"], rec["test_acc"]
            _save(ckpt, model, opt, state, best=True)
        _save(ckpt.with_suffix(".last.pt"), model, opt, state, best=False)
    return _summary(cfg, state, loader, ckpt)


def _train_epoch(
    cfg: TrainConfig,
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    loader: Any,
    epoch: int,
    rng: np.random.Generator,
    device: torch.device,
) -> dict[str, Any]:
    model.train()
    ep = loader.epoch(epoch, rng)
    compute = wait = 0.0
    n = loss_sum = 0
    t_start = time.perf_counter()
    try:
        while True:
            t0 = time.perf_counter()
            item = next(ep.items, None)
            t1 = time.perf_counter()
            wait += t1 - t0
            if item is None:
                break
            mfg, x, y, release = item
            try:
                opt.zero_grad(set_to_none=True)
                loss = F.cross_entropy(model(mfg, x.float() if x.dtype != torch.float32 else x), y)
                loss.backward()
                opt.step()
            finally:
                release()
            loss_sum += float(loss)
            n += 1
            compute += time.perf_counter() - t1
            if cfg.progress:
                cfg.progress(f"epoch {epoch}", n, ep.batches)
    finally:
        ep.close()
    epoch_s = time.perf_counter() - t_start
    stages = {k: v.as_dict() for k, v in ep.times.items()}
    stages["compute"] = {"busy_s": round(compute, 3), "stall_s": round(wait, 3), "items": n}
    slowest = max(s["busy_s"] for s in stages.values())
    return {
        "epoch": epoch,
        "epoch_s": round(epoch_s, 3),
        "batches": n,
        "loss": round(loss_sum / max(1, n), 4),
        "stages": stages,
        "slowest_stage_s": slowest,
        "epoch_over_slowest": round(epoch_s / slowest, 3) if slowest else None,
    }


@torch.no_grad()
def evaluate(
    store: featdb.Store,
    model: torch.nn.Module,
    eval_set: str,
    loader: Any,
    graph: Any,
    device: torch.device,
    depth: int,
) -> float:
    """Accuracy over a stored evaluation sample set; features come through the loader's source."""
    model.eval()
    labels = torch.from_numpy(graph.labels.astype(np.int64))
    fetch = (
        loader.reader.read
        if isinstance(loader, FeatDBLoader)
        else (lambda ids: loader.gather(torch.from_numpy(ids)))
    )
    correct = total = 0
    with SampleSet(store, eval_set) as ss:

        def prep(b: int) -> Any:
            batch = ss.batch(b)
            x = fetch(batch.input_ids)
            x = torch.as_tensor(x).to(device)
            return to_torch(batch, device), x, labels[torch.from_numpy(batch.seeds)].to(device)

        with Pipeline(range(ss.num_batches), [("prepare", prep)], depth) as pipe:
            for mfg, x, y in pipe:
                pred = model(mfg, x.float()).argmax(dim=1)
                correct += int((pred == y).sum())
                total += len(y)
    return round(correct / max(1, total), 4)


def _save(
    path: Path,
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    state: dict[str, Any],
    best: bool,
) -> None:
    """Atomic checkpoint: temp file, fsync, rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "wb") as f:
        torch.save(
            {
                "model": model.state_dict(),
                "opt": opt.state_dict(),
                "state": state,
                "best": best,
                "rng": _rng_state(),
            },
            f,
        )
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


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
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    return {"cpu": torch.get_rng_state(), "cuda": cuda}


def _packed_amplification(serve: dict[str, Any]) -> float | None:
    """Bytes read from L3 + L4 over their row bytes: training batches only (evaluation reads the
    base table, reported under its own tier)."""
    tiers = serve.get("tiers")
    if not tiers:
        return None
    rows = sum(tiers[t]["bytes"] for t in ("l3", "l4"))
    return round(sum(tiers[t]["bytes_read"] for t in ("l3", "l4")) / rows, 4) if rows else None


def _summary(cfg: TrainConfig, state: dict[str, Any], loader: Any, ckpt: Path) -> dict[str, Any]:
    hist = state["history"]
    serve = loader.serve_stats()
    stage_s: dict[str, float] = {}
    for rec in hist:
        for k, v in rec["stages"].items():
            stage_s[k] = round(stage_s.get(k, 0.0) + v["busy_s"], 3)
    return {
        "loader": cfg.loader,
        "model": cfg.model,
        "seed": cfg.seed,
        "epochs": len(hist),
        "epoch_s": [r["epoch_s"] for r in hist],
        "stage_s": stage_s,
        "epoch_over_slowest": [r["epoch_over_slowest"] for r in hist],
        "val_acc": [r["val_acc"] for r in hist],
        "test_acc": state["test_at_best"],
        "best_val_acc": state["best_val"],
        "loss": [r["loss"] for r in hist],
        "tier_hit_rates": {k: v["hit_rate"] for k, v in serve.get("tiers", {}).items()},
        "read_amplification": _packed_amplification(serve),
        "checkpoint": str(ckpt),
        "allocator": retain_large_allocations(),
        "config": {f.name: getattr(cfg, f.name) for f in fields(cfg) if f.name != "progress"},
    }

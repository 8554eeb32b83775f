"""``featdb bench train``: featdb against what users run instead, under one memory cap.

For a preset it generates a dataset (seeded; reused when already built), then
runs every step as its own process inside a cgroup memory cap
(:class:`~featdb.cgroup.MemoryCap`), with the store's pages dropped from the
page cache before each:

1. ``featdb sample`` and ``featdb pack`` with ``--memory-budget`` = the cap less
   some headroom for page cache;
2. ``featdb-train --loader featdb`` (one epoch and evaluation);
3. ``featdb-train --loader dgl-mmap`` (DGL sampling, features through
   ``numpy.memmap``) on a fixed number of batches, since a whole epoch would
   take hours under the cap;
4. ``featdb-train --loader in-memory`` under the cap (the table does not fit:
   expected to be killed), and uncapped as the "if you had the RAM" reference.

Each system reports seconds per training batch, the epoch and evaluation time
where it ran them, the bytes it read from storage (``/proc/<pid>/io``), its
read amplification (those bytes over the bytes of feature rows its training
batches used) and its peak RSS (``wait4``). featdb imports nothing from the
trainer: the systems are the ``featdb-train`` command.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .cgroup import Finished, MemoryCap, command_path
from .errors import ConfigError
from .io import drop_page_cache

Say = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class Preset:
    nodes: int
    dim: int
    avg_degree: float
    train_frac: float
    valid_frac: float
    test_frac: float
    cap: int
    host_cache: int
    fanouts: str = "10,10"
    batch_size: int = 1024
    mmap_batches: int = 20

    @property
    def table_bytes(self) -> int:
        return self.nodes * self.dim * 4


PRESETS = {
    # regression use: 2 M nodes (a 1.02 GB table) under a 1.5 GiB cap, which the table, the graph and
    # torch together do not fit; about 90 s once built
    "small": Preset(2_000_000, 128, 15.0, 0.05, 0.01, 0.01, 3 << 29, 64 << 20, mmap_batches=5),
    # larger than memory: 8 M nodes (a 4.1 GB table) under a 2 GiB cap
    "large": Preset(8_000_000, 128, 15.0, 0.02, 0.005, 0.005, 2 << 30, 256 << 20, mmap_batches=3),
}
HEADROOM = 256 << 20  # of the cap, left to the page cache (sample files, labels, catalog)
SAMPLE_SET = "bench"


def _drop_cache(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            drop_page_cache(path)


def _json(f: Finished) -> dict[str, Any] | None:
    try:
        doc = json.loads(f.stdout)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def run_step(
    cap: MemoryCap, argv: list[str], root: Path, say: Say, label: str, timeout: float | None = None
) -> dict[str, Any]:
    """Run one featdb command under ``cap`` from a cold page cache, after the writes of earlier steps
    reached the disk (a pack's write-back would otherwise compete with the next run's reads)."""
    os.sync()
    _drop_cache(root)
    where = f"cap {(cap.limit or 0) >> 20} MiB" if cap.capped else "uncapped"
    say(f"{label}: {' '.join(argv[1:3])} ... ({where})")
    f = cap.run(argv, timeout=timeout)
    out: dict[str, Any] = {
        "completed": f.returncode == 0,
        "returncode": f.returncode,
        "oom_killed": f.oom_killed,
        "timed_out": timeout is not None and f.returncode != 0 and f.seconds >= timeout,
        "wall_s": f.seconds,
        "peak_rss_bytes": f.peak_rss_bytes,
        "summary": _json(f),
    }
    if f.returncode != 0:
        out["error"] = f.stderr_tail.strip().splitlines()[-1:] if f.stderr_tail.strip() else []
    out["last_io_read_bytes"] = f.last_io_read_bytes
    say(
        f"{label}: {'done' if out['completed'] else 'FAILED (' + why_failed(out) + ')'} in {f.seconds} s, "
        f"peak RSS {f.peak_rss_bytes >> 20} MiB"
    )
    return out


def why_failed(out: dict[str, Any]) -> str:
    """One line on why a step failed: OOM-killed, timed out, or its exit status and last error line."""
    if out["oom_killed"]:
        return "OOM-killed"
    if out["timed_out"]:
        return "timed out"
    return f"exit {out['returncode']}" + (f": {out['error'][-1]}" if out.get("error") else "")


def featdb_argv(command: str, *args: object) -> list[str]:
    """A ``featdb`` command line with ``--json -q``."""
    return [command_path("featdb"), command, *map(str, args), "--json", "-q"]


def build(root: Path, p: Preset, cap: MemoryCap, budget: int, say: Say, fresh: bool) -> dict[str, Any]:
    """Synth (unless the store holds this preset already), sample and pack, each under the cap."""
    marker = root / "bench-preset.json"
    want = {k: v for k, v in asdict(p).items() if k != "mmap_batches"}  # what the dataset depends on
    if not fresh and marker.exists() and json.loads(marker.read_text()) == want:
        say(f"reusing the dataset in {root} (--fresh rebuilds it)")
        return {}
    if root.exists():
        shutil.rmtree(root)
    commands = {
        "synth": featdb_argv(
            "synth",
            root,
            "--nodes",
            p.nodes,
            "--dim",
            p.dim,
            "--avg-degree",
            p.avg_degree,
            "--train-frac",
            p.train_frac,
            "--valid-frac",
            p.valid_frac,
            "--test-frac",
            p.test_frac,
            "--memory-budget",
            min(budget, 512 << 20),
        ),
        "sample": featdb_argv(
            "sample",
            root,
            "--name",
            SAMPLE_SET,
            "--fanouts",
            p.fanouts,
            "--batch-size",
            p.batch_size,
            "--epochs",
            1,
            "--memory-budget",
            budget,
        ),
        "pack": featdb_argv(
            "pack", root, "--sample-set", SAMPLE_SET, "--host-cache", p.host_cache, "--memory-budget", budget
        ),
    }
    steps: dict[str, Any] = {}
    for name, argv in commands.items():
        steps[name] = run_step(cap, argv, root.parent if name == "synth" else root, say, name)
        _require(steps[name], name)
    marker.write_text(json.dumps(want))
    return steps


def _require(step: dict[str, Any], name: str) -> None:
    if not step["completed"]:
        raise ConfigError(f"bench train: {name} failed under the cap: {step.get('error')}")


def train_argv(root: Path, loader: str, budget: int, max_batches: int = 0) -> list[str]:
    argv = [
        command_path("featdb-train"),
        str(root),
        "--sample-set",
        SAMPLE_SET,
        "--loader",
        loader,
        "--epochs",
        "1",
        "--memory-budget",
        str(budget),
        "--json",
        "-q",
        "--checkpoint",
        str(root.parent / f"{root.name}-{loader}.pt"),  # beside the store, not in it
    ]
    return argv + (["--max-batches", str(max_batches)] if max_batches else [])


def system_result(step: dict[str, Any], row_bytes: int) -> dict[str, Any]:
    """Per system: seconds per batch, epoch and evaluation time, bytes read, amplification, peak."""
    s = step["summary"] or {}
    res = {k: step[k] for k in ("completed", "oom_killed", "wall_s", "peak_rss_bytes")}
    if not s:
        res |= {
            "s_per_batch": None,
            "epoch_s": None,
            "eval_s": None,
            "batches": 0,
            "read_bytes": step["last_io_read_bytes"],
            "read_amplification": None,
            "error": step.get("error"),
        }
        return res
    batches, epoch_s = s["batches"][0], s["epoch_s"][0]
    full = s["config"]["max_batches"] == 0
    train_read = s["epoch_io_read_bytes"][0]
    rows = s["input_rows"][0]
    res |= {
        "batches": batches,
        "s_per_batch": round(epoch_s / max(1, batches), 4),
        "epoch_s": epoch_s if full else None,
        "eval_s": s["eval_s"][0],
        "read_bytes": s["io_read_bytes"],
        "train_read_bytes": train_read,
        "read_amplification": round(train_read / (rows * row_bytes), 3) if rows and train_read is not None else None,
        "test_acc": s["test_acc"] if full else None,
        "tier_hit_rates": s.get("tier_hit_rates") or None,
        "memory_budget_bytes": s["memory"]["budget_bytes"] if s["memory"]["enforced"] else None,
    }
    return res


SWEEP = (2, 4, 8)  # table / cap
SWEEP_BATCHES = 2
SWEEP_TIMEOUT = 900.0  # seconds per run; a run past it is reported as timed out


def sweep(root: Path, p: Preset, say: Say) -> list[dict[str, Any]]:
    """featdb (a whole epoch) and DGL + mmap (:data:`SWEEP_BATCHES` batches) under caps of table / 2,
    / 4 and / 8."""
    out = []
    for k in SWEEP:
        cap_limit = p.table_bytes // k
        budget = max(64 << 20, cap_limit - HEADROOM)
        with MemoryCap(cap_limit) as cap:
            for loader in ("featdb", "dgl-mmap"):
                batches = 0 if loader == "featdb" else SWEEP_BATCHES  # featdb: the whole epoch, it is quick
                step = run_step(
                    cap,
                    train_argv(root, loader, budget, batches),
                    root,
                    say,
                    f"sweep table/{k} {loader}",
                    SWEEP_TIMEOUT,
                )
                res = system_result(step, p.dim * 4)
                out.append(
                    {
                        "table_over_cap": k,
                        "cap_bytes": cap_limit,
                        "capped": cap.capped,
                        "system": loader,
                        "timed_out": step["timed_out"],
                    }
                    | {
                        f: res.get(f)
                        for f in (
                            "completed",
                            "oom_killed",
                            "s_per_batch",
                            "peak_rss_bytes",
                            "read_amplification",
                            "error",
                        )
                    }
                )
    return out


def run(
    preset: str,
    workdir: Path,
    cap_bytes: int | None = None,
    fresh: bool = False,
    plot_dir: Path | None = None,
    say: Say = lambda m: None,
    with_sweep: bool = False,
) -> dict[str, Any]:
    """The whole benchmark; returns the JSON document ``featdb bench train --json`` prints."""
    from .bench import sequential_bandwidth

    if preset not in PRESETS:
        raise ConfigError(f"preset {preset!r}: one of {', '.join(PRESETS)}")
    p = PRESETS[preset]
    cap_limit = cap_bytes or p.cap
    budget = max(256 << 20, cap_limit - HEADROOM)
    root = workdir / preset
    root.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with MemoryCap(cap_limit) as cap:
        capped = cap.capped
        if not capped:
            say(f"no memory cap: {cap.why_uncapped}; results are marked uncapped")
        steps = build(root, p, cap, budget, say, fresh)
        rb = p.dim * 4
        systems = {
            "featdb": run_step(cap, train_argv(root, "featdb", budget), root, say, "featdb"),
            "dgl-mmap": run_step(cap, train_argv(root, "dgl-mmap", budget, p.mmap_batches), root, say, "dgl-mmap"),
            "in-memory": run_step(cap, train_argv(root, "in-memory", budget, p.mmap_batches), root, say, "in-memory"),
        }
    with MemoryCap(None) as free:
        systems["in-memory-uncapped"] = run_step(
            free, train_argv(root, "in-memory", budget), root, say, "in-memory, uncapped"
        )
    table = root / _table_file(root)
    seq = sequential_bandwidth(table)
    res = {k: system_result(v, rb) for k, v in systems.items()}
    doc = {
        "preset": preset,
        "params": asdict(p),
        "capped": capped,
        "cap_bytes": cap_limit if capped else None,
        "why_uncapped": cap.why_uncapped,
        "memory_budget_bytes": budget,
        "table_bytes": p.table_bytes,
        "disk_seq_read_MBps": round(seq["bytes"] / seq["seconds"] / 1e6, 1),
        "steps": _step_results(steps),
        "systems": res,
        "ratios": _ratios(res),
        "seconds": round(time.perf_counter() - started, 1),
    }
    if with_sweep:
        doc["sweep"] = sweep(root, p, say)
    if plot_dir is not None:
        from .bench_plots import plot

        doc["plots"] = plot(doc, plot_dir)
    return doc


def _table_file(root: Path) -> str:
    from . import store as store_mod

    with store_mod.open(root) as st:
        return str(st.table_info("node/_/feat")["file"])


def _step_results(steps: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for name, st in steps.items():
        s = st["summary"] or {}
        budget = (s.get("memory") or {}).get("budget_bytes")
        out[name] = {
            "completed": st["completed"],
            "wall_s": st["wall_s"],
            "peak_rss_bytes": st["peak_rss_bytes"],
            "memory_budget_bytes": budget,
            "peak_over_budget": round(st["peak_rss_bytes"] / budget, 3) if budget else None,
        }
    return out


def _ratios(res: dict[str, Any]) -> dict[str, float | None]:
    def ratio(a: str, b: str) -> float | None:
        x, y = res[a]["s_per_batch"], res[b]["s_per_batch"]
        return round(x / y, 3) if x and y else None

    f, m = res["featdb"], res["in-memory-uncapped"]
    return {
        "mmap_over_featdb": ratio("dgl-mmap", "featdb"),
        "featdb_over_inmemory": ratio("featdb", "in-memory-uncapped"),
        "featdb_eval_over_inmemory_eval": round(f["eval_s"] / m["eval_s"], 3)
        if f.get("eval_s") and m.get("eval_s")
        else None,
    }


def default_workdir() -> Path:
    return Path(os.environ.get("FEATDB_BENCH_DIR", ".bench-train"))

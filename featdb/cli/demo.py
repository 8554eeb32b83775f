"""``featdb demo``: the whole flow on the embedded default dataset, beside the in-memory baseline."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from .. import store as store_mod
from ..cgroup import command_path
from ..layout.pack import pack as pack_layout
from ..layout.plan import Budgets
from ..sampling.offline import SampleConfig, default_workers
from ..sampling.offline import sample as run_sample
from .common import cli, emit, output_options, progress

DEFAULT: dict[str, Any] = {"nodes": 300_000, "avg_degree": 15.0, "dim": 128, "classes": 16, "seed": 0}
FANOUTS = (10, 10)
BATCH = 1024
HOST_CACHE_FRACTION = 0.10
TRAIN_BUDGET = 1 << 30


@cli.command()
@click.option("--store", "path", default=".demo-store", show_default=True, help="Where to build the demo store.")
@click.option("--epochs", type=int, default=3, show_default=True)
@click.option("--nodes", type=int, default=DEFAULT["nodes"], show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Training seed.")
@click.option(
    "--baseline/--no-baseline",
    default=True,
    show_default=True,
    help="Also train the in-memory DGL baseline for comparison.",
)
@output_options
def demo(path: str, epochs: int, nodes: int, seed: int, baseline: bool, as_json: bool, quiet: bool) -> None:
    """Run synth -> sample -> pack -> verify -> train, and the in-memory baseline beside it.

    Example: featdb demo --json
    """
    say: Callable[[str], None] = (lambda msg: None) if (as_json or quiet) else (lambda msg: click.echo(msg, err=True))
    steps: dict[str, float] = {}
    root = Path(path)
    if root.exists():
        if not (root / "catalog" / "data.mdb").exists():
            raise click.ClickException(f"{root} exists and is not a featdb store; pick another --store")
        shutil.rmtree(root)  # a previous demo store: start afresh
    t = time.perf_counter()
    params = {**DEFAULT, "nodes": nodes}
    with store_mod.create(root) as st:
        from ..ingest import PROGRESS_PASSES, synth

        say(f"[1/5] synth: {nodes:,} nodes x {params['dim']} float32 features")
        with progress(PROGRESS_PASSES * nodes, "synth", as_json or quiet) as bar:
            synth(
                st,
                params["nodes"],
                params["avg_degree"],
                params["dim"],
                params["classes"],
                seed=params["seed"],
                progress=bar,
            )
        steps["synth_s"] = _lap(t)
        say(f"[2/5] sample: {epochs} epochs, fanouts {FANOUTS}, batch {BATCH}")
        t = time.perf_counter()
        sdoc = run_sample(st, SampleConfig("demo", FANOUTS, BATCH, epochs, seed=0), workers=default_workers())
        steps["sample_s"] = _lap(t)
        host = int(st.schema("node/_/feat").nbytes * HOST_CACHE_FRACTION)
        say(f"[3/5] pack: host cache {host >> 20} MiB (10% of the table)")
        t = time.perf_counter()
        layout = pack_layout(st, "demo", "node/_/feat", Budgets(host_cache=host))
        steps["pack_s"] = _lap(t)
        say("[4/5] verify")
        t = time.perf_counter()
        problems = st.verify()
        steps["verify_s"] = _lap(t)
    say(f"[5/5] train: GraphSAGE, {epochs} epochs, featdb" + (" and in-memory baseline" if baseline else ""))
    runs = {"featdb": _train(root, epochs, seed, "featdb")}
    if baseline:
        runs["in-memory"] = _train(root, epochs, seed, "in-memory")
    out = _summary(steps, sdoc, layout, problems, runs)
    emit(as_json, out, None if quiet else _render(out))


def _train(root: Path, epochs: int, seed: int, loader: str) -> dict[str, Any]:
    """One ``featdb-train --json`` run (the trainer is its own package: featdb runs its command)."""
    argv = [
        command_path("featdb-train"),
        str(root),
        "--sample-set",
        "demo",
        "--epochs",
        str(epochs),
        "--seed",
        str(seed),
        "--loader",
        loader,
        "--memory-budget",
        str(TRAIN_BUDGET),
        "--json",
        "-q",
    ]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise click.ClickException(f"featdb-train ({loader}) failed: {done.stderr.strip()[-2000:]}")
    return dict(json.loads(done.stdout))


def _lap(t: float) -> float:
    return round(time.perf_counter() - t, 2)


def _summary(
    steps: dict[str, float],
    sdoc: dict[str, Any],
    layout: dict[str, Any],
    problems: list[str],
    runs: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    keep = (
        "epochs",
        "epoch_s",
        "stage_s",
        "epoch_over_slowest",
        "test_acc",
        "best_val_acc",
        "tier_hit_rates",
        "read_amplification",
        "eval_s",
        "peak_rss_bytes",
    )
    out: dict[str, Any] = {
        "steps": steps,
        "sample_set": {k: sdoc[k] for k in ("batches", "bytes", "bytes_per_batch")},
        "layout": {k: layout[k] for k in ("blowup", "predicted_amplification", "l2_rows", "l4_rows")},
        "verify_problems": problems,
        "runs": {k: {f: v.get(f) for f in keep} for k, v in runs.items()},
    }
    if "in-memory" in runs:
        f, m = runs["featdb"], runs["in-memory"]
        out["featdb_vs_in_memory"] = {
            "epoch_time_ratio": round(sum(f["epoch_s"][1:] or f["epoch_s"]) / sum(m["epoch_s"][1:] or m["epoch_s"]), 3),
            "test_acc_delta": round(f["test_acc"] - m["test_acc"], 4),
        }
    return out


def _render(o: dict[str, Any]) -> str:
    lines = [
        f"steps: {o['steps']}",
        f"layout: {o['layout']}",
        f"verify: {'ok' if not o['verify_problems'] else o['verify_problems']}",
    ]
    for name, r in o["runs"].items():
        lines.append(f"{name:>10}: test acc {r['test_acc']:.4f}  epoch s {r['epoch_s']}  stages {r['stage_s']}")
    if "featdb_vs_in_memory" in o:
        c = o["featdb_vs_in_memory"]
        lines.append(
            f"featdb epoch time / in-memory: {c['epoch_time_ratio']}  test acc delta: {c['test_acc_delta']:+.4f}"
        )
    return "\n".join(lines)

"""Benchmark commands: measured figures anyone can rerun (not part of the test suite)."""

from __future__ import annotations

import click

from .. import bench as bench_mod
from .. import store as store_mod
from .common import SIZE, cli, emit, output_options


@cli.group()
def bench() -> None:
    """Benchmarks on a store, each from a cold page cache (results as JSON)."""


@bench.command("reads")
@click.argument("store")
@click.option("--table", default="node/_/feat", show_default=True)
@click.option("--rows", type=int, default=200_000, show_default=True)
@click.option("--batch", type=int, default=4096, show_default=True, help="Ids per read call.")
@click.option("--seed", type=int, default=0, show_default=True)
@output_options
def bench_reads(store: str, table: str, rows: int, batch: int, seed: int, as_json: bool, quiet: bool) -> None:
    """Random row reads on a cold table: featdb direct I/O vs numpy.memmap, same ids, same run.

    Example: featdb bench reads ./store --rows 200000 --json
    """
    with store_mod.open(store) as st:
        res = bench_mod.random_reads(st, table, rows, batch, seed)
    f, m = res["featdb"], res["memmap"]
    emit(
        as_json,
        res,
        f"featdb ({f['io']}): {f['rows_per_s']:,} rows/s, amplification {f['read_amplification']}\n"
        f"memmap: {m['rows_per_s']:,} rows/s, amplification {m['read_amplification']}\n"
        f"speedup {res['speedup']}x",
    )


@bench.command("serve")
@click.argument("store")
@click.option("--epoch", type=int, default=0, show_default=True)
@click.option("--queue-depth", type=int, default=4, show_default=True)
@output_options
def bench_serve(store: str, epoch: int, queue_depth: int, as_json: bool, quiet: bool) -> None:
    """Serve one epoch of the current layout from a cold page cache; L4 vs sequential bandwidth.

    Example: featdb bench serve ./store --json
    """
    with store_mod.open(store) as st:
        res = bench_mod.serve_epoch(st, epoch, queue_depth)
    emit(
        as_json,
        res,
        f"{res['batches']} batches in {res['seconds']} s ({res['batches_per_s']}/s); "
        f"L4 {res['l4_mib_per_s']} MiB/s vs sequential {res['sequential']['mib_per_s']} MiB/s "
        f"-> {res['l4_over_sequential']}; read amplification {res['read_amplification']}",
    )


@bench.command("pack")
@click.argument("store")
@click.option("--sample-set", required=True)
@click.option("--table", default="node/_/feat", show_default=True)
@click.option("--host-cache", type=SIZE, default="0", show_default=True)
@click.option("--max-blowup", type=float)
@click.option("--memory-budget", type=SIZE, default="1GiB", show_default=True)
@output_options
def bench_pack(
    store: str,
    sample_set: str,
    table: str,
    host_cache: int,
    max_blowup: float | None,
    memory_budget: int,
    as_json: bool,
    quiet: bool,
) -> None:
    """Time a real pack against reading the base table once plus writing its bytes once (cold).

    Example: featdb bench pack ./store --sample-set train --host-cache 400MiB --json
    """
    from ..layout.plan import Budgets

    with store_mod.open(store, mode="a") as st:
        res = bench_mod.pack_ratio(
            st, sample_set, table, Budgets(host_cache=host_cache, max_blowup=max_blowup), memory_budget
        )
    emit(
        as_json,
        res,
        f"pack {res['pack_s']} s vs read-once {res['read_once']['seconds']} s + write-once "
        f"{res['write_once']['seconds']} s -> {res['pack_over_io']}",
    )


@bench.command("train")
@click.option(
    "--preset",
    type=click.Choice(["small", "large"]),
    default="small",
    show_default=True,
    help="small: 2 M nodes, 1.02 GB table, 1.5 GiB cap; large: 8 M nodes, 4.1 GB table, 2 GiB cap.",
)
@click.option("--cap", type=SIZE, help="Memory cap for every capped run (default: the preset's).")
@click.option(
    "--dir",
    "workdir",
    type=click.Path(file_okay=False),
    help="Where datasets are built and kept (default: .bench-train, or $FEATDB_BENCH_DIR).",
)
@click.option("--fresh", is_flag=True, help="Rebuild the dataset even if it is there.")
@click.option("--plot", "plot_dir", type=click.Path(file_okay=False), help="Write PNG plots here (matplotlib).")
@click.option(
    "--sweep",
    "with_sweep",
    is_flag=True,
    help="Also run featdb (one epoch) and DGL + mmap (2 batches) under caps of table / 2, / 4 "
    "and / 8 (15 minutes at most per run).",
)
@output_options
def bench_train(
    preset: str,
    cap: int | None,
    workdir: str | None,
    fresh: bool,
    plot_dir: str | None,
    with_sweep: bool,
    as_json: bool,
    quiet: bool,
) -> None:
    """featdb vs DGL + numpy.memmap vs in-memory training, each a process under one memory cap.

    Builds the preset's dataset (sample and pack run under the cap too), drops
    the page cache before every run, and reports seconds per batch, epoch and
    evaluation time, bytes read, read amplification and peak RSS per system.
    Creating the cgroup needs root; without it the runs are marked uncapped.

    Example: featdb bench train --preset small --json
    """
    from pathlib import Path

    from .. import bench_train as bt

    say = (lambda m: None) if (as_json or quiet) else (lambda m: click.echo(m, err=True))
    res = bt.run(
        preset,
        Path(workdir) if workdir else bt.default_workdir(),
        cap,
        fresh,
        Path(plot_dir) if plot_dir else None,
        say,
        with_sweep,
    )
    emit(as_json, res, None if quiet else render_train(res))


def render_train(res: dict) -> str:  # type: ignore[type-arg]
    cap = f"{res['cap_bytes'] / 2**30:.2f} GiB cap" if res["capped"] else "UNCAPPED"
    lines = [
        f"preset {res['preset']}: table {res['table_bytes'] / 1e9:.2f} GB, {cap}, "
        f"disk {res['disk_seq_read_MBps']} MB/s sequential"
    ]
    for name, st in res["steps"].items():
        lines.append(
            f"  {name:<8} {st['wall_s']:>7.1f} s  peak {st['peak_rss_bytes'] / 2**20:,.0f} MiB"
            + (f" ({st['peak_over_budget']} x budget)" if st["peak_over_budget"] else "")
        )
    for name, s in res["systems"].items():
        if not s["completed"]:
            lines.append(
                f"  {name:<19} did not complete ({'OOM-killed' if s['oom_killed'] else s.get('error')}), "
                f"peak {s['peak_rss_bytes'] / 2**20:,.0f} MiB"
            )
            continue
        lines.append(
            f"  {name:<19} {s['s_per_batch']:.4f} s/batch over {s['batches']} batches; eval "
            f"{s['eval_s'] if s['eval_s'] is not None else '-'} s; amplification "
            f"{s['read_amplification']}; peak {s['peak_rss_bytes'] / 2**20:,.0f} MiB"
        )
    r = res["ratios"]
    lines.append(
        f"mmap / featdb = {r['mmap_over_featdb']}; featdb / in-memory (uncapped) = "
        f"{r['featdb_over_inmemory']}; eval featdb / in-memory = {r['featdb_eval_over_inmemory_eval']}"
    )
    return "\n".join(lines)


@bench.command("caps")
@click.argument("store", type=click.Path(exists=True, file_okay=False))
@click.option("--sample-set", required=True, help="The sample set to pack and train on.")
@click.option("--caps", default="none,5,3,2,0", show_default=True, help="--max-blowup values; 0 stores nothing.")
@click.option("--host-cache", type=SIZE, default="100MiB", show_default=True)
@click.option("--segment-cache", type=SIZE, default="512MiB", show_default=True)
@click.option("--epochs", type=click.IntRange(min=1), default=3, show_default=True)
@click.option(
    "--memory-budget",
    type=SIZE,
    default="1.6GiB",
    show_default=True,
    help="For pack and featdb-train (featdb-train needs about 1.1 GiB beside the segment cache).",
)
@click.option("--cap", type=SIZE, help="Also run every step under a cgroup memory cap of this size.")
@click.option("--baseline/--no-baseline", default=True, show_default=True, help="Run the in-memory baseline.")
@click.option(
    "--row-formats", default="", help="Pack each cap in each of these row formats (default: the table's dtype)."
)
@click.option("--seeds", default="0", show_default=True, help="Train each layout once per seed (comma-separated).")
@click.option("--plot", "plot_dir", type=click.Path(file_okay=False), help="Write a PNG plot here (matplotlib).")
@output_options
def bench_caps(
    store: str,
    sample_set: str,
    caps: str,
    host_cache: int,
    segment_cache: int,
    epochs: int,
    memory_budget: int,
    cap: int | None,
    baseline: bool,
    row_formats: str,
    seeds: str,
    plot_dir: str | None,
    as_json: bool,
    quiet: bool,
) -> None:
    """Epoch time, bytes on disk, read amplification and test accuracy against the disk cap
    (and the row format), in one run.

    Repacks STORE for each cap (the last layout packed stays current), drops the
    page cache, trains EPOCHS epochs with featdb-train, and runs the in-memory
    baseline once beside them.

    Example: featdb bench caps ./store --sample-set train --caps none,5,3,2,0 --json

    Example: featdb bench caps ./store --sample-set train --caps none --row-formats float32,float16,int8 --seeds 0,1,2
    """
    from pathlib import Path

    from .. import bench_caps as bc

    say = (lambda m: None) if (as_json or quiet) else (lambda m: click.echo(m, err=True))
    res = bc.run(
        Path(store),
        sample_set,
        bc.parse_caps(caps),
        host_cache,
        segment_cache,
        epochs,
        memory_budget,
        cap,
        baseline,
        say,
        bc.parse_formats(row_formats),
        bc.parse_seeds(seeds),
    )
    if plot_dir:
        res["plots"] = bc.plot(res, Path(plot_dir))
    emit(as_json, res, None if quiet else bc.render(res))

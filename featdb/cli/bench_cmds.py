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
    emit(as_json, res,
         f"featdb ({f['io']}): {f['rows_per_s']:,} rows/s, amplification {f['read_amplification']}\n"
         f"memmap: {m['rows_per_s']:,} rows/s, amplification {m['read_amplification']}\n"
         f"speedup {res['speedup']}x")


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
    emit(as_json, res,
         f"{res['batches']} batches in {res['seconds']} s ({res['batches_per_s']}/s); "
         f"L4 {res['l4_mib_per_s']} MiB/s vs sequential {res['sequential']['mib_per_s']} MiB/s "
         f"-> {res['l4_over_sequential']}; read amplification {res['read_amplification']}")


@bench.command("pack")
@click.argument("store")
@click.option("--sample-set", required=True)
@click.option("--table", default="node/_/feat", show_default=True)
@click.option("--host-cache", type=SIZE, default="0", show_default=True)
@click.option("--max-blowup", type=float)
@click.option("--memory-budget", type=SIZE, default="1GiB", show_default=True)
@output_options
def bench_pack(store: str, sample_set: str, table: str, host_cache: int, max_blowup: float | None,
               memory_budget: int, as_json: bool, quiet: bool) -> None:
    """Time a real pack against reading the base table once plus writing its bytes once (cold).

    Example: featdb bench pack ./store --sample-set train --host-cache 400MiB --json
    """
    from ..layout.plan import Budgets

    with store_mod.open(store, mode="a") as st:
        res = bench_mod.pack_ratio(st, sample_set, table, Budgets(host_bytes=host_cache, max_blowup=max_blowup),
                                   memory_budget)
    emit(as_json, res, f"pack {res['pack_s']} s vs read-once {res['read_once']['seconds']} s + write-once "
                       f"{res['write_once']['seconds']} s -> {res['pack_over_io']}")

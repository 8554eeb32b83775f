"""Benchmark commands: measured figures anyone can rerun (not part of the test suite)."""

from __future__ import annotations

import click

from .. import bench as bench_mod
from .. import store as store_mod
from .common import cli, emit, output_options


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

"""Trace commands: add a trace of row ids per batch, list traces."""

from __future__ import annotations

import click

from .. import store as store_mod
from ..errors import InvalidInputError
from ..memory import peak_rss
from ..traces import add_trace, list_traces, open_trace_source
from .common import cli, emit, memory_option, output_options, progress


@cli.group()
def trace() -> None:
    """Access traces: per batch, the row ids of one table it reads (what pack lays out).

    Example: featdb trace add ./store --name clicks --table item/_/emb lookups.npz
    """


@trace.command("add")
@click.argument("store")
@click.argument("source", type=click.Path(exists=True))
@click.option("--name", required=True, help="Name of the new trace.")
@click.option("--table", required=True, help="The table whose rows the ids name (domain/type/name).")
@click.option(
    "--epochs",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="The batches are this many equal epochs (packed and served as epochs).",
)
@memory_option
@output_options
def add(
    store: str, source: str, name: str, table: str, epochs: int, memory_budget: int, as_json: bool, quiet: bool
) -> None:
    """Store SOURCE as a named trace of TABLE's row ids, batch by batch.

    SOURCE is an .npz with arrays `ids` (every batch's ids back to back) and
    `offsets` (batches + 1 entries, from 0), or a folder of .npy files, one
    batch each, read in name order. Each batch is stored as its distinct ids,
    sorted. Then: featdb pack STORE --trace NAME.

    Example: featdb trace add ./store --name clicks --table item/_/emb lookups.npz
    """
    with store_mod.open(store, mode="a") as st:
        total, batches = open_trace_source(source)
        if total % epochs:  # known before anything is written
            raise InvalidInputError(f"{source}: {total} batches do not split into {epochs} equal epochs")
        with progress(total, f"trace {name}", as_json or quiet) as bar:
            doc = add_trace(st, name, table, batches, epochs=epochs, memory_budget=memory_budget, progress=bar)
    keys = ("name", "table", "batches", "epochs", "ids", "lookups", "distinct_rows", "max_batch", "bytes", "add_s")
    summary = {k: doc[k] for k in keys}
    summary["memory"] = doc["memory"] | {"peak_rss_bytes": peak_rss()}
    text = (
        f"trace {name}: {doc['batches']} batches over {table}, {doc['lookups']:,} ids ({doc['ids']:,} once per "
        f"batch), {doc['distinct_rows']:,} rows read at least once"
    )
    emit(as_json, summary, None if quiet else text)


@trace.command("list")
@click.argument("store")
@output_options
def list_(store: str, as_json: bool, quiet: bool) -> None:
    """List the store's traces.

    Example: featdb trace list ./store --json
    """
    with store_mod.open(store) as st:
        docs = list_traces(st)
    lines = [f"{d['name']:<16} table={d['table']} batches={d['batches']} ids={d['ids']:,}" for d in docs]
    emit(as_json, docs, None if quiet else ("\n".join(lines) or "no traces"))

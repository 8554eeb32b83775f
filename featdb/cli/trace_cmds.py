"""Trace commands: add a trace of row ids per batch, list traces."""

from __future__ import annotations

import click

from .. import store as store_mod
from ..errors import InvalidInputError
from ..memory import peak_rss
from ..traces import add_trace, list_traces, open_trace_source, traces_by_type
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


@trace.command("split")
@click.argument("store")
@click.option("--sample-set", required=True, help="The sample set whose batches are split by node type.")
@click.option(
    "--type",
    "types",
    multiple=True,
    metavar="NAME=LO:HI:TABLE",
    help="A node type: its ids [LO, HI) in the graph and its table (HI - LO rows). Repeat per type. "
    "Default: the graph's node types (ingest-ogb of a heterogeneous folder) that have a node/<type>/feat table.",
)
@click.option("--prefix", help="Traces are named PREFIX.NAME (default: the sample set's name).")
@memory_option
@output_options
def split(
    store: str,
    sample_set: str,
    types: tuple[str, ...],
    prefix: str | None,
    memory_budget: int,
    as_json: bool,
    quiet: bool,
) -> None:
    """One trace per node type from a sample set over a graph whose ids are grouped by type.

    For a heterogeneous graph numbered type by type (DGL's to_homogeneous order):
    each batch's input ids of type NAME become row ids (id - LO) of TABLE, in the
    trace PREFIX.NAME, with the sample set's epochs and evaluation splits. Pack and
    serve each with --trace.

    Example: featdb trace split ./store --sample-set train --type p=0:700:node/p/feat --type a=700:900:node/a/feat
    """
    spans = dict(_type_span(t) for t in types)
    with store_mod.open(store, mode="a") as st:
        spans = spans or _graph_types(st)
        from ..sampling import SampleSet

        with SampleSet(st, sample_set) as ss:
            total = ss.num_batches * len(spans)
        with progress(total, f"split {sample_set}", as_json or quiet) as bar:
            docs = traces_by_type(st, sample_set, spans, prefix=prefix, memory_budget=memory_budget, progress=bar)
    summary = {
        t: {k: d[k] for k in ("name", "table", "batches", "ids", "distinct_rows", "empty_batches")}
        for t, d in docs.items()
    }
    lines = [f"trace {d['name']}: {d['batches']} batches over {d['table']}, {d['ids']:,} ids" for d in docs.values()]
    emit(as_json, summary, None if quiet else "\n".join(lines))


def _graph_types(st: store_mod.Store) -> dict[str, tuple[int, int, str]]:
    from ..graph import graph_info

    types = graph_info(st).get("node_types") or {}
    spans = {t: (lo, hi, f"node/{t}/feat") for t, (lo, hi) in types.items() if st.has_table(f"node/{t}/feat")}
    if not spans:
        raise InvalidInputError("the stored graph names no node types with a node/<type>/feat table: pass --type")
    return spans


def _type_span(text: str) -> tuple[str, tuple[int, int, str]]:
    name, _, rest = text.partition("=")
    parts = rest.split(":")
    try:
        return name, (int(parts[0]), int(parts[1]), parts[2])
    except (ValueError, IndexError):
        raise InvalidInputError(
            f"--type {text!r}: expected NAME=LO:HI:TABLE, e.g. paper=0:1000:node/paper/feat"
        ) from None


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

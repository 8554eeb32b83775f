"""Store commands: ingest, info, verify, read."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click
import numpy as np

from .. import store as store_mod
from ..ingest import DEFAULT_BUDGET, npy_layout
from ..ingest import ingest as ingest_table
from ..inspect import info as describe_store
from ..inspect import render
from .common import SIZE, cli, emit, output_options, parse_ids, parse_shape, progress


@contextmanager
def open_or_create(path: str) -> Iterator[store_mod.Store]:
    """The store at ``path`` for writing, created if there is none; one this command created is removed
    again if the command fails, so a failed first ingest leaves no empty store behind."""
    p = Path(path)
    if (p / "catalog" / "data.mdb").exists():
        with store_mod.open(p, mode="a") as st:
            yield st
        return
    existed = p.exists()
    st = store_mod.create(p)
    try:
        with st:
            yield st
    except BaseException:
        for child in p.iterdir() if existed else [p]:
            shutil.rmtree(child) if child.is_dir() else child.unlink()
        raise


@cli.command()
@click.argument("store")
@click.argument("key")
@click.argument("source", type=click.Path(exists=True, dir_okay=False))
@click.option("--dtype", help="Element type of a raw binary source (float32, float16, int8, ...).")
@click.option("--shape", help="ROWS,DIM of a raw binary source.")
@click.option("--as-dtype", help="Convert rows to this dtype while ingesting.")
@click.option(
    "--memory-budget",
    type=SIZE,
    default=DEFAULT_BUDGET,
    show_default=True,
    help="Bound on the working set (e.g. 256MiB).",
)
@click.option("--replace", is_flag=True, help="Replace an existing table of that key.")
@click.option("--allow-nonfinite", is_flag=True, help="Accept rows holding NaN or infinity (refused by default).")
@output_options
def ingest(
    store: str,
    key: str,
    source: str,
    dtype: str | None,
    shape: str | None,
    as_dtype: str | None,
    memory_budget: int,
    replace: bool,
    allow_nonfinite: bool,
    as_json: bool,
    quiet: bool,
) -> None:
    """Ingest a feature table from SOURCE (.npy, or raw row-major binary).

    Example: featdb ingest ./store node/paper/feat feats.npy
    """
    shp = parse_shape(shape)
    npy_shape = npy_layout(Path(source))[1] if source.endswith(".npy") and not shp else ()
    rows = shp[0] if shp else npy_shape[0] if npy_shape else 0
    with open_or_create(store) as st, progress(rows, f"ingest {key}", as_json or quiet) as bar:
        schema = ingest_table(
            st,
            key,
            source,
            dtype=dtype,
            shape=parse_shape(shape),
            memory_budget=memory_budget,
            progress=bar,
            replace=replace,
            as_dtype=as_dtype,
            allow_nonfinite=allow_nonfinite,
        )
    emit(
        as_json,
        {"key": key, "rows": schema.rows, "dim": schema.dim, "dtype": schema.dtype},
        None if quiet else f"ingested {key}: {schema.rows:,} x {schema.dim} {schema.dtype}",
    )


@cli.command()
@click.argument("store")
@output_options
def info(store: str, as_json: bool, quiet: bool) -> None:
    """Describe a store: tables, graph, sample sets, current layout.

    Example: featdb info ./store --json
    """
    with store_mod.open(store) as st:
        d = describe_store(st)
    emit(as_json, d, render(d))


@cli.command()
@click.argument("store")
@output_options
def verify(store: str, as_json: bool, quiet: bool) -> None:
    """Recompute every checksum in the store; exit 1 naming each bad file and block.

    Example: featdb verify ./store
    """
    with store_mod.open(store) as st:
        problems = st.verify()
        nfiles = len(st.files())
    emit(
        as_json,
        {"ok": not problems, "files": nfiles, "problems": problems},
        None if quiet else ("\n".join(problems) or f"ok: {nfiles} files verified"),
    )
    if problems:
        if not as_json and quiet:
            click.echo("\n".join(problems), err=True)
        sys.exit(1)


@cli.command()
@click.argument("store")
@click.argument("key")
@click.argument("ids")
@click.option("--no-verify", is_flag=True, help="Skip the page checksums of the rows read (a damaged page is printed).")
@output_options
def read(store: str, key: str, ids: str, no_verify: bool, as_json: bool, quiet: bool) -> None:
    """Print rows of table KEY for IDS such as 0,5,10-12 (for debugging); every page read is checked
    against its checksum unless --no-verify.

    Example: featdb read ./store node/_/feat 0,1,2
    """
    with store_mod.open(store) as st:
        st.verify_reads = not no_verify
        wanted = parse_ids(ids, st.schema(key).rows)
        rows = st.read(key, np.array(wanted, dtype=np.int64))
        mode = st.io_mode(key)
    emit(
        as_json,
        {"key": key, "ids": wanted, "rows": rows.tolist(), "io": mode},
        "\n".join(
            f"{i}: {np.array2string(r, precision=4, max_line_width=120)}" for i, r in zip(wanted, rows, strict=True)
        ),
    )

"""Graph commands: ingest-graph, ingest-ogb, synth, synth-mag."""

from __future__ import annotations

import time
from typing import Any

import click

from .. import graph as graph_mod
from .. import ingest as ingest_mod
from .common import SIZE, cli, emit, output_options, progress
from .store_cmds import open_or_create


def _summary(doc: dict[str, Any], started: float) -> dict[str, Any]:
    return {
        "num_nodes": doc["num_nodes"],
        "num_edges": doc["num_edges"],
        "num_classes": doc.get("num_classes"),
        "seconds": round(time.perf_counter() - started, 2),
        **{f"num_{k}": doc.get(f"num_{k}") for k in ("train", "valid", "test")},
    }


@cli.command("ingest-graph")
@click.argument("store")
@click.argument("edges", type=click.Path(exists=True, dir_okay=False))
@click.option("--num-nodes", type=int, help="Node count (default: from labels, else max id + 1).")
@click.option("--labels", type=click.Path(exists=True, dir_okay=False), help="Labels .npy (N,).")
@click.option("--split", type=click.Path(exists=True, dir_okay=False), help=".npz with train/valid/test ids.")
@click.option("--directed", is_flag=True, help="Store edges as given (default adds reverse edges).")
@click.option("--memory-budget", type=SIZE, default=graph_mod.DEFAULT_BUDGET, show_default=True)
@click.option("--replace", is_flag=True, help="Replace the store's graph.")
@output_options
def ingest_graph(
    store: str,
    edges: str,
    num_nodes: int | None,
    labels: str | None,
    split: str | None,
    directed: bool,
    memory_budget: int,
    replace: bool,
    as_json: bool,
    quiet: bool,
) -> None:
    """Ingest a graph from EDGES.npy (2 x E or E x 2) into CSC arrays in the store.

    Example: featdb ingest-graph ./store edges.npy --labels y.npy --split split.npz
    """
    t = time.perf_counter()
    n_edges = ingest_mod.NpyEdges.open(edges).num_edges
    total = graph_mod.CSC_PHASES * n_edges * (1 if directed else 2)
    with open_or_create(store) as st, progress(total, "ingest-graph", as_json or quiet) as bar:
        doc = ingest_mod.ingest_graph(
            st,
            edges,
            num_nodes=num_nodes,
            labels_path=labels,
            split_path=split,
            symmetric=not directed,
            memory_budget=memory_budget,
            progress=bar,
            replace=replace,
        )
    s = _summary(doc, t)
    emit(as_json, s, None if quiet else f"graph: {s['num_nodes']:,} nodes, {s['num_edges']:,} edges")


@cli.command("ingest-ogb")
@click.argument("store")
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.option("--split", "split_name", help="Which split/<name> folder (default: the only one).")
@click.option("--feat-key", default="node/_/feat", show_default=True)
@click.option("--memory-budget", type=SIZE, default=graph_mod.DEFAULT_BUDGET, show_default=True)
@click.option("--replace", is_flag=True)
@click.option("--allow-nonfinite", is_flag=True, help="Accept feature rows holding NaN or infinity.")
@output_options
def ingest_ogb(
    store: str,
    folder: str,
    split_name: str | None,
    feat_key: str,
    memory_budget: int,
    replace: bool,
    allow_nonfinite: bool,
    as_json: bool,
    quiet: bool,
) -> None:
    """Ingest an OGB node-property-prediction FOLDER (raw/*.csv.gz, split/<name>/*.csv.gz).

    A heterogeneous folder (raw/num-node-dict.csv.gz, ogbn-mag's layout) is stored
    numbered type by type (node_types in featdb info), each type's features as
    node/<type>/feat; featdb trace split then gives one trace per type.

    Example: featdb ingest-ogb ./store ./ogbn_arxiv
    """
    t = time.perf_counter()
    with open_or_create(store) as st, progress(0, "ingest-ogb", True):
        doc = ingest_mod.ingest_ogb(
            st,
            folder,
            memory_budget=memory_budget,
            split=split_name,
            feat_key=feat_key,
            replace=replace,
            allow_nonfinite=allow_nonfinite,
        )
    s = _summary(doc, t)
    emit(as_json, s, None if quiet else f"graph: {s['num_nodes']:,} nodes, {s['num_edges']:,} edges")


@cli.command()
@click.argument("store")
@click.option("--nodes", type=int, default=200_000, show_default=True)
@click.option("--avg-degree", type=float, default=15.0, show_default=True)
@click.option("--dim", type=int, default=128, show_default=True)
@click.option("--classes", type=int, default=16, show_default=True)
@click.option(
    "--homophily",
    type=float,
    default=0.8,
    show_default=True,
    help="Probability that an edge stays inside its community.",
)
@click.option("--noise", type=float, default=0.9, show_default=True, help="Feature noise std.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--train-frac", type=float, default=0.1, show_default=True)
@click.option("--valid-frac", type=float, default=0.05, show_default=True)
@click.option("--test-frac", type=float, default=0.05, show_default=True)
@click.option("--dtype", default="float32", show_default=True)
@click.option("--memory-budget", type=SIZE, default=graph_mod.DEFAULT_BUDGET, show_default=True)
@output_options
def synth(
    store: str,
    nodes: int,
    avg_degree: float,
    dim: int,
    classes: int,
    homophily: float,
    noise: float,
    seed: int,
    train_frac: float,
    valid_frac: float,
    test_frac: float,
    dtype: str,
    memory_budget: int,
    as_json: bool,
    quiet: bool,
) -> None:
    """Generate a seeded node-classification dataset (graph, features, labels, splits) into STORE.

    Communities with a power-law degree distribution; features carry a noisy
    class signal, so a GNN beats an MLP on it.

    Example: featdb synth ./store --nodes 2000000 --avg-degree 15 --dim 128 --classes 16 --seed 0
    """
    from ..ingest import PROGRESS_PASSES
    from ..ingest import synth as make_synth

    t = time.perf_counter()
    with open_or_create(store) as st, progress(PROGRESS_PASSES * nodes, "synth", as_json or quiet) as bar:
        doc = make_synth(
            st,
            nodes,
            avg_degree,
            dim,
            classes,
            homophily=homophily,
            noise=noise,
            seed=seed,
            train_frac=train_frac,
            valid_frac=valid_frac,
            test_frac=test_frac,
            memory_budget=memory_budget,
            progress=bar,
            dtype=dtype,
        )
    s = _summary(doc, t)
    emit(
        as_json,
        s,
        None
        if quiet
        else f"synth: {s['num_nodes']:,} nodes, {s['num_edges']:,} edges, {dim} x {dtype} features in {s['seconds']} s",
    )


@cli.command("synth-mag")
@click.argument("folder", type=click.Path(file_okay=False))
@click.option("--papers", type=click.IntRange(min=10), default=20_000, show_default=True)
@click.option("--classes", type=click.IntRange(min=2), default=16, show_default=True)
@click.option("--noise", type=click.FloatRange(min=0), default=2.5, show_default=True, help="Feature noise std.")
@click.option("--label-noise", type=click.FloatRange(0, 1), default=0.1, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--memory-budget", type=SIZE, default=graph_mod.DEFAULT_BUDGET, show_default=True)
@output_options
def synth_mag(
    folder: str,
    papers: int,
    classes: int,
    noise: float,
    label_noise: float,
    seed: int,
    memory_budget: int,
    as_json: bool,
    quiet: bool,
) -> None:
    """Write a seeded heterogeneous graph in ogbn-mag's OGB folder layout into FOLDER (for ingest-ogb).

    Papers (labelled, split 50/10/40), authors and fields of study with features of
    their own widths (64, 32, 16), featureless institutions; writes, cites,
    has_topic and affiliated_with relations, each homophilous to its own degree.

    Example: featdb synth-mag ./mag --papers 200000 && featdb ingest-ogb ./store ./mag
    """
    from ..ingest.synth_hetero import write_mag_folder

    t = time.perf_counter()
    out = write_mag_folder(
        folder,
        papers=papers,
        classes=classes,
        noise=noise,
        label_noise=label_noise,
        seed=seed,
        memory_budget=memory_budget,
    )
    out["seconds"] = round(time.perf_counter() - t, 2)
    nodes, edges = sum(out["nodes"].values()), sum(out["edges"].values())
    emit(as_json, out, None if quiet else f"synth-mag: {nodes:,} nodes, {edges:,} edges in {out['seconds']} s")

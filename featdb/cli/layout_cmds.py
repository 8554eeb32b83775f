"""Sampling and layout commands: sample, pack, gc."""

from __future__ import annotations

import click

from .. import store as store_mod
from ..layout.document import DEFAULT_MAX_AMPLIFICATION
from ..layout.pack import pack as pack_layout
from ..layout.plan import POLICIES, Budgets
from ..memory import peak_rss
from ..rowformat import FORMATS
from ..sampling.offline import SampleConfig, default_workers, parse_fanouts
from ..sampling.offline import sample as run_sample
from ..units import format_size
from .common import SIZE, cli, emit, finite_at_least, memory_option, output_options, progress


@cli.command()
@click.argument("store")
@click.option("--name", required=True, help="Name of the new sample set.")
@click.option(
    "--fanouts",
    default="10,10,10",
    show_default=True,
    help="Neighbours per layer, input side first; the last applies to the seeds.",
)
@click.option("--batch-size", type=int, default=1024, show_default=True)
@click.option("--epochs", type=int, default=1, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--split", default="train", show_default=True, type=click.Choice(["train", "valid", "test"]))
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Sampling processes; default one per CPU. The samples do not depend on it.",
)
@click.option(
    "--eval/--no-eval",
    "with_eval",
    default=True,
    show_default=True,
    help="Also sample the other splits once each (evaluation batches, packed with training's).",
)
@click.option(
    "--per-relation",
    is_flag=True,
    help="Typed graphs: sample each layer's fanout per relation (as DGL samples a heterogeneous graph), "
    "not across all relations together.",
)
@memory_option
@output_options
def sample(
    store: str,
    name: str,
    fanouts: str,
    batch_size: int,
    epochs: int,
    seed: int,
    split: str,
    workers: int | None,
    with_eval: bool,
    per_relation: bool,
    memory_budget: int,
    as_json: bool,
    quiet: bool,
) -> None:
    """Sample every mini-batch of EPOCHS epochs offline into a named sample set.

    With --eval (the default) the evaluation splits (valid and test, when they
    are not the training split) are sampled once each into the same set, so
    pack lays out what evaluation reads too. The graph is memory-mapped and
    shared by the sampling processes.

    Example: featdb sample ./store --name train --fanouts 10,10 --batch-size 1024 --epochs 3
    """
    from ..graph import graph_info

    cfg = SampleConfig(
        name, parse_fanouts(fanouts), batch_size, epochs, seed, split, None if with_eval else (), per_relation
    )
    evals = cfg.evals
    with store_mod.open(store, mode="a") as st:
        cfg.validate()
        doc = graph_info(st)
        sizes = {s: int(doc.get(f"num_{s}", 0) or 0) for s in (split, *evals)}
        total = sum(-(-n // max(1, batch_size)) * (epochs if s == split else 1) for s, n in sizes.items())
        with progress(total, f"sample {name}", as_json or quiet) as bar:
            doc = run_sample(st, cfg, progress=bar, workers=workers or default_workers(), memory_budget=memory_budget)
    keys = (
        "name",
        "epochs",
        "batches",
        "batches_per_epoch",
        "parts",
        "fanouts",
        "per_relation",
        "batch_size",
        "bytes",
        "bytes_per_batch",
        "input_rows",
        "sample_s",
        "memory",
    )
    emit(
        as_json,
        {k: doc[k] for k in keys},
        None
        if quiet
        else f"sample set {name}: {doc['batches']} batches, {format_size(doc['bytes'])} "
        f"({format_size(doc['bytes_per_batch'])}/batch) in {doc['sample_s']} s",
    )


@cli.command()
@click.argument("store")
@click.option("--sample-set", help="The sample set whose trace drives the layout.")
@click.option("--trace", "trace_name", help="Or a trace (featdb trace add) whose batches drive the layout.")
@click.option("--table", help="The feature table to pack (default: node/_/feat, or the trace's table).")
@click.option("--host-cache", type=SIZE, default="0", show_default=True, help="L2 host-memory budget.")
@click.option("--device-cache", type=SIZE, default="0", show_default=True, help="L1 device-memory budget.")
@click.option(
    "--max-blowup",
    type=float,
    callback=lambda ctx, param, v: finite_at_least(0.0, v, "--max-blowup"),
    help="Cap on bytes stored on disk / the table's bytes, over the whole sample set (0: store none, read blocks).",
)
@click.option(
    "--segment-cache",
    type=SIZE,
    default="512MiB",
    show_default=True,
    help="Memory serving holds whole segments in (one served, one read ahead); each fits in half.",
)
@memory_option
@click.option(
    "--policy",
    type=click.Choice(POLICIES),
    default="full",
    show_default=True,
    help="full: hot tiers + packed extents, blocks where the cap requires; blocks: no copies at all.",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--row-format",
    type=click.Choice(FORMATS),
    help="How the tiers and extents store rows (default: the table's dtype; the base table stays exact).",
)
@click.option(
    "--max-amplification",
    type=float,
    default=DEFAULT_MAX_AMPLIFICATION,
    show_default=True,
    callback=lambda ctx, param, v: finite_at_least(1.0, v, "--max-amplification"),
    help="Warn when the plan predicts reading more than this many bytes per byte needed.",
)
@click.option("--strict", is_flag=True, help="Refuse (write nothing) instead of warning.")
@click.option("--dry-run", is_flag=True, help="Print the plan's predictions; write nothing.")
@output_options
def pack(
    store: str,
    sample_set: str | None,
    trace_name: str | None,
    table: str | None,
    host_cache: int,
    device_cache: int,
    max_blowup: float | None,
    segment_cache: int,
    memory_budget: int,
    policy: str,
    seed: int,
    row_format: str | None,
    max_amplification: float,
    strict: bool,
    dry_run: bool,
    as_json: bool,
    quiet: bool,
) -> None:
    """Plan a layout from a sample set (or a trace) and pack it into a new generation.

    Example: featdb pack ./store --sample-set train --host-cache 256MiB --max-blowup 3

    Example: featdb pack ./store --sample-set train --row-format float16 --max-blowup 3

    Example: featdb pack ./store --trace clicks --host-cache 64MiB
    """
    if (sample_set is None) == (trace_name is None):
        raise click.ClickException("name exactly one of --sample-set and --trace")
    budgets = Budgets(device_cache, host_cache, max_blowup, policy, seed, segment_cache)
    with store_mod.open(store, mode="r" if dry_run else "a") as st:
        total = _batches(st, sample_set, trace_name)
        with progress(total, "pack", as_json or quiet or dry_run) as bar:
            doc = pack_layout(
                st,
                sample_set,
                table,
                budgets,
                memory_budget,
                dry_run,
                bar,
                max_amplification,
                strict,
                trace_name,
                row_format,
            )
    summary = {
        k: doc.get(k)
        for k in (
            "id",
            "dry_run",
            "policy",
            "sample_set",
            "trace",
            "table",
            "row_format",
            "stored_row_bytes",
            "segment_len",
            "segments",
            "blocks_segments",
            "l1_rows",
            "l2_rows",
            "l3_rows",
            "l4_rows",
            "blowup",
            "predicted_amplification",
            "plan_s",
            "pack_s",
        )
    }
    summary["predictions"] = doc["predictions"]
    warnings: list[str] = doc.get("warnings") or []
    summary["warnings"] = warnings
    for line in warnings:
        click.echo(f"warning: {line}", err=True)
    summary["memory"] = {"budget_bytes": memory_budget, "peak_rss_bytes": peak_rss()}
    per_epoch = doc["predictions"].get("disk_bytes_per_epoch")
    text = (
        f"{'plan' if dry_run else 'packed generation ' + str(doc.get('id'))}: policy={doc['policy']} "
        f"rows={doc['row_format']} blowup={doc['predictions'].get('blowup_bytes', doc['blowup'])} "
        f"predicted amplification={doc['predicted_amplification']} "
        + (f"({format_size(per_epoch)} read per training epoch) " if per_epoch else "")
        + f"L1={doc['l1_rows']:,} L2={doc['l2_rows']:,} L3={doc['l3_rows']:,} L4={doc['l4_rows']:,} rows "
        f"segments={doc['segments']} (blocks {doc['blocks_segments']}, longest {doc['segment_len']})"
    )
    largest = int(doc["predictions"].get("largest_segment_bytes") or 0)
    if largest:  # what the reader needs beside its other parts for read ahead to work
        held = min(int(doc["predictions"].get("segment_cache_bytes") or 2 * largest), 2 * largest)
        text += (
            f"\n  serving holds segments whole: {format_size(held)} of the reader's memory budget for two of "
            f"up to {format_size(largest)} (one served, one read ahead)"
        )
    for c in doc["predictions"].get("candidates", []):
        text += (
            f"\n  {'*' if c['chosen'] else ' '} {c['kind']:<7} blowup {c['blowup']:<7} "
            f"amplification {c['predicted_amplification']:<7} {format_size(c['disk_bytes_per_pass'])} per pass"
        )
    emit(as_json, summary, None if quiet else text)


def _batches(st: store_mod.Store, sample_set: str | None, trace_name: str | None) -> int:
    from ..sampling import SampleSet
    from ..traces import Trace

    with Trace(st, trace_name) if trace_name else SampleSet(st, str(sample_set)) as src:
        return src.num_batches


@cli.command()
@click.argument("store")
@click.option("--sample-set", "sample_sets", multiple=True, help="Also remove this sample set.")
@click.option("--trace", "traces", multiple=True, help="Also remove this trace.")
@click.option(
    "--force", is_flag=True, help="Remove a sample set or trace even if the current layout was packed for it."
)
@output_options
def gc(
    store: str, sample_sets: tuple[str, ...], traces: tuple[str, ...], force: bool, as_json: bool, quiet: bool
) -> None:
    """Remove non-current, unpinned generations, orphaned partial files and named sample sets and traces.

    Example: featdb gc ./store --sample-set old-train --trace old-clicks
    """
    from ..layout.gc import gc as collect

    with store_mod.open(store, mode="a") as st:
        res = collect(st, sample_sets, force, traces)
    removed_sets = res["sample_sets"] + [f"trace {t}" for t in res["traces"]]
    emit(
        as_json,
        res,
        None
        if quiet
        else f"removed generations: {res['removed'] or 'none'}; pinned (kept): {res['pinned'] or 'none'}; "
        f"sample sets: {removed_sets or 'none'}",
    )

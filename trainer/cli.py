"""``featdb-train``: train a GNN on a featdb store (also ``python -m trainer``)."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from featdb.cli import memory_option, one_line_errors

from .dist_cli import dist_options, run_dist
from .loop import LOADERS, TrainConfig, train


@click.command()
@click.argument("store")
@click.option("--sample-set", help="Training sample set (from featdb sample); required unless --dist.")
@click.option(
    "--model",
    type=click.Choice(["sage", "gat", "mlp", "rgcn"]),
    default="sage",
    show_default=True,
    help="rgcn: a relational GCN over a typed graph's node and edge types (every typed table; --table unused).",
)
@click.option("--hidden", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--epochs", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=3e-3, show_default=True)
@click.option("--dropout", type=click.FloatRange(0, 1, max_open=True), default=0.3, show_default=True)
@click.option("--heads", type=click.IntRange(min=1), default=4, show_default=True, help="GAT attention heads.")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda[:N].")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--queue-depth", type=click.IntRange(min=1), default=4, show_default=True, help="Batches in flight per stage."
)
@click.option(
    "--loader",
    type=click.Choice(LOADERS),
    default="featdb",
    show_default=True,
    help="featdb, or a baseline: in-memory features / DGL over numpy.memmap, sampling in the loop.",
)
@click.option("--table", default="node/_/feat", show_default=True)
@click.option(
    "--checkpoint", help="Checkpoint path (default: checkpoints/<store>-<set>-<model>-<loader>-s<seed>.pt here)."
)
@click.option("--resume", is_flag=True, help="Continue from the last checkpoint.")
@click.option("--threads", type=click.IntRange(min=0), default=0, help="torch intra-op threads (0: torch's default).")
@click.option(
    "--max-batches",
    type=click.IntRange(min=0),
    default=0,
    help="Train only this many batches per epoch and skip evaluation (for slow baselines).",
)
@click.option(
    "--no-verify-reads",
    is_flag=True,
    help=(
        "Skip checking what is read against its checksums (on 2 cores the 2 M-node quickstart's "
        "epochs are about a tenth faster without: docs/reliability.md)."
    ),
)
@dist_options
@memory_option
@click.option("--json", "as_json", is_flag=True, help="Print one summary object.")
@click.option("-q", "--quiet", is_flag=True)
def main(
    store: str,
    sample_set: str | None,
    model: str,
    hidden: int,
    epochs: int,
    lr: float,
    dropout: float,
    heads: int,
    device: str,
    seed: int,
    queue_depth: int,
    loader: str,
    table: str,
    checkpoint: str | None,
    resume: bool,
    threads: int,
    max_batches: int,
    no_verify_reads: bool,
    memory_budget: int,
    as_json: bool,
    quiet: bool,
    **dist: Any,
) -> None:
    """Train GraphSAGE, GAT, an MLP or (on a heterogeneous graph) an R-GCN on STORE, reading
    features through featdb.

    With --dist, STORE is a partition folder (featdb partition) and this is one trainer of a
    DGL distributed job (docs/distributed.md).

    Example: featdb-train ./store --sample-set train --model sage --epochs 3 --json
    """
    if sample_set is None and not dist["dist"]:
        raise click.UsageError("Missing option '--sample-set' (required unless --dist).")
    if model == "rgcn" and dist["dist"]:
        raise click.UsageError("--model rgcn trains on one machine: partitions do not keep edge types.")
    cfg = TrainConfig(
        store,
        sample_set or "",
        model,
        hidden,
        epochs,
        lr,
        dropout,
        heads,
        device,
        seed,
        queue_depth,
        loader,
        table,
        checkpoint=checkpoint,
        resume=resume,
        threads=threads,
        memory_budget=memory_budget,
        max_batches=max_batches,
        verify_reads=not no_verify_reads,
    )
    bars = _Bars()
    if not (as_json or quiet):
        cfg.progress = bars
    try:
        with one_line_errors("featdb-train"):
            summary = run_dist(cfg, dist) if dist["dist"] else train(cfg)
    finally:
        bars.close()
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    elif not quiet:
        click.echo(render(summary) if not dist["dist"] else json.dumps(summary))


class _Bars:
    """One progress bar per epoch on stderr, fed by the training loop's progress callback."""

    def __init__(self) -> None:
        self._label: str | None = None
        self._bar: Any = None
        self._done = 0

    def __call__(self, label: str, done: int, total: int) -> None:
        if label != self._label:
            self.close()
            self._label, self._done = label, 0
            self._bar = click.progressbar(
                length=max(total, 1), label=label, file=sys.stderr, show_pos=True, show_eta=True
            )
            self._bar.__enter__()
        self._bar.update(done - self._done)
        self._done = done

    def close(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None


def render(s: dict) -> str:  # type: ignore[type-arg]
    lines = [
        f"{s['loader']} {s['model']} seed={s['seed']}: test acc {s['test_acc']:.4f} (best val {s['best_val_acc']:.4f})"
        if s["eval_s"][-1] is not None
        else f"{s['loader']} {s['model']} seed={s['seed']}: {s['batches'][-1]} batches, no evaluation"
    ]
    lines.append("epoch s: " + ", ".join(f"{x:.2f}" for x in s["epoch_s"]))
    lines.append("stage busy s: " + ", ".join(f"{k}={v:.2f}" for k, v in s["stage_s"].items()))
    if "stage_stall_s" in s:  # waiting for input or for room downstream (featdb's pipeline)
        lines.append("stage stall s: " + ", ".join(f"{k}={v:.2f}" for k, v in s["stage_stall_s"].items()))
    mem = s["memory"]
    lines.append(
        f"peak RSS {mem['peak_rss_bytes'] / 2**20:.0f} MiB (memory budget "
        f"{mem['budget_bytes'] / 2**20:.0f} MiB{'' if mem['enforced'] else ', not enforced for baselines'}); "
        "evaluation s: " + ", ".join("-" if x is None else f"{x:.2f}" for x in s["eval_s"])
    )
    if s.get("read_amplification") is not None:
        lines.append(f"read amplification {s['read_amplification']}; hit rates {s['tier_hit_rates']}")
    return "\n".join(lines)

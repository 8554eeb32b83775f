"""``featdb-train --dist``: the options of a distributed trainer, and turning them into a run."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from .loop import TrainConfig

F = TypeVar("F", bound=Callable[..., Any])


def _fanouts(ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, ...]:
    try:
        out = tuple(int(x) for x in value.split(","))
    except ValueError:
        raise click.BadParameter(f"{value!r}: neighbours per layer, e.g. 10,10") from None
    if not out or min(out) < 1:
        raise click.BadParameter(f"{value!r}: every fanout must be at least 1")
    return out


def dist_options(fn: F) -> F:
    """The options only a distributed trainer reads (ignored without --dist)."""
    opts = [
        click.option(
            "--dist",
            metavar="IP_CONFIG",
            help="Train as one trainer of a DGL distributed job (DGL's ip config; STORE is a partition folder).",
        ),
        click.option("--part-config", help="DGL partition config (default: the partition folder's featdb one)."),
        click.option(
            "--sampling",
            type=click.Choice(["online", "offline"]),
            default="online",
            show_default=True,
            help="--dist: DistNodeDataLoader every step, or sample once and pack locally.",
        ),
        click.option(
            "--fanouts", default="10,10", show_default=True, callback=_fanouts, help="--dist: input side first."
        ),
        click.option("--batch-size", type=click.IntRange(min=1), default=1024, show_default=True, help="--dist."),
        click.option("--report", help="--dist: also write the trainer's summary (JSON) here."),
        click.option(
            "--check-rows",
            type=click.IntRange(min=0),
            default=0,
            help="--dist: compare the first N batches' rows per epoch with the source store; stop on a difference.",
        ),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def run_dist(cfg: TrainConfig, opts: dict[str, Any]) -> dict[str, Any]:
    from .dist import DistConfig, train_dist

    d = DistConfig(
        opts["dist"],
        opts["part_config"],
        opts["sampling"],
        opts["fanouts"],
        opts["batch_size"],
        opts["report"],
        opts["check_rows"],
    )
    return train_dist(cfg, d)

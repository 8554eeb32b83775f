"""What every command shares: the group, --json/-q, output, progress bars, error mapping."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import click

from ..errors import FeatDBError, IdsOutOfRangeError, os_error
from ..units import parse_size

F = TypeVar("F", bound=Callable[..., Any])


class FeatDBGroup(click.Group):
    """Turns library errors, and the OS's (disk full, permissions, memory), into one readable line
    and a non-zero exit."""

    def invoke(self, ctx: click.Context) -> Any:
        with one_line_errors(lambda: f"featdb {ctx.invoked_subcommand or ''}".strip()):
            return super().invoke(ctx)


@contextmanager
def one_line_errors(command: str | Callable[[], str]) -> Iterator[None]:
    """Library and OS errors raised in the block as one :class:`click.ClickException` line."""

    def name() -> str:
        return command if isinstance(command, str) else command()

    try:
        yield
    except FeatDBError as exc:
        raise click.ClickException(f"{type(exc).__name__}: {exc}") from exc
    except OSError as exc:
        err = os_error(exc, f"running {name()}")
        raise click.ClickException(f"{type(err).__name__}: {err}") from exc
    except MemoryError as exc:
        raise click.ClickException(
            f"MemoryError: {name()} ran out of memory; lower its --memory-budget or free memory"
        ) from exc


@click.group(cls=FeatDBGroup)
@click.version_option(package_name="featdb")
def cli() -> None:
    """featdb: a feature store for training GNNs on tables larger than memory.

    Typical flow: synth (or ingest + ingest-graph) -> sample -> pack -> train.
    """


def output_options(fn: F) -> F:
    fn = click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")(fn)
    fn = click.option("-q", "--quiet", is_flag=True, help="No progress bars or chatter.")(fn)
    return fn


def memory_option(fn: F) -> F:
    """``--memory-budget``: one option name for every command that holds data."""
    from ..memory import DEFAULT_BUDGET

    return click.option(
        "--memory-budget",
        type=SIZE,
        default=DEFAULT_BUDGET,
        show_default=True,
        help="Bytes this command may hold (RAM); it refuses at start, naming the parts, "
        "when its configuration cannot fit.",
    )(fn)


def emit(as_json: bool, obj: Any, text: str | None = None) -> None:
    if as_json:
        click.echo(json.dumps(obj, indent=2, default=_jsonable))
    elif text is not None:
        click.echo(text)


def _jsonable(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)


@contextmanager
def progress(total: int, label: str, silent: bool) -> Iterator[Callable[[int], None]]:
    """A progress bar on stderr; ``silent`` (under --json or -q) shows nothing."""
    if silent or total <= 0:
        yield lambda n: None
        return
    with click.progressbar(
        length=total, label=label, file=sys.stderr, show_pos=False, show_percent=True, show_eta=True
    ) as bar:
        yield bar.update


class SizeType(click.ParamType[int]):
    name = "SIZE"

    def convert(self, value: Any, param: Any, ctx: Any) -> int:
        try:
            return parse_size(value)
        except FeatDBError as exc:
            self.fail(str(exc), param, ctx)


SIZE = SizeType()


def parse_shape(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        parts = [int(p) for p in text.replace("x", ",").split(",")]
    except ValueError as exc:
        raise click.BadParameter(f"shape {text!r}: use ROWS,DIM") from exc
    if len(parts) == 1:
        parts.append(1)
    if len(parts) != 2 or min(parts) < 0:
        raise click.BadParameter(f"shape {text!r}: use ROWS,DIM")
    return parts[0], parts[1]


def finite_at_least(low: float, value: float | None, name: str) -> float | None:
    """``value`` (None passes) if it is a finite number of at least ``low``; click's usage error otherwise."""
    if value is not None and not (math.isfinite(value) and value >= low):
        raise click.BadParameter(f"{value} is not a finite number of at least {low:g}", param_hint=name)
    return value


def parse_ids(text: str, rows: int | None = None) -> list[int]:
    """``1,2,5-9`` -> [1, 2, 5, 6, 7, 8, 9]; with ``rows``, every id must be below it."""
    ids: list[int] = []
    for part in filter(None, text.split(",")):
        lo, sep, hi = part.partition("-")
        try:
            first, last = (int(lo), int(hi)) if sep and lo else (int(part), int(part))
        except ValueError as exc:
            raise click.BadParameter(f"ids {text!r}: use e.g. 1,2,5-9") from exc
        if first > last:
            raise click.BadParameter(f"ids {text!r}: range {part} runs backwards")
        if rows is not None and not 0 <= first <= last < rows:
            bad = first if not 0 <= first < rows else last
            raise IdsOutOfRangeError(f"row id {bad} out of range [0, {rows})")
        ids += range(first, last + 1)
    return ids

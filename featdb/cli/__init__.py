"""The ``featdb`` admin CLI: one click group, one module per command family."""

from __future__ import annotations

from . import bench_cmds, demo, dist_cmds, graph_cmds, layout_cmds, store_cmds, trace_cmds  # noqa: F401 - registers commands
from .common import cli, memory_option, one_line_errors

__all__ = ["cli", "main", "memory_option", "one_line_errors"]


def main() -> None:
    cli(prog_name="featdb")

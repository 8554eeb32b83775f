"""Write docs/cli.md from the CLI's own --help text: `python tools/gen_cli_docs.py`."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from click.testing import CliRunner

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from featdb.cli import cli  # noqa: E402
from trainer.cli import main as train_main  # noqa: E402


def render() -> str:
    runner = CliRunner()
    parts = ["# CLI reference\n", "Generated from `--help` by `tools/gen_cli_docs.py`; do not edit by hand.\n"]
    for path in _paths(cli, []):
        out = runner.invoke(cli, [*path, "--help"], prog_name="featdb").output
        parts.append(f"## featdb {' '.join(path)}\n\n```\n{out.rstrip()}\n```\n")
    out = runner.invoke(train_main, ["--help"], prog_name="featdb-train").output
    parts.append(f"## featdb-train\n\n```\n{out.rstrip()}\n```\n")
    return "\n".join(parts)


def _paths(group: click.Group, prefix: list[str]) -> list[list[str]]:
    out = []
    for name in sorted(group.commands):
        cmd = group.commands[name]
        out.append([*prefix, name])
        if isinstance(cmd, click.Group):
            out += _paths(cmd, [*prefix, name])
    return out


if __name__ == "__main__":
    assert isinstance(cli, click.Group)
    (ROOT / "docs" / "cli.md").write_text(render())
    print("wrote docs/cli.md")

"""docs/api.md's examples run, in order, in one namespace, in a fresh directory."""

from __future__ import annotations

import contextlib
import io
import os
import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parent.parent / "docs" / "api.md"


def _blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)


def test_the_api_page_has_an_example_per_entry_point() -> None:
    text = "\n".join(_blocks())
    for name in (
        "featdb.create",
        "ingest(",
        "synth(",
        "sample(",
        "featdb.pack(",
        "open_reader(",
        "verify()",
        "gc(",
        "featdb.info(",
        "MemoryBudget(",
        "add_trace(",
    ):
        assert name in text, name


def test_the_api_examples_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        for i, block in enumerate(_blocks()):
            exec(compile(block, f"{DOC.name}[{i}]", "exec"), namespace)
    printed = out.getvalue()
    assert "{'train': [0, 6], 'valid': [6, 8], 'test': [8, 10]}" in printed
    assert "my job needs" in printed
    assert os.path.isdir(tmp_path / "api-store")

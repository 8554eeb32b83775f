"""``verify``: every catalog entry against its checksum and schema, the catalog's cross-references,
and every data file against its checksums. One readable line per problem; a damaged store is
reported, never a crash."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import FeatDBError
from .io import round_up, verify_file
from .pagesums import crc_function

if TYPE_CHECKING:
    from .store import Store


def verify(store: Store) -> list[str]:
    try:
        entries = store.catalog.every()
    except FeatDBError as exc:  # LMDB itself failed: nothing below can be trusted
        return [f"catalog: {exc}"]
    problems = [p for _, _, p in entries if p]
    docs = {k: d for k, d, p in entries if p is None}
    problems += _references(docs)
    files = {k[len("file/") :]: d for k, d in docs.items() if k.startswith("file/")}
    for rel, rec in sorted(files.items()):
        try:
            problems += check_file(store.root, rel, rec)
        except (FeatDBError, OSError, ValueError, KeyError, TypeError, IndexError) as exc:
            problems.append(f"{rel}: cannot be checked ({type(exc).__name__}: {exc})")
    return problems


def _references(docs: dict[str, Any]) -> list[str]:
    """Catalog entries that name files or documents the catalog does not hold."""
    problems = []
    for key, doc in docs.items():
        named: list[str] = []
        if key.startswith("table/"):
            named = [doc["file"], *([doc["page_crcs"]] if doc.get("page_crcs") else [])]
        elif key.startswith(("sampleset/", "trace/")):
            named = list(doc["files"])
        elif key.startswith("generation/"):
            named = [f"gens/{doc['id']}/{rel}" for rel in doc["files"]]
        problems += [
            f"catalog entry {key!r} names {rel}, which has no file record" for rel in named if f"file/{rel}" not in docs
        ]
    for key, cur in docs.items():
        if (key == "layout/current" or key.startswith("layout/table/")) and f"generation/{cur}" not in docs:
            problems.append(f"catalog entry {key!r} names generation {cur!r}, which the catalog lacks")
    return problems


def check_file(root: Path, rel: str, rec: dict[str, Any]) -> list[str]:
    path = root / rel
    if not path.exists():
        return [f"{rel}: missing"]
    if rec.get("kind") == "extents":
        return _extents(root, rel, rec)
    bad = verify_file(path, rec["crcs"], rec["size"], rec.get("block", 1 << 20))
    return [f"{rel}: checksum mismatch in block {b} (bytes {b << 20}..{(b + 1) << 20})" for b in bad]


def _extents(root: Path, rel: str, rec: dict[str, Any]) -> list[str]:
    """Check each extent of a layout data file against the crc in its index file."""
    path = root / rel
    index = np.fromfile(path.parent / rec["index"], dtype="<i8").reshape(-1, rec["width"])
    off_col, rows_col, crc_col = rec["cols"]
    rb = int(rec["row_bytes"])
    crc = crc_function(rec.get("checksum"))
    problems = []
    size = path.stat().st_size
    with open(path, "rb", buffering=0) as f:
        for i, row in enumerate(index.tolist()):
            if not row[rows_col]:
                continue
            length = round_up(row[rows_col] * rb)
            if not 0 <= row[off_col] <= size - length or length < 0:  # a damaged index: never read past the file
                problems.append(f"{rel}: extent {i} per {rec['index']} lies outside the file ({rec['index']} damaged?)")
                continue
            f.seek(row[off_col])
            data = f.read(length)
            if len(data) != length or crc(data, 0) != row[crc_col]:
                problems.append(f"{rel}: extent {i} (bytes {row[off_col]}..{row[off_col] + length}) fails its checksum")
    return problems

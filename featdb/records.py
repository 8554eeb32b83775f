"""The catalog's documents: how a value is encoded, and the fields each kind of document must hold.

A value is its JSON followed by ``\\x1e`` (a byte JSON never contains raw) and
the crc32, in hex, of the key and the JSON together: a flipped byte in a value
or in its key is caught when the entry is read, and by ``verify``. Values
written before the checksum (no ``\\x1e``) are read as plain JSON.

Every document read is checked against the schema of its kind (the key's
prefix): a damaged or foreign document is a :class:`CorruptCatalogError`
naming its key, never a ``JSONDecodeError`` or ``KeyError`` further on.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable
from typing import Any

from .errors import CorruptCatalogError
from .names import is_rel

SEP = b"\x1e"

Check = Callable[[Any], bool]


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _str(v: Any) -> bool:
    return isinstance(v, str)


def _ints(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, int) for x in v)


def _rels(v: Any) -> bool:
    return isinstance(v, list) and all(is_rel(x) for x in v)


def _names(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) and is_rel(x) and "/" not in x for x in v)


# kind (key prefix; an exact key where it has no '/') -> field -> check
SCHEMAS: dict[str, dict[str, Check]] = {
    "meta": {"format_version": _int},
    "graph": {"num_nodes": _int, "num_edges": _int},
    "table/": {"key": _str, "dtype": _str, "rows": _int, "dim": _int, "file": is_rel},
    "file/": {"size": _int, "crcs": _ints},
    "sampleset/": {
        "name": _str,
        "path": is_rel,
        "id_dtype": _str,
        "batches": _int,
        "epochs": _int,
        "batches_per_epoch": _int,
        "batch_size": _int,
        "num_nodes": _int,
        "fanouts": _ints,
        "segments": _names,
        "files": _rels,
    },
    "trace/": {
        "name": _str,
        "table": _str,
        "path": is_rel,
        "id_dtype": _str,
        "batches": _int,
        "epochs": _int,
        "num_rows": _int,
        "uid": _str,
        "files": _rels,
    },
    "generation/": {"id": _str, "files": _rels, "sample_set": _str, "table": _str},
}
# the name in the key that a document must repeat: kind -> (field, how the key's name maps to it)
SELF_NAMES: dict[str, tuple[str, Callable[[str], str]]] = {
    "table/": ("key", lambda n: n),
    "sampleset/": ("path", lambda n: f"samples/{n}"),
    "trace/": ("path", lambda n: f"traces/{n}"),
    "generation/": ("id", lambda n: n),
}


def encode(key: str, value: Any) -> bytes:
    body = json.dumps(value, separators=(",", ":")).encode()
    return body + SEP + b"%08x" % zlib.crc32(body, zlib.crc32(key.encode() + b"\0"))


def decode(key: str, raw: bytes) -> Any:
    """The document stored under ``key``, checked; :class:`CorruptCatalogError` naming ``key`` if damaged."""
    body, sep, crc = raw.rpartition(SEP)
    if not sep:
        body = raw  # written before values carried a checksum
    elif crc != b"%08x" % zlib.crc32(body, zlib.crc32(key.encode() + b"\0")):
        raise CorruptCatalogError(f"catalog entry {key!r} fails its checksum (the catalog is damaged)")
    try:
        doc = json.loads(body)
    except ValueError:
        raise CorruptCatalogError(f"catalog entry {key!r} is not readable JSON (the catalog is damaged)") from None
    check(key, doc)
    return doc


def kind_of(key: str) -> str | None:
    if key in SCHEMAS or key == "layout/current":
        return key
    if key.startswith("layout/table/"):  # one table's current generation
        return "layout/current"
    prefix = key.split("/", 1)[0] + "/"
    return prefix if prefix in SCHEMAS and len(key) > len(prefix) else None


def check(key: str, doc: Any) -> None:
    """:class:`CorruptCatalogError` unless ``doc`` has the fields its kind needs, of the right types."""
    kind = kind_of(key)
    if kind is None:
        return  # not a document featdb reads by schema
    if kind == "layout/current":
        if not isinstance(doc, str):
            raise CorruptCatalogError(f"catalog entry {key!r}: expected a generation id, found {type(doc).__name__}")
        return
    if not isinstance(doc, dict):
        raise CorruptCatalogError(f"catalog entry {key!r}: expected a document, found {type(doc).__name__}")
    bad = [f for f, ok in SCHEMAS[kind].items() if not ok(doc.get(f))]
    if bad:
        raise CorruptCatalogError(f"catalog entry {key!r}: field(s) {', '.join(bad)} missing or malformed")
    if kind == "file/" and not is_rel(key[len(kind) :]):
        raise CorruptCatalogError(f"catalog entry {key!r} names a path outside the store")
    if kind in SELF_NAMES:
        field, want = SELF_NAMES[kind]
        if doc[field] != want(key[len(kind) :]):
            raise CorruptCatalogError(f"catalog entry {key!r}: its {field} {doc[field]!r} does not match its key")

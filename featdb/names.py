"""One rule for every name a user gives (sample sets, table key parts, anything that becomes a path).

A name is 1-64 of ``A-Z a-z 0-9 _ . -``, starting with a letter, digit or
underscore (so never ``.``, ``..`` or a hidden file), and never containing
``.partial`` (the suffix of directories still being written). :func:`child`
joins a checked name to its folder and checks that the result stays inside.
"""

from __future__ import annotations

import re
from pathlib import Path

from .errors import InvalidInputError

NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,63}$")
RESERVED = ".partial"
RULE = "1-64 of A-Z a-z 0-9 _ . -, starting with a letter, digit or _"


def check_name(name: object, what: str = "name") -> str:
    """``name`` if it is a valid name; :class:`InvalidInputError` naming ``what`` otherwise."""
    if not isinstance(name, str) or not NAME_RE.match(name) or RESERVED in name:
        raise InvalidInputError(f"{what} {name!r}: use {RULE} (and not {RESERVED!r})")
    return name


def is_name(name: object) -> bool:
    return isinstance(name, str) and bool(NAME_RE.match(name)) and RESERVED not in name


def child(folder: Path, name: str, what: str = "name") -> Path:
    """``folder / name`` for a checked ``name``; refuses anything that would leave ``folder``."""
    path = folder / check_name(name, what)
    if path.parent.resolve() != folder.resolve():
        raise InvalidInputError(f"{what} {name!r} does not name an entry of {folder}")
    return path


def is_rel(rel: object) -> bool:
    """True for a store-relative path as the catalog records them: relative, no ``..``, no empty parts."""
    if not isinstance(rel, str) or rel.startswith("/"):
        return False
    return all(p not in ("", ".", "..") for p in rel.split("/"))

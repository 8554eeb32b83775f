"""One writer per named object: an exclusive, non-blocking ``flock`` on ``<store>/locks/<kind>.<name>``.

A second writer of the same sample set (or other named object) fails at once
with :class:`~featdb.errors.BusyError` instead of racing the first; the kernel
drops the lock when its holder exits or dies, so a crash never leaves a name
locked. The lock files are empty and never removed (removing one would let two
writers hold locks on different inodes of the same name).
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import BusyError
from .names import check_name

LOCKS = "locks"


@contextmanager
def writer_lock(root: Path, kind: str, name: str) -> Iterator[None]:
    """Hold the writer lock of ``kind``/``name`` in store ``root`` for the block."""
    d = root / LOCKS
    d.mkdir(exist_ok=True)
    path = d / f"{kind}.{check_name(name, kind + ' name')}"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BusyError(f"{kind} {name!r} is being written by another process; wait for it to finish") from None
        yield
    finally:
        os.close(fd)

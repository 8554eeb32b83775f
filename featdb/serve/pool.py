"""A bounded pool of page-aligned buffers, reused so no read allocates.

Buffers are handed out in ticket order: a batch requested earlier gets a buffer
before one requested later. Without that, with every buffer held by finished
batches the consumer has not reached yet, a free buffer could go to a later
batch while the consumer waits on an earlier one — a deadlock.
"""

from __future__ import annotations

import mmap
import threading
import time

from ..errors import ResourceExhaustedError
from ..io import aligned_buffer


class BufferPool:
    """``count`` aligned buffers of ``nbytes``; :meth:`acquire` waits at most ``timeout`` seconds."""

    def __init__(self, count: int, nbytes: int, timeout: float = 120.0) -> None:
        self.nbytes = nbytes
        self.count = count
        self.timeout = timeout
        self._cond = threading.Condition()
        self._free = [aligned_buffer(nbytes) for _ in range(count)]
        self._issued = 0  # next ticket to hand out
        self._serving = 0  # the ticket whose turn it is
        self._skipped: set[int] = set()

    @property
    def available(self) -> int:
        """Buffers not held by any batch right now."""
        with self._cond:
            return len(self._free)

    def ticket(self) -> int:
        """A place in line, taken when a read is requested."""
        with self._cond:
            t = self._issued
            self._issued += 1
            return t

    def acquire(self, ticket: int | None = None) -> mmap.mmap:
        with self._cond:
            if ticket is None:
                ticket = self._issued
                self._issued += 1
            deadline = time.monotonic() + self.timeout
            while not (self._free and self._serving == ticket):
                left = deadline - time.monotonic()
                if left <= 0:
                    self._skip(ticket)
                    raise ResourceExhaustedError(
                        f"all {self.count} batch buffers are held and none came back within "
                        f"{self.timeout:.0f} s: release batches (BatchRows.release or a with block) "
                        "or open the reader with a larger queue_depth"
                    )
                self._cond.wait(left)
            self._serving += 1
            self._advance()
            self._cond.notify_all()
            return self._free.pop()

    def skip(self, ticket: int) -> None:
        """Give up a place in line (the read failed or was cancelled before it took a buffer)."""
        with self._cond:
            self._skip(ticket)

    def _skip(self, ticket: int) -> None:
        if ticket >= self._serving:
            self._skipped.add(ticket)
            self._advance()
            self._cond.notify_all()

    def _advance(self) -> None:
        while self._serving in self._skipped:
            self._skipped.remove(self._serving)
            self._serving += 1

    def release(self, buf: mmap.mmap) -> None:
        with self._cond:
            self._free.append(buf)
            self._cond.notify_all()

"""A bounded pool of page-aligned buffers, reused so no read allocates."""

from __future__ import annotations

import mmap
import queue

from ..errors import ResourceExhaustedError
from ..io import aligned_buffer


class BufferPool:
    """``count`` aligned buffers of ``nbytes``; :meth:`acquire` waits at most ``timeout`` seconds."""

    def __init__(self, count: int, nbytes: int, timeout: float = 120.0) -> None:
        self.nbytes = nbytes
        self.count = count
        self.timeout = timeout
        self._free: queue.Queue[mmap.mmap] = queue.Queue()
        for _ in range(count):
            self._free.put(aligned_buffer(nbytes))

    def acquire(self) -> mmap.mmap:
        try:
            return self._free.get(timeout=self.timeout)
        except queue.Empty:
            raise ResourceExhaustedError(
                f"all {self.count} batch buffers are held and none came back within {self.timeout:.0f} s: "
                "release batches (BatchRows.release or a with block) or open the reader with a larger "
                "queue_depth") from None

    def release(self, buf: mmap.mmap) -> None:
        self._free.put(buf)

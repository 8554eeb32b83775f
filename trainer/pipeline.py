"""Stages joined by bounded queues, each on its own thread, timed.

An epoch costs about its slowest stage, not the sum: while the model computes
batch i, the stages before it decode batch i+1's sample, read batch i+2's rows
and so on, at most ``depth`` items ahead per queue.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

_END = object()


@dataclass
class StageTime:
    busy: float = 0.0
    stall: float = 0.0
    items: int = 0

    def as_dict(self) -> dict[str, float]:
        return {"busy_s": round(self.busy, 3), "stall_s": round(self.stall, 3), "items": self.items}


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class Pipeline:
    """Runs ``stages`` (name, fn) over ``items``; iterate to get the last stage's outputs."""

    def __init__(
        self,
        items: Iterable[Any],
        stages: list[tuple[str, Callable[[Any], Any]]],
        depth: int = 2,
        on_drop: Callable[[Any], None] | None = None,
    ) -> None:
        self._on_drop = on_drop
        self.times: dict[str, StageTime] = {name: StageTime() for name, _ in stages}
        self._stop = threading.Event()
        self._queues: list[queue.Queue[Any]] = [queue.Queue(maxsize=max(1, depth)) for _ in range(len(stages) + 1)]
        self._threads = [threading.Thread(target=self._feed, args=(items,), daemon=True, name="pipe-feed")]
        for i, (name, fn) in enumerate(stages):
            self._threads.append(
                threading.Thread(
                    target=self._run,
                    args=(name, fn, self._queues[i], self._queues[i + 1]),
                    daemon=True,
                    name=f"pipe-{name}",
                )
            )
        for t in self._threads:
            t.start()

    def _put(self, q: queue.Queue[Any], item: Any) -> bool:
        while not self._stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _feed(self, items: Iterable[Any]) -> None:
        try:
            for item in items:
                if not self._put(self._queues[0], item):
                    return
        except BaseException as exc:
            self._put(self._queues[0], _Failure(exc))
        self._put(self._queues[0], _END)

    def _run(self, name: str, fn: Callable[[Any], Any], inq: queue.Queue[Any], outq: queue.Queue[Any]) -> None:
        st = self.times[name]
        while not self._stop.is_set():
            t0 = time.perf_counter()
            try:
                item = inq.get(timeout=0.1)
            except queue.Empty:
                st.stall += time.perf_counter() - t0
                continue
            t1 = time.perf_counter()
            st.stall += t1 - t0
            if item is _END or isinstance(item, _Failure):
                self._put(outq, item)
                return
            try:
                out = fn(item)
            except BaseException as exc:
                self._drop(item)  # what it held (a read buffer) goes back
                out = _Failure(exc)
            t2 = time.perf_counter()
            st.busy += t2 - t1
            st.items += 1
            if not self._put(outq, out):
                self._drop(out)  # closed while this output waited for room
                return
            st.stall += time.perf_counter() - t2

    def __iter__(self) -> Iterator[Any]:
        q = self._queues[-1]
        while True:
            item = q.get()
            if item is _END:
                return
            if isinstance(item, _Failure):
                self.close()
                raise item.exc
            yield item

    def close(self) -> None:
        """Stop every stage and hand every output not consumed to ``on_drop`` (e.g. to free buffers).

        Queues are drained before the threads are joined as well as after: a
        stage may be blocked on a resource that only a dropped item gives back
        (a read buffer), and it must be able to finish its item and stop.
        """
        self._stop.set()
        self._drain()
        for t in self._threads:
            t.join(timeout=5)
        self._drain()

    def _drain(self) -> None:
        for q in self._queues:
            while True:
                try:
                    item = q.get_nowait()
                except queue.Empty:
                    break
                self._drop(item)

    def _drop(self, item: Any) -> None:
        if self._on_drop is not None and item is not _END and not isinstance(item, _Failure):
            self._on_drop(item)

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

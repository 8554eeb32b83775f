"""Run a command under a memory cap: a cgroup of its own (v1 or v2), created and removed here.

A cgroup's memory limit covers the process's heap *and* the page cache it
fills, which is how "features larger than memory" is modelled (Ginex and
DiskGNN do the same). :class:`MemoryCap` creates a child group under the first
writable memory hierarchy it finds, starts each command inside it, reports
whether the kernel's OOM killer ended it, and removes the group on exit. Where
no hierarchy is writable (not root, no memory controller) it says so and runs
the command uncapped; callers mark such results ``capped: false``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

V1_ROOT = Path("/sys/fs/cgroup/memory")
V2_ROOTS = (Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup"))


@dataclass(frozen=True, slots=True)
class Finished:
    """How a command ended: exit status, wall seconds, its own peak RSS, stdout, stderr's tail."""

    returncode: int
    seconds: float
    peak_rss_bytes: int
    stdout: str
    stderr_tail: str
    oom_killed: bool
    last_io_read_bytes: int | None  # /proc/<pid>/io read_bytes, last seen while it ran


def command_path(name: str) -> str:
    """A console script installed beside this interpreter (``featdb-train`` in the same virtualenv),
    else the bare name for ``PATH`` to resolve."""
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else name


class MemoryCap:
    """A cgroup with ``limit`` bytes of memory (None: no cap) for the commands run through it."""

    def __init__(self, limit: int | None, name: str = "featdb-bench") -> None:
        self.limit = limit
        self.path: Path | None = None
        self.version: str | None = None
        self.why_uncapped: str | None = None if limit else "no cap asked for"
        if limit:
            self._create(f"{name}-{os.getpid()}-{time.time_ns() % 10**9}")

    @property
    def capped(self) -> bool:
        return self.path is not None

    def _create(self, name: str) -> None:
        errors = []
        if (V1_ROOT / "memory.limit_in_bytes").exists():
            try:
                self._make(V1_ROOT / name, "memory.limit_in_bytes", "v1")
                (V1_ROOT / name / "memory.swappiness").write_text("0")
                return
            except OSError as exc:
                errors.append(f"cgroup v1: {exc}")
        for root in V2_ROOTS:
            try:
                if "memory" in (root / "cgroup.controllers").read_text().split():
                    self._make(root / name, "memory.max", "v2")
                    return
            except OSError as exc:
                errors.append(f"cgroup v2 at {root}: {exc}")
        self.why_uncapped = "; ".join(errors) or "no writable cgroup memory controller"

    def _make(self, path: Path, limit_file: str, version: str) -> None:
        path.mkdir()
        try:
            (path / limit_file).write_text(str(self.limit))
        except OSError:
            path.rmdir()
            raise
        self.path, self.version = path, version

    def join(self) -> None:
        """Put the calling process in the group (for ``preexec_fn``: the command and its children
        are capped from their first allocation)."""
        if self.path is not None:
            (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def oom_kills(self) -> int:
        """How many processes the kernel's OOM killer has ended in this group so far."""
        if self.path is None:
            return 0
        for name in ("memory.oom_control", "memory.events"):
            try:
                for line in (self.path / name).read_text().splitlines():
                    key, _, value = line.partition(" ")
                    if key == "oom_kill":
                        return int(value)
            except OSError:
                continue
        return 0

    def run(
        self,
        argv: Sequence[str],
        env: dict[str, str] | None = None,
        timeout: float | None = None,
        on_poll: Callable[[int], None] | None = None,
    ) -> Finished:
        """Run ``argv`` inside the group; its own peak RSS comes from ``wait4``."""
        before = self.oom_kills()
        t = time.perf_counter()
        with open(os.devnull, "rb") as devnull:
            proc = subprocess.Popen(
                list(argv),
                stdin=devnull,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                preexec_fn=self.join,
                text=True,
            )
        status, usage, out, err, io_seen = _wait(proc, timeout, on_poll)
        return Finished(
            status, round(time.perf_counter() - t, 3), usage, out, err[-4000:], self.oom_kills() > before, io_seen
        )

    def close(self) -> None:
        """Remove the group and any groups its commands made inside it, deepest first (each is
        empty once its commands have ended; removal is retried while the kernel lets go of it)."""
        if self.path is None:
            return
        groups = sorted((d for d in self.path.rglob("*") if d.is_dir()), key=lambda d: -len(d.parts))
        for group in [*groups, self.path]:
            for _ in range(50):
                try:
                    group.rmdir()
                    break
                except OSError:
                    time.sleep(0.1)
        self.path = None

    def __enter__(self) -> MemoryCap:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def _wait(
    proc: subprocess.Popen[str], timeout: float | None, on_poll: Callable[[int], None] | None
) -> tuple[int, int, str, str, int | None]:
    """Exit status (negative: the signal), the child's own peak RSS (``wait4``), stdout, stderr,
    and the last ``read_bytes`` seen in /proc/<pid>/io while it ran."""
    import threading

    chunks: dict[str, list[str]] = {"out": [], "err": []}

    def pump(stream: Any, key: str) -> None:
        for line in stream:
            chunks[key].append(line)

    threads = [
        threading.Thread(target=pump, args=(s, k), daemon=True) for s, k in ((proc.stdout, "out"), (proc.stderr, "err"))
    ]
    for th in threads:
        th.start()
    deadline = None if timeout is None else time.monotonic() + timeout
    seen = None
    while True:
        seen = _io_read_bytes(proc.pid) or seen
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if on_poll is not None and seen is not None:
            on_poll(seen)
        if deadline is not None and time.monotonic() > deadline:
            proc.kill()
        time.sleep(0.2)
    proc.returncode = os.waitstatus_to_exitcode(status)
    for th in threads:
        th.join(timeout=10)
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()
    return proc.returncode, int(usage.ru_maxrss) * 1024, "".join(chunks["out"]), "".join(chunks["err"]), seen


def _io_read_bytes(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/io", encoding="ascii") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("read_bytes:"))
    except (OSError, StopIteration, ValueError):
        return None

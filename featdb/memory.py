"""Memory as an account: a budget that every component charges before it allocates.

A command or API entry point makes one :class:`MemoryBudget` from the user's
``--memory-budget`` (``memory_budget=`` in Python). Each component charges the
bytes it will hold — graph arrays, tiers, read buffers in flight, caches — with
:meth:`MemoryBudget.charge`; flexible components (a cache, a queue depth) size
themselves from :meth:`MemoryBudget.left`. Once the fixed parts are charged,
:meth:`MemoryBudget.check` raises :class:`~featdb.errors.BudgetExceededError`
naming every part and its size when they do not fit, before anything large is
allocated.

Memory-mapped data (a graph's CSC arrays) is charged as *mapped*, after the
fixed parts: it takes what is left of the budget and never causes a refusal,
because its pages are page cache the kernel evicts under pressure (the run is
slower, not killed). Resident mapped pages count in the peak RSS, as do the
shared libraries' pages, which is why the runtime parts below are resident
sizes, not heap sizes.

:func:`peak_rss` reads the process's high-water mark (``VmHWM``) so that every
``--json`` summary reports the measured peak beside the budget.
"""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass
from typing import Any

from .errors import BudgetExceededError, ConfigError
from .units import format_size

DEFAULT_BUDGET = 1 << 30
"""What a command may hold when the user sets nothing: fits a machine with 4 GiB of RAM."""

RUNTIME_BYTES = 48 << 20
"""The interpreter with numpy, lmdb and featdb imported (measured: 41 MiB resident)."""

TORCH_RUNTIME_BYTES = 480 << 20
"""The interpreter with torch imported, as the trainer runs (measured: 467 MiB resident, of which
278 MiB are shared-library pages)."""

DGL_RUNTIME_BYTES = 600 << 20
"""The interpreter with torch and DGL imported, as sampling runs (measured: 583 MiB resident, of
which 329 MiB are shared-library pages)."""


@dataclass(frozen=True, slots=True)
class Part:
    """One thing a component holds: its name, its bytes, and whether the pages are evictable
    (then ``nbytes`` is what may stay resident and ``mapped_bytes`` the whole mapping)."""

    name: str
    nbytes: int
    mapped_bytes: int = 0


class MemoryBudget:
    """A byte limit and the parts charged against it (see the module docstring)."""

    def __init__(self, limit: int, what: str = "this command") -> None:
        if limit <= 0:
            raise ConfigError(f"--memory-budget must be positive, got {limit}")
        self.limit = int(limit)
        self.what = what
        self.parts: list[Part] = []

    @property
    def charged(self) -> int:
        """Bytes charged (resident memory-mapped pages included)."""
        return sum(p.nbytes for p in self.parts)

    def left(self) -> int:
        """Bytes not yet charged (never negative)."""
        return max(0, self.limit - self.charged)

    def charge(self, name: str, nbytes: int) -> int:
        """Record ``nbytes`` held for ``name`` (call :meth:`check` once the fixed parts are in)."""
        self.parts.append(Part(name, int(nbytes)))
        return int(nbytes)

    def check(self) -> None:
        """Raise :class:`BudgetExceededError`, naming every part, if the charges pass the limit."""
        if self.charged > self.limit:
            raise BudgetExceededError(self.refusal())

    def charge_mapped(self, name: str, nbytes: int) -> int:
        """Record a memory-mapped part; what is left of the budget may stay resident (returned)."""
        resident = min(int(nbytes), self.left())
        self.parts.append(Part(name, resident, int(nbytes)))
        return resident

    def fit(self, name: str, want: int, minimum: int = 0) -> int:
        """Charge as much of ``want`` as is left (at least ``minimum``, else refuse); return it."""
        got = self.charge(name, max(minimum, min(int(want), self.left())))
        self.check()
        return got

    def refusal(self) -> str:
        parts = ", ".join(f"{p.name} {format_size(p.nbytes)}" for p in self.parts)
        return (
            f"{self.what} needs {format_size(self.charged)} but --memory-budget is "
            f"{format_size(self.limit)} ({parts}); raise --memory-budget or shrink the largest part"
        )

    def as_dict(self) -> dict[str, Any]:
        """The account for a ``--json`` summary, with the measured peak beside it."""
        return {
            "budget_bytes": self.limit,
            "charged_bytes": self.charged,
            "parts": {p.name: p.nbytes for p in self.parts},
            "mapped_bytes": {p.name: p.mapped_bytes for p in self.parts if p.mapped_bytes},
            "peak_rss_bytes": peak_rss(),
        }


def peak_rss() -> int:
    """This process's peak resident set in bytes (``VmHWM``; ``ru_maxrss`` where there is no /proc)."""
    hwm = status_bytes(os.getpid(), ("VmHWM",)).get("VmHWM")
    return hwm if hwm is not None else int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def status_bytes(pid: int, keys: tuple[str, ...]) -> dict[str, int]:
    """The memory fields ``keys`` of ``/proc/<pid>/status`` (``VmRSS``, ``RssAnon``, ...) in bytes;
    empty when the process is gone or there is no /proc."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            return {k: int(v.split()[0]) << 10 for k, _, v in (ln.partition(":") for ln in f) if k in keys}
    except (OSError, ValueError, IndexError):
        return {}


def children_peak_rss() -> int:
    """The largest peak resident set among this process's finished, waited-for children."""
    return int(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) * 1024


def available_memory() -> int:
    """Bytes this process could still fill without pressure: the kernel's ``MemAvailable``, or less
    where its memory cgroups are closer to their limits (:func:`cgroup_headroom`)."""
    avail = _meminfo_available()
    try:
        with open("/proc/self/cgroup", encoding="ascii") as f:
            lines = f.read().splitlines()
    except OSError:
        return avail
    headroom = cgroup_headroom(lines)
    return avail if headroom is None else min(avail, headroom)


def cgroup_headroom(cgroup_lines: list[str], sysfs: str = "/sys/fs/cgroup") -> int | None:
    """The least limit-minus-usage over the memory cgroups of a ``/proc/<pid>/cgroup`` listing (v1
    or v2): the process's own group and every group above it that it can see, since a limit set on a
    parent (a systemd slice) binds its children too. On v2 ``memory.high`` (where the kernel starts
    reclaiming and throttling) counts as a limit beside ``memory.max``. None: no limit anywhere."""
    least: int | None = None
    limits: tuple[str, ...]
    for controllers, path in (ln.split(":", 2)[1:] for ln in cgroup_lines if ln.count(":") >= 2):
        if "memory" in controllers.split(","):
            root, used, limits = f"{sysfs}/memory", "memory.usage_in_bytes", ("memory.limit_in_bytes",)
        elif controllers == "":
            root, used, limits = sysfs, "memory.current", ("memory.max", "memory.high")
        else:
            continue
        parts = [p for p in path.split("/") if p not in ("", ".", "..")]
        for depth in range(len(parts), -1, -1):  # the group itself, then each group above it
            base = root + "".join(f"/{p}" for p in parts[:depth])
            usage = _read_text(f"{base}/{used}")
            for limit in (_read_text(f"{base}/{name}") for name in limits):
                if limit.isdigit() and usage.isdigit():  # "max" (none) and missing files are skipped
                    room = max(0, int(limit) - int(usage))
                    least = room if least is None else min(least, room)
    return least


def _meminfo_available() -> int:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _read_text(path: str) -> str:
    try:
        with open(path, encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return ""

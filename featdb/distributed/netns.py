"""N machines on one box: network namespaces joined by a bridge, each with a private /dev/shm.

Two ``127.0.0.1`` lines in DGL's ip config do not make two machines (every client decides it is
machine 0, and the servers overwrite each other's shared-memory segments). Here each simulated
machine is a network namespace with one address on a veth pair whose other end sits on a bridge
in a hub namespace of its own, and each machine's processes run in a private mount namespace
with a fresh tmpfs on ``/dev/shm``. Traffic stays between the namespaces this creates: the host's
interfaces, routes and ``/dev/shm`` are never touched.

Needs root (``ip netns``, ``unshare --mount``). Every run is bounded by a deadline and removes
what it made — processes, namespaces (which takes their veths and the bridge with them) and the
tmpfs mounts (they vanish with the last process of their mount namespace) — also when it fails.
Names carry this process's id, so :func:`cleanup_stale` can remove what a killed run left.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError

PREFIX = "featdb-sim-"
SUBNET = "10.213.{i}.0"  # private, and only inside namespaces this module creates
SHM_SIZE = "4g"  # tmpfs size cap; pages are only used as written


def available() -> str | None:
    """Why namespaces cannot be made here (``None``: they can)."""
    if os.geteuid() != 0:
        return "simulating machines needs root (ip netns, unshare --mount)"
    for tool in ("ip", "unshare"):
        if shutil.which(tool) is None:
            return f"simulating machines needs the {tool!r} command"
    probe = f"{PREFIX}probe-{os.getpid()}"
    try:
        _ip("netns", "add", probe)
    except ConfigError as exc:
        return f"cannot create a network namespace: {exc}"
    finally:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=30, check=False)
    return None


@dataclass(frozen=True, slots=True)
class Machine:
    """One simulated machine: its namespace, address and interface name (for GLOO_SOCKET_IFNAME)."""

    index: int
    netns: str
    ip: str
    ifname: str


def _ip(*args: str, netns: str | None = None) -> None:
    cmd = ["ip", *(("-n", netns) if netns else ()), *args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    if r.returncode != 0:
        raise ConfigError(f"{' '.join(cmd)}: {r.stderr.strip() or r.returncode}")


@contextlib.contextmanager
def machines(n: int, tag: str | None = None) -> Iterator[list[Machine]]:
    """``n`` namespaces on one private subnet; removed on exit, whatever happened inside."""
    if not 1 <= n <= 200:
        raise ConfigError(f"machines: 1..200, got {n}")
    tag = tag or str(os.getpid())
    hub = f"{PREFIX}{tag}-hub"
    made = [hub]
    subnet = SUBNET.format(i=os.getpid() % 250)
    base = subnet.rsplit(".", 1)[0]
    try:
        _ip("netns", "add", hub)
        _ip("link", "add", "br0", "type", "bridge", netns=hub)
        _ip("link", "set", "br0", "up", netns=hub)
        out = []
        for i in range(n):
            ns = f"{PREFIX}{tag}-m{i}"
            _ip("netns", "add", ns)
            made.append(ns)
            _ip("link", "add", f"h{i}", "type", "veth", "peer", "name", "eth0", "netns", ns, netns=hub)
            _ip("link", "set", f"h{i}", "master", "br0", "up", netns=hub)
            ip = f"{base}.{i + 1}"
            _ip("addr", "add", f"{ip}/24", "dev", "eth0", netns=ns)
            _ip("link", "set", "eth0", "up", netns=ns)
            _ip("link", "set", "lo", "up", netns=ns)
            out.append(Machine(i, ns, ip, "eth0"))
        yield out
    finally:
        _remove(made)


def _remove(names: list[str]) -> None:
    """End every process still in the namespaces, then delete them (veths and bridge go too)."""
    for ns in names:
        r = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, timeout=30, check=False)
        for pid in (int(x) for x in r.stdout.split() if x.isdigit()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    for ns in names:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30, check=False)


def leftovers() -> list[str]:
    """Namespaces made by this module that still exist."""
    r = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=30, check=False)
    return [line.split()[0] for line in r.stdout.splitlines() if line.startswith(PREFIX)]


def cleanup_stale() -> list[str]:
    """Remove the namespaces of simulations whose process is gone (a run killed with SIGKILL)."""
    stale = []
    for ns in leftovers():
        tag = ns[len(PREFIX) :].split("-", 1)[0]
        if tag.isdigit() and _alive(int(tag)):
            continue
        stale.append(ns)
    _remove(stale)
    return stale


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def machine_argv(m: Machine, argv: list[str]) -> list[str]:
    """Run ``argv`` as machine ``m``: in its network namespace, in a new mount namespace with a
    private tmpfs on /dev/shm and this host's memory cgroups mounted as a real machine has them
    (``ip netns exec`` mounts a fresh /sys, which hides /sys/fs/cgroup)."""
    cgroups = _cgroup_mount()  # best effort: without them only --server-memory-cap fails (and says why)
    shm = f"mount -t tmpfs -o size={SHM_SIZE},mode=1777 tmpfs /dev/shm"
    script = f'{shm} || exit 1; {{ {cgroups} }} 2>/dev/null; exec "$@"'
    return [
        "ip",
        "netns",
        "exec",
        m.netns,
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        script,
        "sh",
        *argv,
    ]


def _cgroup_mount() -> str:
    """Shell that mounts the host's memory cgroup hierarchy (v1 or v2) at its usual place; the
    mounts vanish with the machine's private mount namespace."""
    from ..cgroup import V1_ROOT

    if (V1_ROOT / "memory.limit_in_bytes").exists():
        return (
            f"mount -t tmpfs -o mode=755 cgroup /sys/fs/cgroup && mkdir {V1_ROOT} && "
            f"mount -t cgroup -o memory memory {V1_ROOT};"
        )
    try:
        if "memory" in Path("/sys/fs/cgroup/cgroup.controllers").read_text().split():
            return "mount -t cgroup2 cgroup2 /sys/fs/cgroup;"
    except OSError:
        pass
    return "true;"


def dead_cgroups() -> list[Path]:
    """The server cgroups (``launch.SERVER_GROUP``) of machines whose launcher is gone."""
    from ..cgroup import V1_ROOT, V2_ROOTS
    from .launch import SERVER_GROUP

    dead = []
    for root in (V1_ROOT, *V2_ROOTS):
        for d in root.glob(f"{SERVER_GROUP}-*") if root.is_dir() else ():
            pid = d.name.split("-")[3]
            if pid.isdigit() and not _alive(int(pid)):
                dead.append(d)
    return dead


def stale_cgroups() -> list[str]:
    """Remove the :func:`dead_cgroups` that are empty (their processes ended); the ones removed."""
    removed = []
    for d in dead_cgroups():
        with contextlib.suppress(OSError):
            d.rmdir()
            removed.append(str(d))
    return removed


def run_all(
    ms: list[Machine], argvs: list[list[str]], env: list[dict[str, str]], timeout: float, logs: list[Any]
) -> list[int | None]:
    """Start one command per machine, wait for all (until ``timeout``), end the rest; exit statuses."""
    procs: list[subprocess.Popen[bytes]] = []
    deadline = time.monotonic() + timeout
    try:
        for m, argv, e, log in zip(ms, argvs, env, logs, strict=False):
            procs.append(
                subprocess.Popen(
                    machine_argv(m, argv),
                    env={**os.environ, **e},
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        while time.monotonic() < deadline and any(p.poll() is None for p in procs):
            if any(p.poll() not in (None, 0) for p in procs):
                break  # one machine failed: the others would wait for it forever
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGTERM)
        end = time.monotonic() + 10
        while time.monotonic() < end and any(p.poll() is None for p in procs):
            time.sleep(0.1)
        for p in procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=10)
    return [p.returncode if p.returncode is not None and p.returncode >= 0 else None for p in procs]

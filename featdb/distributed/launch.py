"""Launching DGL distributed training: the environment contract, one machine's processes, ssh.

DGL's ``tools/launch.py`` is not in the wheel; its contract is environment variables. Servers get
``DGL_ROLE=server``, ``DGL_SERVER_ID``, ``DGL_IP_CONFIG``, ``DGL_NUM_SERVER``, ``DGL_NUM_CLIENT``,
``DGL_CONF_PATH`` and ``DGL_GRAPH_FORMAT``; trainers get ``DGL_ROLE=client``,
``DGL_DIST_MODE=distributed``, ``DGL_NUM_SAMPLER``, ``DGL_NUM_SERVER``, ``DGL_IP_CONFIG``,
``DGL_CONF_PATH``, ``DGL_GROUP_ID`` and torch.distributed's ``MASTER_ADDR``, ``MASTER_PORT``,
``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``. :func:`machine_processes` builds both for one machine;
:func:`run_machine` runs them (servers first), bounded in time, and ends every process it
started when one fails or time runs out; :func:`ssh_commands` is the same, one ssh command per
machine, for a real cluster. Nothing here imports DGL or torch.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..cgroup import MemoryCap, command_path
from ..errors import ConfigError, InvalidInputError
from ..memory import status_bytes

DEFAULT_PORT = 30050  # DGL's default server port
SERVER_GROUP = "featdb-dist-servers"  # cgroup name prefix of capped servers (netns.stale_cgroups removes leftovers)
MIN_SERVER_CAP = 64 << 20  # less cannot start a DGL server (its runtime alone is ~0.3 GB)
POLL_S = 0.02  # how often a machine's processes are checked (exit, memory)
SERVER_START_S = 0.5  # servers must listen before trainers connect; DGL clients retry, this only orders logs


@dataclass(frozen=True, slots=True)
class Cluster:
    """One distributed job: the machines (from DGL's ip config) and what runs on each."""

    ip_config: str
    part_config: str
    num_servers: int = 1
    trainers: int = 1
    master_port: int = 29500
    graph_format: str = "csc"
    samplers: int = 0

    @property
    def ips(self) -> list[str]:
        return read_ip_config(self.ip_config)

    @property
    def world_size(self) -> int:
        return len(self.ips) * self.trainers


def read_ip_config(path: str | Path) -> list[str]:
    """The machines' addresses, one line each (``IP [PORT]``, DGL's format), in machine-id order."""
    try:
        lines = [ln.split() for ln in Path(path).read_text().splitlines() if ln.strip()]
    except OSError as exc:
        raise InvalidInputError(f"ip config {path}: {exc.strerror or exc}") from exc
    if not lines or any(len(ln) not in (1, 2) or (len(ln) == 2 and not ln[1].isdigit()) for ln in lines):
        raise InvalidInputError(f"ip config {path}: expected one 'IP [PORT]' line per machine")
    ips = [ln[0] for ln in lines]
    if len(set(ips)) != len(ips):
        raise InvalidInputError(
            f"ip config {path}: {ips} repeats an address; DGL tells machines apart by address, so "
            "simulate machines with featdb dist simulate (network namespaces), not repeated 127.0.0.1 lines"
        )
    return ips


@dataclass
class Proc:
    """One process to start: its role, index, environment additions and command line."""

    role: str
    index: int
    env: dict[str, str]
    argv: list[str]
    popen: Any = field(default=None, repr=False)


def machine_processes(c: Cluster, machine: int, server_argv: list[str], trainer_argv: list[str]) -> list[Proc]:
    """Machine ``machine``'s servers (``num_servers``: one main, the rest backups) and trainers."""
    ips = c.ips
    if not 0 <= machine < len(ips):
        raise ConfigError(f"machine {machine}: the ip config lists machines 0..{len(ips) - 1}")
    common = {
        "DGL_IP_CONFIG": str(Path(c.ip_config).resolve()),
        "DGL_NUM_SERVER": str(c.num_servers),
        "DGL_CONF_PATH": str(Path(c.part_config).resolve()),
        "DGL_GRAPH_FORMAT": c.graph_format,
        "DGL_NUM_SAMPLER": str(c.samplers),
        "DGL_DIST_MODE": "distributed",
    }
    procs = [
        Proc(
            "server",
            k,
            {
                **common,
                "DGL_ROLE": "server",
                "DGL_SERVER_ID": str(machine * c.num_servers + k),
                "DGL_NUM_CLIENT": str(c.world_size * (1 + c.samplers)),
            },
            server_argv,
        )
        for k in range(c.num_servers)
    ]
    for t in range(c.trainers):
        env = {
            **common,
            "DGL_ROLE": "client",
            "DGL_GROUP_ID": "0",
            "MASTER_ADDR": ips[0],
            "MASTER_PORT": str(c.master_port),
            "WORLD_SIZE": str(c.world_size),
            "RANK": str(machine * c.trainers + t),
            "LOCAL_RANK": str(t),
        }
        procs.append(Proc("trainer", t, env, trainer_argv))
    return procs


def run_machine(
    procs: list[Proc], timeout: float, log_dir: Path | None = None, server_cap: int | None = None
) -> dict[str, Any]:
    """Start ``procs`` (servers first), wait for the trainers, then for the servers (which stop
    when their clients do). Every process is in its own session; any failure or the deadline ends
    all of them. With ``server_cap``, the servers run in a cgroup of their own limited to that many
    bytes (heap, shared memory and page cache together). Returns each process's exit status
    (``None``: it was ended), the wall time and each process's peak memory (:class:`Peaks`)."""
    deadline = time.monotonic() + timeout
    t0 = time.monotonic()
    peaks = Peaks()
    if server_cap is not None and server_cap < MIN_SERVER_CAP:
        raise ConfigError(f"a server memory cap of {server_cap} bytes is below {MIN_SERVER_CAP >> 20} MiB")
    cap = MemoryCap(server_cap, SERVER_GROUP)
    if server_cap is not None and not cap.capped:
        raise ConfigError(f"cannot cap the servers' memory: {cap.why_uncapped}")
    try:
        for p in procs:
            p.popen = _start(p, log_dir, cap.join if p.role == "server" and cap.capped else None)
            if p.role == "server":
                end = time.monotonic() + SERVER_START_S
                while time.monotonic() < end:
                    peaks.poll(procs)
                    time.sleep(POLL_S)
        failed = _wait(procs, "trainer", deadline, peaks)
        if not failed:
            failed = _wait(procs, "server", min(deadline, time.monotonic() + 60), peaks)
    finally:
        _end(procs)
        oom = cap.oom_kills()
        cap.close()
    status = {f"{p.role}{p.index}": p.popen.returncode if p.popen is not None else None for p in procs}
    ok = all(v == 0 for v in status.values()) and not failed
    if oom:
        ok = False
        failed = f"the OOM killer ended {oom} server process(es) under the {server_cap}-byte server memory cap"
    return {
        "ok": ok,
        "status": status,
        "wall_s": round(time.monotonic() - t0, 3),
        "failed": failed,
        "memory": peaks.as_dict(),
        "server_cap": {"bytes": server_cap, "oom_kills": oom} if server_cap is not None else None,
    }


class Peaks:
    """Each process's peak resident memory, sampled from ``/proc/<pid>/status`` while it runs:
    all of it (``VmRSS``: includes mapped file pages, which are clean page cache) and what the
    kernel cannot reclaim (``RssAnon + RssShmem``: heap, and shared memory such as DGL's
    ``/dev/shm`` segments). Sampling every :data:`POLL_S` can miss a spike shorter than that."""

    def __init__(self) -> None:
        self.rss: dict[str, int] = {}
        self.unreclaimable: dict[str, int] = {}

    def poll(self, procs: list[Proc]) -> None:
        for p in procs:
            if p.popen is None or p.popen.poll() is not None:
                continue
            parts = status_bytes(p.popen.pid, ("VmRSS", "RssAnon", "RssShmem"))
            if parts:
                name = f"{p.role}{p.index}"
                self.rss[name] = max(self.rss.get(name, 0), parts.get("VmRSS", 0))
                fixed = parts.get("RssAnon", 0) + parts.get("RssShmem", 0)
                self.unreclaimable[name] = max(self.unreclaimable.get(name, 0), fixed)

    def as_dict(self) -> dict[str, dict[str, int]]:
        return {
            name: {"peak_rss_bytes": self.rss[name], "peak_unreclaimable_bytes": self.unreclaimable[name]}
            for name in sorted(self.rss)
        }


def _start(p: Proc, log_dir: Path | None, enter: Callable[[], None] | None = None) -> subprocess.Popen[bytes]:
    out: Any = None
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        out = open(log_dir / f"{p.role}{p.index}.log", "wb")  # noqa: SIM115 - closed when Popen has it
    try:
        return subprocess.Popen(
            p.argv,
            env={**os.environ, **p.env},
            stdout=out,
            stderr=subprocess.STDOUT if out else None,
            start_new_session=True,
            preexec_fn=enter,
        )
    finally:
        if out is not None:
            out.close()


def _wait(procs: list[Proc], role: str, deadline: float, peaks: Peaks) -> str | None:
    """Wait until every ``role`` process exits, sampling memory; the reason to stop everything, or None."""
    while True:
        peaks.poll(procs)
        mine = [p for p in procs if p.role == role]
        bad = [p for p in procs if p.popen.poll() not in (None, 0)]
        if bad:
            return f"{bad[0].role}{bad[0].index} exited with status {bad[0].popen.returncode}"
        if all(p.popen.poll() is not None for p in mine):
            return None
        if time.monotonic() > deadline:
            return f"{role}s still running at the deadline"
        time.sleep(POLL_S)


def _end(procs: list[Proc]) -> None:
    """SIGTERM every process group still running, SIGKILL what is left after 5 s, reap all."""
    alive = [p for p in procs if p.popen is not None and p.popen.poll() is None]
    for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        for p in alive:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.popen.pid, sig)
        end = time.monotonic() + grace
        while alive and time.monotonic() < end:
            alive = [p for p in alive if p.popen.poll() is None]
            time.sleep(0.05)
    for p in procs:
        if p.popen is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.popen.wait(timeout=5)


def ssh_commands(c: Cluster, workdir: str, machine_args: list[str], ssh: str = "ssh") -> list[str]:
    """One shell command per machine that runs ``featdb dist machine`` there over ssh (the same
    environment contract as DGL's launch script: each machine starts its own servers and trainers)."""
    out = []
    for i, ip in enumerate(c.ips):
        remote = " ".join(
            shlex.quote(a) for a in [command_path("featdb"), "dist", "machine", "--machine-id", str(i), *machine_args]
        )
        out.append(f"{ssh} {shlex.quote(ip)} {shlex.quote(f'cd {shlex.quote(workdir)} && {remote}')}")
    return out

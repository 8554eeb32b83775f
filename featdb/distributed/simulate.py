"""A distributed job on simulated machines: namespaces (:mod:`.netns`) running ``featdb dist machine``.

:func:`simulate` makes the machines, writes DGL's ip config with their addresses, runs one
``featdb dist machine`` per namespace (each starts its servers and trainers, :mod:`.launch`),
collects the servers' and trainers' JSON reports, and removes the namespaces — also when a
process fails or the deadline passes. What it returns says whether anything was left behind.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ..cgroup import MemoryCap, command_path
from ..errors import ConfigError
from . import netns
from .manifest import find_manifest


def machine_args(
    ip_config: Path,
    partitions: str,
    servers: int,
    trainers: int,
    stock: bool,
    timeout: float,
    logs: Path,
    port: int,
    server_cap: int | None = None,
) -> list[str]:
    """``featdb dist machine``'s options (without --machine-id), up to the ``--`` before trainer args."""
    return [
        *(["--server-memory-cap", str(server_cap)] if server_cap is not None else []),
        str(ip_config),
        partitions,
        "--servers",
        str(servers),
        "--trainers",
        str(trainers),
        *(["--stock"] if stock else []),
        "--timeout",
        str(int(timeout)),
        "--logs",
        str(logs),
        "--port",
        str(port),
    ]


def simulate(
    partitions: str | Path,
    train_args: list[str],
    out: str | Path,
    machines: int = 2,
    servers: int = 1,
    trainers: int = 1,
    stock: bool = False,
    timeout: float = 600,
    server_cap: int | None = None,
) -> dict[str, Any]:
    """Run ``featdb-train PARTITIONS --dist ... TRAIN_ARGS`` on ``machines`` simulated machines
    (each machine's servers within ``server_cap`` bytes of memory, if given)."""
    why = netns.available()
    if why:
        raise ConfigError(why)
    parts = str(find_manifest(partitions).parent.resolve())
    if server_cap is not None:  # fail here, in one line, rather than in every machine
        with MemoryCap(server_cap, "featdb-dist-probe") as probe:
            if not probe.capped:
                raise ConfigError(f"cannot cap the servers' memory: {probe.why_uncapped}")
    root = Path(out).resolve()
    root.mkdir(parents=True, exist_ok=True)
    stale = netns.cleanup_stale() + netns.stale_cgroups()
    t0 = time.monotonic()
    with netns.machines(machines) as ms:
        ip_config = root / "ip_config.txt"
        ip_config.write_text("".join(f"{m.ip}\n" for m in ms))
        argvs, logs = [], []
        for m in ms:
            d = root / f"machine{m.index}"
            d.mkdir(exist_ok=True)
            for old in d.glob("*.json"):
                old.unlink()
            args = machine_args(ip_config, parts, servers, trainers, stock, timeout - 15, d, 29500, server_cap)
            argvs.append(
                [command_path("featdb"), "dist", "machine", "--machine-id", str(m.index), *args, "--", *train_args]
            )
            logs.append(open(d / "machine.log", "wb"))  # noqa: SIM115 - closed below
        env = [{"GLOO_SOCKET_IFNAME": m.ifname, "TP_SOCKET_IFNAME": m.ifname} for m in ms]
        try:
            status = netns.run_all(ms, argvs, env, timeout, logs)
        finally:
            for f in logs:
                f.close()
        names = [m.netns for m in ms]
    left = [ns for ns in netns.leftovers() if ns in names or ns.endswith(names[0].rsplit("-", 1)[0] + "-hub")]
    stale += netns.stale_cgroups()  # a launcher killed before it removed its servers' group
    left += [str(d) for d in netns.dead_cgroups()]
    reports = [_reports(root / f"machine{i}") for i in range(machines)]
    ok = all(s == 0 for s in status) and all(r["trainers"] and r["servers"] for r in reports)
    return {
        "ok": ok,
        "machines": machines,
        "status": status,
        "wall_s": round(time.monotonic() - t0, 3),
        "ip_config": str(ip_config),
        "logs": str(root),
        "reports": reports,
        "left_behind": left,
        "stale_removed": stale,
    }


def _reports(d: Path) -> dict[str, Any]:
    def load(pattern: str) -> list[Any]:
        return [json.loads(p.read_text()) for p in sorted(d.glob(pattern))]

    machine = load("machine.json")
    return {
        "servers": load("server*.json"),
        "trainers": load("trainer*.json"),
        "memory": machine[0].get("memory", {}) if machine else {},
        "failed": machine[0].get("failed") if machine else _last_line(d / "machine.log"),
    }


def _last_line(log: Path) -> str | None:
    """The last line a machine's launcher printed (its error, when it wrote no report)."""
    try:
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return None
    return lines[-1][-300:] if lines else None

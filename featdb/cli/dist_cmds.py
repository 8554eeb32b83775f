"""Distributed training on DGL's engine: partition, and the dist group (server, machine, simulate, launch)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

import click

from ..cgroup import command_path
from ..errors import ConfigError
from ..io import write_atomic
from ..units import format_size
from .common import SIZE, cli, emit, memory_option, output_options, progress

server_cap_option = click.option(
    "--server-memory-cap",
    type=SIZE,
    help="Run each machine's servers in a cgroup limited to SIZE (heap, shared memory and page cache; root).",
)


@cli.command()
@click.argument("store")
@click.argument("out")
@click.option("--parts", type=click.IntRange(min=1), required=True, help="Number of partitions (machines).")
@click.option("--method", type=click.Choice(["metis", "random"]), default="metis", show_default=True)
@click.option(
    "--table", "tables", multiple=True, help="Node table to partition (repeatable; default: every node/ table)."
)
@click.option(
    "--stock-copy",
    is_flag=True,
    help="Also write the features into DGL's own files (node_feat_stock.dgl, graph-stock.json) to compare "
    "with stock DGL servers on the same partitions.",
)
@memory_option
@output_options
def partition(
    store: str,
    out: str,
    parts: int,
    method: str,
    tables: tuple[str, ...],
    stock_copy: bool,
    memory_budget: int,
    as_json: bool,
    quiet: bool,
) -> None:
    """Partition STORE's graph with DGL into OUT: DGL's partition files plus one featdb store per
    partition holding that partition's rows of every node table in DGL's local order, and
    featdb-manifest.json mapping DGL KVStore keys to the stores.

    Labels and split masks go into DGL's node_feat.dgl; feature tables do not (featdb serves them).
    DGL's partitioner holds the whole graph in memory (charged to --memory-budget).

    Example: featdb partition ./store ./parts --parts 2 --method metis
    """
    from ..distributed.partition import partition as run

    with progress(_rows_to_copy(store, tables), "partition rows", as_json or quiet) as bar:
        s = run(store, out, parts, method, tables, memory_budget, stock_copy, bar, None if quiet or as_json else _log)
    text = (
        f"{parts} partitions ({method}) of {s['num_nodes']} nodes in {out}: {s['part_nodes']} nodes each; "
        f"tables {', '.join(s['tables'])} as KVStore keys {', '.join(s['kv_keys'])}; peak RSS "
        f"{format_size(s['memory']['peak_rss_bytes'])}\nmanifest: {s['manifest']}"
    )
    emit(as_json, s, text)


def _rows_to_copy(store: str, tables: tuple[str, ...]) -> int:
    """Rows partition will copy, for the progress bar (0 when the store cannot be read: the
    command itself then reports why)."""
    from .. import store as store_mod
    from ..errors import FeatDBError

    try:
        with store_mod.open(store) as st:
            docs = st.tables()
    except FeatDBError:
        return 0
    return sum(int(d["rows"]) for d in docs if (d["key"] in tables if tables else d["key"].startswith("node/")))


def _log(line: str) -> None:
    click.echo(line, err=True)


@cli.group()
def dist() -> None:
    """Distributed training on DGL's engine with featdb-backed KVStore servers (docs/distributed.md)."""


def _stop_on_sigterm() -> None:
    """SIGTERM ends the command through its cleanup (finally blocks), like Ctrl-C."""

    def handler(signum: int, frame: FrameType | None) -> None:
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


@dist.command("server")
@click.argument("partitions")
@click.option("--stock", is_flag=True, help="Stock DGL server: features from DGL_CONF_PATH's node_feat files.")
@click.option("--report", type=click.Path(dir_okay=False), help="Write what the server measured here (JSON).")
@output_options
def dist_server(partitions: str, stock: bool, report: str | None, as_json: bool, quiet: bool) -> None:
    """Run one DGL server (main or backup, per DGL_SERVER_ID) serving PARTITIONS' features from
    its featdb stores; configured by DGL's launch environment (DGL_SERVER_ID, DGL_IP_CONFIG,
    DGL_NUM_SERVER, DGL_NUM_CLIENT, DGL_CONF_PATH). It exits when its clients finish.

    Example: featdb dist server ./parts --report server0.json   (with DGL's server environment set)
    """
    from ..distributed.dglhooks import serve
    from ..distributed.manifest import load_manifest

    _stop_on_sigterm()
    manifest = load_manifest(partitions)
    t0 = time.monotonic()
    rep = serve(None if stock else manifest)
    rep |= {"mode": "stock" if stock else "featdb", "wall_s": round(time.monotonic() - t0, 3)}
    if report:
        Path(report).write_text(json.dumps(rep, indent=2))
    if not quiet or as_json:
        emit(
            as_json,
            rep,
            f"server {rep['server_id']} (partition {rep['part']}) done; peak RSS {format_size(rep['peak_rss_bytes'])}",
        )


@dist.command("machine", context_settings={"ignore_unknown_options": True})
@click.argument("ip_config")
@click.argument("partitions")
@click.argument("train_args", nargs=-1, type=click.UNPROCESSED)
@click.option("--machine-id", type=click.IntRange(min=0), required=True, help="This machine's line in IP_CONFIG.")
@click.option("--servers", type=click.IntRange(min=1), default=1, show_default=True, help="Servers (1 main + backups).")
@click.option("--trainers", type=click.IntRange(min=1), default=1, show_default=True, help="Trainer processes.")
@click.option("--stock", is_flag=True, help="Stock DGL servers on the manifest's stock partition config.")
@click.option("--timeout", type=click.IntRange(min=1), default=3600, show_default=True, help="Seconds before all stop.")
@click.option("--logs", type=click.Path(file_okay=False), default="dist-logs", show_default=True)
@click.option("--port", type=int, default=29500, show_default=True, help="torch.distributed master port.")
@server_cap_option
@output_options
def dist_machine(
    ip_config: str,
    partitions: str,
    train_args: tuple[str, ...],
    machine_id: int,
    servers: int,
    trainers: int,
    stock: bool,
    timeout: int,
    logs: str,
    port: int,
    server_memory_cap: int | None,
    as_json: bool,
    quiet: bool,
) -> None:
    """Start this machine's servers and trainers under DGL's environment contract, wait for them,
    and stop every one of them on failure or after --timeout. TRAIN_ARGS (after --) go to each
    featdb-train (e.g. --sampling online --epochs 3).

    Example: featdb dist machine ip_config.txt ./parts --machine-id 0 -- --sampling online
    """
    from ..distributed.launch import Cluster, machine_processes, run_machine
    from ..distributed.manifest import load_manifest

    _stop_on_sigterm()
    m = load_manifest(partitions)
    conf = m.stock_part_config if stock else m.part_config
    if conf is None:
        raise ConfigError(f"{partitions} has no stock copy: partition again with --stock-copy")
    c = Cluster(ip_config, str(m.root / conf), servers, trainers, port)
    d = Path(logs)
    server = [command_path("featdb"), "dist", "server", str(m.root), *(["--stock"] if stock else [])]
    procs = machine_processes(c, machine_id, server, [])
    for p in procs:
        report = str((d / f"{p.role}{p.index}.json").resolve())
        if p.role == "server":
            p.argv = [*server, "--report", report]
        else:
            p.argv = [command_path("featdb-train"), str(m.root), "--dist", ip_config, "--part-config",
                      c.part_config, "--report", report, *train_args]  # fmt: skip
    result = run_machine(procs, timeout, d, server_memory_cap)
    d.mkdir(parents=True, exist_ok=True)
    write_atomic(d / "machine.json", json.dumps(result, indent=2).encode())
    if not quiet or as_json:
        emit(as_json, result, f"machine {machine_id}: {result['status']} in {result['wall_s']} s; logs in {d}")
    if not result["ok"]:
        raise click.ClickException(f"machine {machine_id}: {result['failed'] or result['status']}; logs in {d}")


@dist.command("simulate", context_settings={"ignore_unknown_options": True})
@click.argument("partitions")
@click.argument("train_args", nargs=-1, type=click.UNPROCESSED)
@click.option("--machines", type=click.IntRange(1, 200), default=2, show_default=True)
@click.option("--servers", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--trainers", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--stock", is_flag=True, help="Stock DGL servers (needs a partition made with --stock-copy).")
@click.option("--timeout", type=click.IntRange(min=30), default=900, show_default=True)
@click.option("--out", type=click.Path(file_okay=False), default="dist-sim", show_default=True)
@click.option("--cleanup", is_flag=True, help="Only remove what killed simulations left behind, then exit.")
@server_cap_option
@output_options
def dist_simulate(
    partitions: str,
    train_args: tuple[str, ...],
    machines: int,
    servers: int,
    trainers: int,
    stock: bool,
    timeout: int,
    out: str,
    cleanup: bool,
    server_memory_cap: int | None,
    as_json: bool,
    quiet: bool,
) -> None:
    """Simulate MACHINES machines on this one (root: network namespaces joined by a bridge, each
    with a private /dev/shm) and train on them: featdb dist machine in each, TRAIN_ARGS (after --)
    to every featdb-train. Bounded by --timeout; removes its namespaces, mounts and processes
    afterwards, also on failure.

    Example: featdb dist simulate ./parts --machines 2 -- --sampling online --epochs 2   (as root)
    """
    from ..distributed import netns
    from ..distributed.simulate import simulate

    _stop_on_sigterm()
    if cleanup:
        removed = netns.cleanup_stale() + netns.stale_cgroups()
        emit(as_json, {"removed": removed}, "removed stale namespaces and cgroups")
        return
    s = simulate(partitions, list(train_args), out, machines, servers, trainers, stock, timeout, server_memory_cap)
    steps = [t.get("ms_per_step") for r in s["reports"] for t in r["trainers"]]
    fixed = [
        format_size(m["peak_unreclaimable_bytes"])
        for r in s["reports"]
        for name, m in r["memory"].items()
        if name.startswith("server")
    ]
    emit(
        as_json,
        s,
        f"{'ok' if s['ok'] else 'FAILED'}: {machines} machines, {s['wall_s']} s; ms/step {steps}; "
        f"servers' peak unreclaimable memory {', '.join(fixed) or '-'}; logs {out}",
    )
    if not s["ok"]:
        why = "; ".join(f"machine {i}: {r['failed']}" for i, r in enumerate(s["reports"]) if r.get("failed"))
        raise click.ClickException(
            f"simulation failed (exit statuses {s['status']}{'; ' + why if why else ''}); logs in {out}"
        )


@dist.command("launch", context_settings={"ignore_unknown_options": True})
@click.argument("ip_config")
@click.argument("partitions")
@click.argument("train_args", nargs=-1, type=click.UNPROCESSED)
@click.option("--workdir", required=True, help="Folder on every machine to run in (paths must match there).")
@click.option("--servers", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--trainers", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--timeout", type=click.IntRange(min=1), default=3600, show_default=True)
@click.option("--ssh", default="ssh", show_default=True, help="ssh command (e.g. 'ssh -i key').")
@click.option("--dry-run", is_flag=True, help="Print the commands only.")
@server_cap_option
@output_options
def dist_launch(
    ip_config: str,
    partitions: str,
    train_args: tuple[str, ...],
    workdir: str,
    servers: int,
    trainers: int,
    timeout: int,
    ssh: str,
    dry_run: bool,
    server_memory_cap: int | None,
    as_json: bool,
    quiet: bool,
) -> None:
    """Run a job on a real cluster: one ssh command per machine in IP_CONFIG, each running
    featdb dist machine there (DGL's launch contract). PARTITIONS must be at the same path on
    every machine (shared or copied), and featdb installed at the same path.

    Example: featdb dist launch ip_config.txt /data/parts --workdir /data -- --sampling offline
    """
    from ..distributed.launch import Cluster, ssh_commands
    from ..distributed.manifest import load_manifest
    from ..distributed.simulate import machine_args

    m = load_manifest(partitions)
    c = Cluster(ip_config, str(m.root / m.part_config), servers, trainers)
    args = machine_args(
        Path(ip_config).resolve(), str(m.root), servers, trainers, False, timeout, Path("dist-logs"), 29500,
        server_memory_cap,
    )  # fmt: skip
    cmds = ssh_commands(c, workdir, [*args, "--", *train_args])
    if dry_run:
        emit(as_json, {"commands": cmds}, "\n".join(cmds))
        return
    _stop_on_sigterm()
    procs = [subprocess.Popen(cmd, shell=True, start_new_session=True) for cmd in cmds]
    try:
        codes = [p.wait(timeout=timeout + 60) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    emit(as_json, {"exit_statuses": codes}, None if quiet else f"exit statuses {codes}")
    if any(codes):
        sys.exit(1)

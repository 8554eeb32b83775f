"""featdb on DGL distributed, the parts that need no cluster: partition, manifest, hooks, launcher.

The 2-machine simulation itself is tests/test_distributed_sim.py (``make test-dist``).
"""

from __future__ import annotations

import inspect
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import featdb
from featdb.cli import cli
from featdb.distributed import PINNED_DGL, check_dgl, install_hook, kv_name, load_manifest, map_rows, netns, partition
from featdb.distributed.dglhooks import check_tables
from featdb.distributed.launch import Cluster, Proc, machine_processes, read_ip_config, run_machine, ssh_commands
from featdb.distributed.manifest import MANIFEST_NAME
from featdb.errors import AlreadyExistsError, ConfigError, FeatDBError, InvalidInputError, NotFoundError

pytestmark = pytest.mark.gnn
FEAT = "node/_/feat"


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dist") / "store"
    with featdb.create(root) as st:
        featdb.synth(st, 3000, avg_degree=8, dim=16, classes=4, seed=3)
        st.write_table("node/_/year", np.arange(3000, dtype=np.int32).reshape(-1, 1))
    return root


@pytest.fixture(scope="module")
def parts(source: Path) -> Path:
    out = source.parent / "parts"
    partition(source, out, 2, "metis", stock_copy=True)
    return out


def test_partition_rows_are_the_source_rows_in_dgl_local_order(source: Path, parts: Path) -> None:
    import dgl

    m = load_manifest(parts)
    assert m.num_parts == 2 and m.dgl_version == PINNED_DGL and m.num_nodes == 3000
    assert [k.kv for k in m.keys] == ["node~_N~feat", "node~_N~year"]
    orig = np.asarray(m.load_orig_ids())
    assert sorted(orig.tolist()) == list(range(3000))  # a permutation
    with featdb.open(source) as src:
        labels = np.asarray(featdb.node_labels(src))
        for key in m.keys:
            table = src.read_all(key.table)
            for p in range(2):
                lo, hi = m.node_ranges[p]
                assert np.array_equal(map_rows(m, p, key).numpy(), table[orig[lo:hi]])
        assert check_tables(m, 0)  # checked whole, and small enough to stay in the page cache
        inverse = np.empty_like(orig)
        inverse[orig] = np.arange(len(orig))
        train = np.sort(inverse[np.asarray(featdb.load_graph(src).train)])  # shuffled ids of training nodes
        for p in range(2):
            lo, hi = m.node_ranges[p]
            nf = dgl.data.utils.load_tensors(str(parts / f"part{p}" / "node_feat.dgl"))
            assert sorted(nf) == ["_N/label", "_N/test_mask", "_N/train_mask", "_N/val_mask"]  # no features
            assert np.array_equal(nf["_N/label"].numpy(), labels[orig[lo:hi]])
            assert np.array_equal(np.flatnonzero(nf["_N/train_mask"].numpy()) + lo, train[(train >= lo) & (train < hi)])


def test_stock_copy_holds_the_same_rows_in_dgl_files(parts: Path) -> None:
    import dgl

    m = load_manifest(parts)
    assert m.stock_part_config == "graph-stock.json"
    cfg = json.loads((parts / m.stock_part_config).read_text())
    for p in range(2):
        nf = dgl.data.utils.load_tensors(str(parts / cfg[f"part-{p}"]["node_feats"]))
        assert np.array_equal(nf["_N/feat"].numpy(), map_rows(m, p, m.keys[0]).numpy())


def test_partition_checks_verify_and_random_method(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "rnd"
    s = partition(source, out, 3, "random", tables=(FEAT,))
    assert s["parts"] == 3 and sum(s["part_nodes"]) == 3000 and s["tables"] == [FEAT]
    m = load_manifest(out)
    for p in range(3):
        with featdb.open(m.store_path(p)) as st:
            assert st.verify() == []
    with pytest.raises(AlreadyExistsError):
        partition(source, out, 2)
    with pytest.raises(InvalidInputError, match="no table"):
        partition(source, tmp_path / "x", 2, tables=("node/_/nope",))
    with pytest.raises(ConfigError, match="method"):
        partition(source, tmp_path / "y", 2, method="spectral")
    with pytest.raises(featdb.errors.BudgetExceededError):
        partition(source, tmp_path / "z", 2, memory_budget=100 << 20)
    assert not (tmp_path / "x").exists() and not (tmp_path / "z").exists()
    assert not list(tmp_path.glob("*.partial"))


def test_manifest_refuses_damage(parts: Path, tmp_path: Path) -> None:
    doc = json.loads((parts / MANIFEST_NAME).read_text())
    bad = tmp_path / "bad"
    bad.mkdir()
    for change in ({"node_ranges": [[0, 10], [11, 3000]]}, {"stores": ["../../etc", "p1"]}, {"format": 9}, {"keys": 3}):
        (bad / MANIFEST_NAME).write_text(json.dumps({**doc, **change}))
        with pytest.raises(InvalidInputError):
            load_manifest(bad)
    with pytest.raises(NotFoundError):
        load_manifest(tmp_path / "nothing")


def test_the_dgl_internals_the_hooks_use_are_there() -> None:
    """The hooks are pinned to DGL 2.1.0's internals: fail here, not in a cluster, when they move."""
    import dgl
    from dgl.distributed import kvstore, rpc
    from dgl.distributed.dist_graph import DistGraphServer
    from dgl.distributed.graph_partition_book import HeteroDataName

    assert check_dgl() == dgl.__version__ == PINNED_DGL
    assert str(HeteroDataName(True, "_N", "feat")) == kv_name("_N", "feat")
    assert HeteroDataName(True, "_N", "feat").policy_str == "node~_N"
    assert list(inspect.signature(kvstore.KVServer.init_data).parameters) == [
        "self",
        "name",
        "policy_str",
        "data_tensor",
    ]
    for fn in (
        kvstore.KVClient.map_shared_data,
        kvstore.KVClient.init_data,
        kvstore.SendMetaToBackupRequest.process_request,
    ):
        assert "empty_shared_mem(" in inspect.getsource(fn)  # looked up as kvstore's global, so the hook sees it
    assert isinstance(kvstore.KVServer.data_store, property) and isinstance(kvstore.KVServer.orig_data, property)
    assert {"server_id", "ip_config", "num_servers", "num_clients", "part_config", "graph_format"} <= set(
        inspect.signature(DistGraphServer.__init__).parameters
    )
    assert callable(rpc.get_machine_id) and callable(rpc.read_ip_config)


def test_check_dgl_refuses_other_versions() -> None:
    with pytest.raises(ConfigError, match=r"2\.1\.0"):
        check_dgl("2.2.1")


def test_the_hook_maps_manifest_keys_and_passes_others_through(parts: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dgl.distributed import kvstore

    calls: list[str] = []
    monkeypatch.setattr(kvstore, "empty_shared_mem", lambda name, *a: calls.append(name))
    m = load_manifest(parts)
    remove = install_hook(m, lambda: 1)
    try:
        rows = m.part_rows(1)
        got = kvstore.empty_shared_mem("node~_N~feat-kvdata-", False, (rows, 16), "float32")
        import torch.utils.dlpack

        t = torch.utils.dlpack.from_dlpack(got.to_dlpack())
        assert np.array_equal(t.numpy(), map_rows(m, 1, m.keys[0]).numpy())
        kvstore.empty_shared_mem("node~_N~other-kvdata-", False, (5,), "int64")
        assert calls == ["node~_N~other-kvdata-"]
        with pytest.raises(ConfigError, match="expects"):
            kvstore.empty_shared_mem("node~_N~feat-kvdata-", False, (rows + 1, 16), "float32")
        with pytest.raises(ConfigError, match="create"):
            kvstore.empty_shared_mem("node~_N~feat-kvdata-", True, (rows, 16), "float32")
        with pytest.raises(ConfigError, match="already installed"):
            install_hook(m, 0)
    finally:
        remove()
    assert kvstore.empty_shared_mem("x", False, (1,), "int64") is None and calls[-1] == "x"


def test_ip_config_and_the_environment_contract(tmp_path: Path) -> None:
    ipc = tmp_path / "ip.txt"
    ipc.write_text("127.0.0.1\n127.0.0.1\n")
    with pytest.raises(InvalidInputError, match="namespaces"):
        read_ip_config(ipc)
    ipc.write_text("10.0.0.1 30050\n10.0.0.2\n")
    c = Cluster(str(ipc), "/p/graph.json", num_servers=2, trainers=2)
    procs = machine_processes(c, 1, ["srv"], ["trn"])
    servers = [p for p in procs if p.role == "server"]
    trainers = [p for p in procs if p.role == "trainer"]
    assert [p.env["DGL_SERVER_ID"] for p in servers] == ["2", "3"]
    assert all(p.env["DGL_NUM_CLIENT"] == "4" and p.env["DGL_ROLE"] == "server" for p in servers)
    assert [p.env["RANK"] for p in trainers] == ["2", "3"] and trainers[0].env["MASTER_ADDR"] == "10.0.0.1"
    assert all(p.env["DGL_ROLE"] == "client" and p.env["WORLD_SIZE"] == "4" for p in trainers)
    with pytest.raises(ConfigError):
        machine_processes(c, 2, [], [])
    cmds = ssh_commands(c, "/work dir", ["ip.txt", "/p", "--", "--sampling", "online"])
    assert len(cmds) == 2 and cmds[1].startswith("ssh 10.0.0.2 ") and "--machine-id 1" in cmds[1]


def test_run_machine_ends_everything_on_failure_and_deadline(tmp_path: Path) -> None:
    sleep = [sys.executable, "-c", "import time; time.sleep(60)"]
    fail = [sys.executable, "-c", "import sys; sys.exit(3)"]
    t0 = time.monotonic()
    r = run_machine([Proc("server", 0, {}, sleep), Proc("trainer", 0, {}, fail)], timeout=30, log_dir=tmp_path)
    assert not r["ok"] and "trainer0 exited with status 3" in r["failed"] and time.monotonic() - t0 < 20
    assert r["status"]["server0"] is not None and r["status"]["server0"] < 0  # ended by a signal
    t0 = time.monotonic()
    r = run_machine([Proc("trainer", 0, {}, sleep)], timeout=2)
    assert not r["ok"] and "deadline" in r["failed"] and time.monotonic() - t0 < 15


def test_run_machine_reports_each_process_peak_memory_by_kind(tmp_path: Path) -> None:
    # a "server" that holds 200 MiB of heap and 100 MiB of shared memory for a moment, then a trainer
    server = [sys.executable, "-c", (
        "import mmap, time\n"
        "heap = bytearray(200 << 20)\n"
        "shm = mmap.mmap(-1, 100 << 20, flags=mmap.MAP_SHARED)\n"
        "for _ in range(100): shm.write(b'x' * (1 << 20))\n"
        "time.sleep(0.5)"
    )]  # fmt: skip
    trainer = [sys.executable, "-c", "import time; time.sleep(1.5)"]
    r = run_machine([Proc("server", 0, {}, server), Proc("trainer", 0, {}, trainer)], timeout=30, log_dir=tmp_path)
    assert r["ok"], r
    mem = r["memory"]
    assert 300 << 20 <= mem["server0"]["peak_unreclaimable_bytes"] <= mem["server0"]["peak_rss_bytes"] < 450 << 20
    assert mem["trainer0"]["peak_unreclaimable_bytes"] < 100 << 20


def test_run_machine_caps_the_servers_memory_only(tmp_path: Path) -> None:
    from featdb.cgroup import MemoryCap

    with MemoryCap(64 << 20, "featdb-probe") as probe:
        if not probe.capped:
            pytest.skip(f"no memory cgroup here: {probe.why_uncapped}")
    grab = [sys.executable, "-c", "x = bytearray(300 << 20); x[::4096] = b'x' * len(x[::4096])"]
    # the trainer may use what the servers may not
    with pytest.raises(ConfigError, match="below 64 MiB"):
        run_machine([Proc("server", 0, {}, sleep_s(1))], 30, tmp_path, 0)
    r = run_machine([Proc("server", 0, {}, sleep_s(1)), Proc("trainer", 0, {}, grab)], 30, tmp_path, 200 << 20)
    assert r["ok"] and r["server_cap"] == {"bytes": 200 << 20, "oom_kills": 0}, r
    r = run_machine([Proc("server", 0, {}, grab), Proc("trainer", 0, {}, sleep_s(20))], 30, tmp_path, 200 << 20)
    assert not r["ok"] and r["server_cap"]["oom_kills"] == 1 and "OOM killer" in r["failed"], r
    left = [p for root in (Path("/sys/fs/cgroup/memory"), Path("/sys/fs/cgroup")) for p in root.glob("featdb-dist-*")]
    assert left == []


def sleep_s(seconds: float) -> list[str]:
    return [sys.executable, "-c", f"import time; time.sleep({seconds})"]


def test_cli_partition_json_and_errors(source: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "cli-parts"
    r = runner.invoke(cli, ["partition", str(source), str(out), "--parts", "2", "--method", "random", "--json"])
    assert r.exit_code == 0, r.output
    s = json.loads(r.output)
    assert s["parts"] == 2 and s["memory"]["peak_rss_bytes"] > 0 and Path(s["manifest"]).is_file()
    r = runner.invoke(cli, ["partition", str(source), str(out), "--parts", "2"])
    assert r.exit_code == 1 and "AlreadyExistsError" in r.output
    r = runner.invoke(cli, ["dist", "launch", "ip.txt", str(out), "--workdir", "/w", "--dry-run"])
    assert r.exit_code == 1 and "ip config" in r.output  # no such file: one readable line


def test_importing_featdb_distributed_needs_neither_torch_nor_dgl() -> None:
    code = "import sys, featdb.distributed, featdb.cli; print('torch' in sys.modules, 'dgl' in sys.modules)"
    import subprocess

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_errors_are_featdb_errors(tmp_path: Path) -> None:
    for call in (lambda: load_manifest(tmp_path), lambda: read_ip_config(tmp_path / "none")):
        with pytest.raises(FeatDBError):
            call()


@pytest.mark.skipif(bool(netns.available()), reason=str(netns.available()))
def test_simulated_machines_talk_and_are_removed_also_on_failure(tmp_path: Path) -> None:
    """Two namespaces reach each other over their own subnet, each sees only its /dev/shm, and
    everything is gone afterwards even when a machine fails and another hangs."""
    shm_before = set(os.listdir("/dev/shm"))
    listen = "import socket;s=socket.socket();s.bind(('0.0.0.0',5555));s.listen();c,a=s.accept();print(c.recv(9))"
    with pytest.raises(RuntimeError, match="inside"), netns.machines(2) as ms:
        names = [m.netns for m in ms]
        assert len({m.ip for m in ms}) == 2 and set(names) <= set(netns.leftovers())
        talk = f"import socket,time;time.sleep(1);socket.create_connection(('{ms[0].ip}',5555),timeout=9).send(b'hi')"
        shm = "import os;open('/dev/shm/featdb-test-x','w');print(sorted(os.listdir('/dev/shm')))"
        logs = [open(tmp_path / f"m{i}.log", "wb") for i in range(2)]  # noqa: SIM115
        status = netns.run_all(ms, [[sys.executable, "-c", listen], [sys.executable, "-c", talk]], [{}, {}], 30, logs)
        assert status == [0, 0] and b"b'hi'" in (tmp_path / "m0.log").read_bytes()
        status = netns.run_all(ms, [[sys.executable, "-c", shm]] * 2, [{}, {}], 30, logs)
        assert status == [0, 0] and "['featdb-test-x']" in (tmp_path / "m1.log").read_text()
        t0 = time.monotonic()
        hang = [sys.executable, "-c", "import time; time.sleep(120)"]
        status = netns.run_all(ms, [hang, [sys.executable, "-c", "raise SystemExit(4)"]], [{}, {}], 60, logs)
        assert status[1] == 4 and status[0] is None and time.monotonic() - t0 < 30  # the hung one was ended
        for f in logs:
            f.close()
        raise RuntimeError("a failure inside the simulation")
    assert not set(names) & set(netns.leftovers())
    assert set(os.listdir("/dev/shm")) == shm_before

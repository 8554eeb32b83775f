"""Two simulated machines (network namespaces), both sampling modes, end to end (``make test-dist``).

Needs root (``ip netns``, ``unshare --mount``); skipped with the reason where that is not
available. Marked ``slow`` and ``dist``: not part of the default ``make test``.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

import featdb
from featdb.cgroup import command_path
from featdb.distributed import netns, partition
from featdb.distributed.simulate import simulate

WHY = netns.available() if os.name == "posix" else "needs Linux"
pytestmark = [pytest.mark.slow, pytest.mark.dist, pytest.mark.gnn, pytest.mark.skipif(bool(WHY), reason=WHY or "")]

NODES, DIM, CLASSES = 30_000, 32, 8
EPOCHS, BATCH, FANOUTS, SEED = 6, 512, "10,10", 0
TIMEOUT = 420  # per simulation: it ends itself (and everything it started) by then


def _run(argv: list[str], timeout: float = 600) -> dict[str, Any]:
    out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    return dict(json.loads(out.stdout))


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("sim")
    store = root / "store"
    with featdb.create(store) as st:
        featdb.synth(st, NODES, avg_degree=10, dim=DIM, classes=CLASSES, seed=SEED, train_frac=0.2, test_frac=0.4)
    partition(store, root / "parts", 2, "metis", stock_copy=True)
    featdb_ = command_path("featdb")
    _run([featdb_, "sample", str(store), "--name", "train", "--fanouts", FANOUTS, "--batch-size", str(BATCH),
          "--epochs", str(EPOCHS), "--seed", str(SEED), "--json", "-q"])  # fmt: skip
    _run([featdb_, "pack", str(store), "--sample-set", "train", "--host-cache", "1MiB", "--json", "-q"])
    single = _run([command_path("featdb-train"), str(store), "--sample-set", "train", "--epochs", str(EPOCHS),
                   "--seed", str(SEED), "--checkpoint", str(root / "ck.pt"), "--json", "-q"])  # fmt: skip
    return {"root": root, "parts": root / "parts", "single": single}


def _shm() -> set[str]:
    return {p.name for p in Path("/dev/shm").iterdir()} if Path("/dev/shm").is_dir() else set()


def _simulate(data: dict[str, Any], mode: str, stock: bool = False) -> dict[str, Any]:
    before = _shm()
    # each trainer takes half the batch: the same global batch as the single-machine run
    args = ["--sampling", mode, "--epochs", str(EPOCHS), "--fanouts", FANOUTS, "--batch-size", str(BATCH // 2),
            "--seed", str(SEED), "--check-rows", "3", "--threads", "1"]  # fmt: skip
    out = data["root"] / f"sim-{mode}{'-stock' if stock else ''}"
    s = simulate(data["parts"], args, out, machines=2, stock=stock, timeout=TIMEOUT)
    assert s["left_behind"] == [], s["left_behind"]  # namespaces (and with them veths, mounts) removed
    assert _shm() - before == set()  # nothing leaked into the host's /dev/shm
    assert s["ok"], f"simulation failed: {s['status']}; logs in {out}"
    return s


def _trainers(s: dict[str, Any]) -> list[dict[str, Any]]:
    ts = [t for r in s["reports"] for t in r["trainers"]]
    assert len(ts) == 2 and sorted(t["rank"] for t in ts) == [0, 1]
    return ts


@pytest.mark.parametrize("mode", ["online", "offline"])
def test_two_machines_train_on_the_right_rows(data: dict[str, Any], mode: str) -> None:
    s = _simulate(data, mode)
    ts = _trainers(s)
    servers = [v for r in s["reports"] for v in r["servers"]]
    assert len(servers) == 2 and all(v["mapped"] == ["node~_N~feat"] for v in servers)
    for t in ts:
        assert t["mode"] == f"dist-{mode}" and t["features"] == "featdb"
        assert t["checked_batches"] == 3 * EPOCHS  # every checked batch's rows equal the source table's
        assert t["loss"][-1] < t["loss"][0]
    assert {t["machine"] for t in ts} == {0, 1}
    single = data["single"]["test_acc"]
    dist = ts[0]["test_acc"]
    assert ts[1]["test_acc"] == dist  # counts are summed over trainers: one figure
    assert abs(dist - single) <= 0.005, f"{mode}: test accuracy {dist} vs single-machine {single}"


def test_stock_servers_run_on_the_same_partitions(data: dict[str, Any]) -> None:
    s = _simulate(data, "online", stock=True)
    for t in _trainers(s):
        assert t["features"] == "stock" and t["checked_batches"] == 3 * EPOCHS
    assert all(v["mapped"] == [] for r in s["reports"] for v in r["servers"])

"""The memory account, the reader under a budget, the cgroup cap and the training benchmark's arithmetic."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import assert_one_error_line, make_layout, make_sample_set, make_synth_store

import featdb
from featdb.bench_train import _ratios, system_result, why_failed
from featdb.cgroup import MemoryCap
from featdb.cli import cli
from featdb.errors import BudgetExceededError, ConfigError
from featdb.memory import MemoryBudget, available_memory, cgroup_headroom, peak_rss
from featdb.serve import open_reader


# --------------------------------------------------------------------------- the account
def test_a_budget_names_every_part_when_they_do_not_fit() -> None:
    m = MemoryBudget(100 << 20, "the job")
    m.charge("graph", 60 << 20)
    assert m.left() == 40 << 20
    m.check()
    m.charge("buffers", 50 << 20)
    with pytest.raises(
        BudgetExceededError,
        match=r"the job needs 110\.0 MiB .* 100\.0 MiB \(graph 60\.0 MiB, "
        r"buffers 50\.0 MiB\)",
    ):
        m.check()
    assert isinstance(BudgetExceededError("x"), ConfigError)


def test_fit_takes_what_is_left_and_mapped_parts_never_refuse() -> None:
    m = MemoryBudget(100, "x")
    m.charge("fixed", 70)
    assert m.fit("cache", 1000) == 30 and m.left() == 0
    assert m.charge_mapped("graph", 500) == 0  # nothing left to stay resident; no refusal
    d = m.as_dict()
    assert d["parts"] == {"fixed": 70, "cache": 30, "graph": 0} and d["mapped_bytes"] == {"graph": 500}
    assert d["budget_bytes"] == 100 and d["charged_bytes"] == 100 and d["peak_rss_bytes"] == peak_rss() > 0
    with pytest.raises(BudgetExceededError):
        MemoryBudget(100).fit("buffers", 10, minimum=200)


@pytest.mark.parametrize("limit", [0, -5])
def test_a_budget_must_be_positive(limit: int) -> None:
    with pytest.raises(ConfigError, match="must be positive"):
        MemoryBudget(limit)


# --------------------------------------------------------------------------- the reader
@pytest.fixture(scope="module")
def layout_store(tmp_path_factory: pytest.TempPathFactory) -> Any:
    st = make_synth_store(tmp_path_factory.mktemp("mem") / "s", nodes=3000, dim=16, seed=1)
    make_sample_set(st, "tr", fanouts=(4, 4), batch_size=128, epochs=1)
    make_layout(st, "tr", host_cache=32 << 10)
    yield st
    st.close()


def test_available_memory_sees_the_cgroup_limit() -> None:
    free = available_memory()
    assert 0 < free <= 1 << 50
    code = "from featdb.memory import available_memory; print(available_memory())"
    with MemoryCap(256 << 20, "featdb-test-avail") as cap:
        if not cap.capped:
            pytest.skip(f"no memory cgroup: {cap.why_uncapped}")
        done = cap.run([sys.executable, "-c", code])
    assert done.returncode == 0, done.stderr_tail
    assert 0 < int(done.stdout) <= 256 << 20 < free


def test_available_memory_sees_a_limit_set_on_a_parent_group() -> None:
    """A process in a group of its own under a capped one (no limit of its own) is bound by the cap."""
    code = (
        "import os, sys; from pathlib import Path; from featdb.memory import available_memory\n"
        "inner = Path(sys.argv[1]) / 'inner'; inner.mkdir()\n"
        "(inner / 'cgroup.procs').write_text(str(os.getpid()))\n"
        "print(available_memory())"
    )
    free = available_memory()
    with MemoryCap(256 << 20, "featdb-test-avail-parent") as cap:
        if not cap.capped:
            pytest.skip(f"no memory cgroup: {cap.why_uncapped}")
        assert cap.path is not None
        done = cap.run([sys.executable, "-c", code, str(cap.path)])
        path = cap.path
    assert not path.exists()  # the inner group went with it
    assert done.returncode == 0, done.stderr_tail
    assert 0 < int(done.stdout) <= 256 << 20 < free


def test_cgroup_headroom_takes_the_least_over_the_group_and_its_parents(tmp_path: Path) -> None:
    def group(path: Path, **files: str) -> None:
        path.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            (path / name.replace("_", ".", 1)).write_text(text + "\n")

    group(tmp_path / "slice", memory_max="max", memory_high="1000", memory_current="400")
    group(tmp_path / "slice" / "job", memory_max="5000", memory_current="100")
    assert cgroup_headroom(["0::/slice/job"], str(tmp_path)) == 600  # the parent's memory.high binds
    group(tmp_path / "slice" / "job", memory_max="300")
    assert cgroup_headroom(["0::/slice/job"], str(tmp_path)) == 200
    v1 = tmp_path / "memory"
    group(v1 / "a", memory_limit_in_bytes="9223372036854771712", memory_usage_in_bytes="10")
    group(v1 / "a" / "b", memory_limit_in_bytes="9223372036854771712", memory_usage_in_bytes="5")
    group(v1, memory_limit_in_bytes="9223372036854771712", memory_usage_in_bytes="50")
    lines = ["12:memory:/a/b", "3:cpu,cpuacct:/a", "0::/nowhere"]
    assert cgroup_headroom(lines, str(tmp_path)) == 9223372036854771712 - 50
    group(v1 / "a", memory_limit_in_bytes="2048")
    assert cgroup_headroom(lines, str(tmp_path)) == 2038
    assert cgroup_headroom(["12:memory:/../a/./b"], str(tmp_path)) == 2038  # no climbing out
    assert cgroup_headroom(["1:cpu:/a", "garbage"], str(tmp_path)) is None


def test_the_reader_charges_its_parts_and_shrinks_the_queue_to_fit(layout_store: Any) -> None:
    with open_reader(layout_store, queue_depth=8) as free:
        parts = free.memory.as_dict()["parts"]
        buf = free.pool.nbytes
        assert free.queue_depth == 8 and parts["host tier (L2)"] == (32 << 10) // 64 * 64
    fixed = sum(v for k, v in parts.items() if not k.startswith(("read buffers", "page-read", "L3")))
    tight = fixed + 4 * buf + 2 * (8 << 20) + 1
    with open_reader(layout_store, queue_depth=8, memory_budget=tight) as r:
        assert r.queue_depth == 2 and r.pool.count == 4
        assert r.memory.charged <= tight
        with r.read_batch(0) as rows:
            assert len(rows.rows) > 0


def test_a_reader_budget_below_its_tiers_is_refused_by_name(layout_store: Any) -> None:
    with pytest.raises(BudgetExceededError, match=r"host tier \(L2\).*read buffers"):
        open_reader(layout_store, memory_budget=40 << 10)


# --------------------------------------------------------------------------- the cgroup cap
def test_an_uncapped_run_reports_status_output_and_peak() -> None:
    with MemoryCap(None) as cap:
        assert not cap.capped and cap.why_uncapped == "no cap asked for"
        f = cap.run([sys.executable, "-c", "import numpy as np; a = np.ones(16 << 20, np.uint8); print(a.sum())"])
    assert f.returncode == 0 and f.stdout.strip() == str(16 << 20) and f.peak_rss_bytes > 16 << 20
    assert not f.oom_killed


def test_a_capped_run_past_its_cap_is_killed_and_the_group_removed() -> None:
    with MemoryCap(160 << 20) as cap:
        if not cap.capped:
            pytest.skip(f"no cgroup here: {cap.why_uncapped}")
        path = cap.path
        ok = cap.run([sys.executable, "-c", "import numpy as np; print(np.ones(32 << 20, np.uint8).sum())"])
        big = cap.run([sys.executable, "-c", "import numpy as np; print(np.ones(400 << 20, np.uint8).sum())"])
    assert ok.returncode == 0 and not ok.oom_killed
    assert big.returncode == -9 and big.oom_killed
    assert path is not None and not path.exists()


# --------------------------------------------------------------------------- the benchmark's arithmetic
def _summary(batches: int, epoch_s: float, rows: int, read: int, eval_s: float | None, max_batches: int = 0) -> dict:
    return {
        "batches": [batches],
        "epoch_s": [epoch_s],
        "input_rows": [rows],
        "epoch_io_read_bytes": [read],
        "io_read_bytes": read + 7,
        "eval_s": [eval_s],
        "test_acc": 0.5,
        "config": {"max_batches": max_batches},
        "memory": {"budget_bytes": 10, "enforced": True},
        "tier_hit_rates": {"l4": 1.0},
    }


def test_system_results_and_ratios_follow_the_summaries() -> None:
    def step(summary: dict | None, code: int = 0) -> dict:
        return {
            "completed": code == 0,
            "oom_killed": code == -9,
            "wall_s": 1.0,
            "peak_rss_bytes": 5,
            "summary": summary,
            "last_io_read_bytes": 99,
            "error": ["killed"] if code else None,
        }

    res = {
        "featdb": system_result(step(_summary(10, 2.0, 1000, 64_000, 1.0)), 64),
        "dgl-mmap": system_result(step(_summary(5, 10.0, 500, 320_000, None, max_batches=5)), 64),
        "in-memory": system_result(step(None, -9), 64),
        "in-memory-uncapped": system_result(step(_summary(10, 4.0, 1000, 0, 2.0)), 64),
    }
    f = res["featdb"]
    assert f["s_per_batch"] == 0.2 and f["epoch_s"] == 2.0 and f["read_amplification"] == 1.0
    assert res["dgl-mmap"]["s_per_batch"] == 2.0 and res["dgl-mmap"]["epoch_s"] is None
    assert res["dgl-mmap"]["read_amplification"] == 10.0
    killed = res["in-memory"]
    assert not killed["completed"] and killed["oom_killed"] and killed["read_bytes"] == 99
    assert _ratios(res) == {
        "mmap_over_featdb": 10.0,
        "featdb_over_inmemory": 0.5,
        "featdb_eval_over_inmemory_eval": 0.5,
    }


# --------------------------------------------------------------------------- the CLI
def test_commands_take_one_memory_option_and_report_the_peak(tmp_path: Path) -> None:
    st = make_synth_store(tmp_path / "s", nodes=1500, dim=8, seed=0)
    root = str(st.root)
    st.close()
    runner = CliRunner()
    small = runner.invoke(cli, ["sample", root, "--name", "a", "--fanouts", "3,3", "--memory-budget", "64MiB"])
    assert_one_error_line(small, "BudgetExceededError", "runtime (torch, DGL)", "--memory-budget")
    ok = runner.invoke(cli, ["sample", root, "--name", "a", "--fanouts", "3,3", "--json", "--memory-budget", "2GiB"])
    assert ok.exit_code == 0, ok.output
    doc = json.loads(ok.output)
    assert doc["memory"]["budget_bytes"] == 2 << 30 and doc["memory"]["peak_rss_bytes"] > 0
    assert set(doc["parts"]) == {"train", "valid", "test"}
    packed = runner.invoke(cli, ["pack", root, "--sample-set", "a", "--json", "--memory-budget", "256MiB"])
    assert packed.exit_code == 0, packed.output
    mem = json.loads(packed.output)["memory"]
    assert mem["budget_bytes"] == 256 << 20 and mem["peak_rss_bytes"] > 0
    with featdb.open(root) as again:
        assert np.asarray(again.read("node/_/feat", [0])).shape == (1, 8)


@pytest.mark.slow
def test_a_failed_bench_step_says_why() -> None:
    step = {"oom_killed": False, "timed_out": False, "returncode": 2, "error": ["Error: no sample set 'x'"]}
    assert why_failed(step) == "exit 2: Error: no sample set 'x'"
    assert why_failed({**step, "error": []}) == "exit 2"
    assert why_failed({**step, "timed_out": True}) == "timed out"
    assert why_failed({**step, "oom_killed": True, "returncode": -9}) == "OOM-killed"


def test_bench_train_small_preset_end_to_end(tmp_path: Path) -> None:
    """The regression preset: every step completes under the cap, featdb within its budget + 10 %."""
    result = CliRunner().invoke(cli, ["bench", "train", "--preset", "small", "--dir", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    for name in ("sample", "pack"):
        assert doc["steps"][name]["completed"] and doc["steps"][name]["peak_over_budget"] <= 1.1
    f = doc["systems"]["featdb"]
    assert f["completed"] and f["peak_rss_bytes"] <= 1.1 * f["memory_budget_bytes"]
    assert doc["systems"]["in-memory-uncapped"]["completed"]
    if doc["capped"]:
        assert not doc["systems"]["in-memory"]["completed"]  # the table does not fit the cap
    assert set(doc["ratios"]) == {"mmap_over_featdb", "featdb_over_inmemory", "featdb_eval_over_inmemory_eval"}

"""The trainer end to end: its pipeline, the featdb loader, train() with every loader and model,
checkpoints and --resume, determinism, ``featdb-train``, ``featdb demo`` and the allocator setting.

One small store (2,000 nodes, 16-dim features, one sample set, one packed layout) is built per
module and shared; every training run writes its checkpoints under its own ``tmp_path``.
"""

from __future__ import annotations

import json
import math
import platform
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("dgl")

from click.testing import CliRunner, Result  # noqa: E402
from conftest import disk_dir  # noqa: E402
from helpers import (  # noqa: E402
    FEAT,
    assert_one_error_line,
    make_layout,
    make_sample_set,
    make_synth_store,
    shared_only,
)

import featdb  # noqa: E402
from featdb.errors import ConfigError  # noqa: E402
from featdb.graph import load_graph  # noqa: E402
from trainer.allocator import retain_large_allocations, trim_threshold  # noqa: E402
from trainer.loaders import FeatDBLoader  # noqa: E402
from trainer.loop import TrainConfig, train  # noqa: E402
from trainer.pipeline import Pipeline  # noqa: E402

pytestmark = pytest.mark.gnn

ROOT = Path(__file__).resolve().parent.parent
SET = "tr"
EPOCHS_SAMPLED = 2
BATCH = 128
STAGES = {"sample", "read", "assemble", "compute"}
SUMMARY_KEYS = {
    "loader",
    "model",
    "seed",
    "epochs",
    "epoch_s",
    "stage_s",
    "val_acc",
    "test_acc",
    "best_val_acc",
    "loss",
    "tier_hit_rates",
    "read_amplification",
    "checkpoint",
    "allocator",
    "config",
}


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def store_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A store with a graph, features, sample set ``tr`` and a layout packed for it (L2, L3, L4)."""
    base = disk_dir(tmp_path_factory, "trainer")
    path = base / "store"
    with make_synth_store(path, nodes=2000, dim=16, classes=4, seed=0, train_frac=0.3) as st:
        make_sample_set(st, SET, fanouts=(4, 4), batch_size=BATCH, epochs=EPOCHS_SAMPLED)
        with shared_only():
            doc = make_layout(st, SET, host_cache=16 << 10, max_blowup=4.0)
        assert doc["l2_rows"] > 0 and doc["l3_rows"] > 0 and doc["l4_rows"] > 0
    yield path
    shutil.rmtree(base, ignore_errors=True)


def config(store: Path, ckpt_dir: Path, **kw: Any) -> TrainConfig:
    """A tiny, fast run: hidden 16, one epoch, checkpoints under ``ckpt_dir``."""
    kw.setdefault("hidden", 16)
    kw.setdefault("epochs", 1)
    kw.setdefault("checkpoint", str(ckpt_dir / "model.pt"))
    return TrainConfig(str(store), SET, **kw)


def assert_summary(s: dict[str, Any], epochs: int) -> None:
    assert set(s) >= SUMMARY_KEYS, SUMMARY_KEYS - set(s)
    assert s["epochs"] == epochs
    assert len(s["epoch_s"]) == len(s["loss"]) == len(s["val_acc"]) == epochs
    assert all(t > 0 for t in s["epoch_s"])
    assert all(math.isfinite(x) and x > 0 for x in s["loss"])
    assert all(0.0 <= a <= 1.0 for a in s["val_acc"])
    assert 0.0 <= s["test_acc"] <= 1.0
    assert s["best_val_acc"] == max(s["val_acc"])
    assert s["stage_s"]["compute"] > 0
    assert all(v >= 0 for v in s["stage_s"].values())
    assert set(s["stage_stall_s"]) == set(s["stage_s"]) and all(v >= 0 for v in s["stage_stall_s"].values())


def pipe_threads(*names: str) -> list[threading.Thread]:
    """Live pipeline threads of stages with these names."""
    wanted = {f"pipe-{n}" for n in names}
    return [t for t in threading.enumerate() if t.name in wanted and t.is_alive()]


def wait_for(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


# --------------------------------------------------------------------------- pipeline
def test_pipeline_keeps_input_order_through_stages() -> None:
    rng = np.random.default_rng(0)
    jitter = iter(rng.uniform(0, 0.002, 10_000).tolist())  # uneven stage times: order must hold

    def slow(fn: Callable[[int], Any]) -> Callable[[int], Any]:
        def run(x: Any) -> Any:
            time.sleep(next(jitter))
            return fn(x)

        return run

    stages = [
        ("order-a", slow(lambda x: x * 3)),
        ("order-b", slow(lambda x: x + 1)),
        ("order-c", lambda x: f"<{x}>"),
    ]
    n = 60
    with Pipeline((i for i in range(n)), stages, depth=2) as pipe:
        got = list(pipe)
    assert got == [f"<{i * 3 + 1}>" for i in range(n)]
    assert {k: v.items for k, v in pipe.times.items()} == {"order-a": n, "order-b": n, "order-c": n}
    assert pipe_threads("order-a", "order-b", "order-c", "feed") == []


def test_pipeline_stage_times_and_overlap() -> None:
    """Each stage counts its items and busy time; stages overlap, so the run costs about the slowest."""
    n, dt = 10, 0.02

    def sleepy(x: int) -> int:
        time.sleep(dt)
        return x

    stages = [("t-a", sleepy), ("t-b", sleepy), ("t-c", sleepy)]
    t0 = time.perf_counter()
    with Pipeline(range(n), stages, depth=2) as pipe:
        assert list(pipe) == list(range(n))
    elapsed = time.perf_counter() - t0
    for name in ("t-a", "t-b", "t-c"):
        st = pipe.times[name]
        assert st.items == n
        assert st.busy >= n * dt * 0.9
        assert set(st.as_dict()) == {"busy_s", "stall_s", "items"} and st.as_dict()["items"] == n
    serial = 3 * n * dt
    assert elapsed < 0.75 * serial, (elapsed, serial)


class StageBoom(Exception):
    pass


def test_pipeline_reraises_middle_stage_error_with_its_type() -> None:
    def boom(x: int) -> int:
        if x == 5:
            raise StageBoom(f"bad item {x}")
        return x

    got: list[int] = []
    pipe = Pipeline(range(1000), [("err-a", lambda x: x), ("err-mid", boom), ("err-c", lambda x: x)], 2)
    with pytest.raises(StageBoom, match="bad item 5") as info:
        for y in pipe:
            got.append(y)
    assert got == [0, 1, 2, 3, 4]  # everything before the failure, in order
    assert any(entry.name == "boom" for entry in info.traceback)  # the original exception object
    assert pipe_threads("err-a", "err-mid", "err-c", "feed") == []  # iteration closed the pipeline
    assert pipe.times["err-c"].items == 5  # the stage after the failure never ran on it


def test_a_failing_stage_hands_its_input_to_on_drop() -> None:
    """The item a stage failed on (e.g. one holding a read buffer) is released, not lost."""

    def boom(x: int) -> int:
        if x == 3:
            raise StageBoom("bad")
        return x

    dropped: list[int] = []
    pipe = Pipeline(range(10), [("drop-mid", boom)], 1, on_drop=dropped.append)
    with pytest.raises(StageBoom):
        for _ in pipe:
            pass
    assert 3 in dropped


def test_pipeline_reraises_error_from_the_items_iterable() -> None:
    def items() -> Iterator[int]:
        yield from range(3)
        raise KeyError("feed broke")

    got: list[int] = []
    pipe = Pipeline(items(), [("feed-a", lambda x: -x)], depth=1)
    with pytest.raises(KeyError, match="feed broke"):
        for y in pipe:
            got.append(y)
    assert got == [0, -1, -2]
    assert pipe_threads("feed-a", "feed") == []


def saturated_pipeline(depth: int = 1) -> tuple[Pipeline, list[Any], list[Any]]:
    """A two-stage pipeline over 1,000 items whose consumer took one output and stopped; returns
    once every queue is full and each stage holds one more output it cannot hand on."""
    dropped: list[Any] = []
    pipe = Pipeline(
        iter(range(1000)),
        [("sat-x1", lambda i: ("x1", i)), ("sat-x2", lambda t: ("x2", t[1]))],
        depth=depth,
        on_drop=dropped.append,
    )
    consumed = [next(iter(pipe))]
    # x2: the one consumed, ``depth`` queued, one in hand; x1: what x2 took, ``depth`` queued, one in hand
    wait_for(lambda: pipe.times["sat-x2"].items >= 2 + depth)
    wait_for(lambda: pipe.times["sat-x1"].items >= 3 + 2 * depth)
    time.sleep(0.05)
    return pipe, consumed, dropped


def test_pipeline_close_mid_stream_stops_threads_and_drops_queued() -> None:
    pipe, consumed, dropped = saturated_pipeline(depth=1)
    assert consumed == [("x2", 0)]
    made = {k: v.items for k, v in pipe.times.items()}
    assert made == {"sat-x1": 5, "sat-x2": 3}  # blocked: nothing runs ahead further than the queues
    t0 = time.perf_counter()
    pipe.close()
    assert time.perf_counter() - t0 < 2.0
    assert pipe_threads("sat-x1", "sat-x2", "feed") == []
    # the queued outputs of both stages went to on_drop; nothing consumed did
    assert ("x2", 1) in dropped and ("x1", 3) in dropped, dropped
    assert all(d not in consumed for d in dropped)
    assert len(dropped) == len({repr(d) for d in dropped})  # each at most once
    assert {k: v.items for k, v in pipe.times.items()} == made  # and nothing ran after close
    pipe.close()  # idempotent
    assert len(dropped) == len({repr(d) for d in dropped})


def test_pipeline_close_hands_every_unconsumed_output_to_on_drop() -> None:
    pipe, consumed, dropped = saturated_pipeline(depth=1)
    made = pipe.times["sat-x2"].items
    pipe.close()
    finals = [d for d in dropped if isinstance(d, tuple) and d[0] == "x2"]
    assert len(consumed) + len(finals) == made, (consumed, dropped, made)


# --------------------------------------------------------------------------- featdb loader
def test_featdb_loader_serves_the_right_rows_and_labels(store_dir: Path) -> None:
    """Every batch of an epoch: x rows are the features of the MFG's input ids in served order,
    y the labels of its seeds, the seeds cover the training split once; all buffers come back."""
    with featdb.open(store_dir, mode="a") as st:
        graph = load_graph(st)
        feats = st.read_all(FEAT)
        loader = FeatDBLoader(st, SET, torch.device("cpu"), 2, graph.labels)
        try:
            per_epoch = loader.ss.batches_per_epoch
            for epoch in (0, 1):
                ep = loader.epoch(epoch, np.random.default_rng([0, epoch]))
                seeds = []
                try:
                    for mfg, x, y, release in ep.items:
                        assert x.shape == (mfg.num_inputs, 16)
                        np.testing.assert_array_equal(x.numpy(), feats[mfg.input_ids.numpy()])
                        np.testing.assert_array_equal(y.numpy(), graph.labels[mfg.seeds.numpy()])
                        seeds.append(mfg.seeds.numpy().copy())
                        release()
                finally:
                    ep.close()
                assert len(seeds) == per_epoch
                np.testing.assert_array_equal(np.sort(np.concatenate(seeds)), np.sort(graph.train))
                assert {k: v.items for k, v in ep.times.items()} == {
                    "sample": per_epoch,
                    "read": per_epoch,
                    "assemble": per_epoch,
                }
                assert loader.reader.pool.available == loader.reader.pool.count
        finally:
            loader.close()


def test_closing_an_epoch_part_way_is_prompt_and_returns_every_buffer(store_dir: Path) -> None:
    """Regression: a stage blocked on a read buffer kept close() waiting 5 s, and outputs held by
    stages at close were never released (buffers leaked from the pool)."""
    with featdb.open(store_dir, mode="a") as st:
        loader = FeatDBLoader(st, SET, torch.device("cpu"), 1, load_graph(st).labels)
        try:
            ep = loader.epoch(0, np.random.default_rng(0))
            _, _, _, release = next(ep.items)
            time.sleep(0.5)  # every stage fills up and blocks
            t = time.perf_counter()
            ep.close()
            assert time.perf_counter() - t < 2.0
            release()
            assert loader.reader.pool.available == loader.reader.pool.count
        finally:
            loader.close()


# --------------------------------------------------------------------------- train()
@pytest.fixture(scope="module")
def featdb_run(store_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    """Two epochs of GraphSAGE through featdb (shared by the summary and determinism tests)."""
    ckpt_dir = tmp_path_factory.mktemp("ckpt-featdb")
    return train(config(store_dir, ckpt_dir, epochs=2)), ckpt_dir


def test_train_featdb_summary_and_checkpoints(featdb_run: tuple[dict[str, Any], Path]) -> None:
    s, ckpt_dir = featdb_run
    assert_summary(s, epochs=2)
    mem = s["memory"]
    assert mem["enforced"] and mem["charged_bytes"] <= mem["budget_bytes"] == 1 << 30
    assert {"runtime (torch)", "one training step", "host tier (L2)"} <= set(mem["parts"])
    assert s["peak_rss_bytes"] > 0 and len(s["eval_s"]) == 2
    assert s["loader"] == "featdb" and s["model"] == "sage" and s["seed"] == 0
    assert set(s["stage_s"]) >= STAGES, s["stage_s"]
    assert s["config"]["epochs"] == 2 and s["config"]["hidden"] == 16
    json.dumps(s)  # the summary is plain JSON

    hits = s["tier_hit_rates"]
    assert {"l2", "l4"} <= set(hits) and hits["l2"] > 0 and hits["l4"] > 0
    assert all(0.0 <= v <= 1.0 for v in hits.values())
    assert sum(hits.values()) == pytest.approx(1.0, abs=1e-3)
    assert isinstance(s["read_amplification"], float) and s["read_amplification"] > 0

    assert s["allocator"] == retain_large_allocations(trim_threshold(s["config"]["memory_budget"]))
    if sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc":
        assert isinstance(s["allocator"], str) and "mmap_threshold" in s["allocator"]
    else:
        assert s["allocator"] is None or isinstance(s["allocator"], str)

    best = Path(s["checkpoint"])
    assert best == ckpt_dir / "model.pt" and best.is_file()
    last = ckpt_dir / "model.last.pt"
    assert last.is_file()
    assert list(ckpt_dir.glob("*.partial")) == [] and list(ckpt_dir.rglob("*partial*")) == []
    ck_best = torch.load(best, map_location="cpu")
    ck_last = torch.load(last, map_location="cpu")
    assert ck_best["best"] is True and ck_last["best"] is False
    assert ck_best["state"]["best_val"] == s["best_val_acc"]
    assert ck_best["state"]["test_at_best"] == s["test_acc"]
    assert ck_last["state"]["epoch"] == 1 and len(ck_last["state"]["history"]) == 2
    assert set(ck_best["model"]) == set(ck_last["model"]) and ck_best["opt"]["state"]


def test_train_default_checkpoint_path_is_outside_the_store(
    store_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Training writes nothing into the store (it may be read-only): checkpoints go under ./checkpoints."""
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in store_dir.iterdir())
    s = train(config(store_dir, tmp_path, model="mlp", checkpoint=None, seed=7))
    want = Path("checkpoints") / f"{store_dir.name}-{SET}-mlp-featdb-s7.pt"
    assert Path(s["checkpoint"]) == want and (tmp_path / want).is_file()
    assert not list((tmp_path / want).parent.glob("*.partial"))
    assert sorted(p.name for p in store_dir.iterdir()) == before


def test_the_default_checkpoint_is_named_after_the_store_also_when_given_as_dot(
    store_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    shutil.copytree(store_dir, tmp_path / "mystore")
    monkeypatch.chdir(tmp_path / "mystore")
    s = train(config(Path("."), tmp_path, model="mlp", checkpoint=None, seed=7))
    assert Path(s["checkpoint"]) == Path("checkpoints") / f"mystore-{SET}-mlp-featdb-s7.pt"


def test_a_set_without_evaluation_batches_is_refused_with_the_fix(store_dir: Path, tmp_path: Path) -> None:
    from featdb.errors import ConfigError
    from featdb.sampling import SampleConfig, sample

    with featdb.open(store_dir, mode="a") as st:
        if st.catalog.get("sampleset/noeval") is None:
            sample(st, SampleConfig("noeval", (4, 4), BATCH, 1, eval_splits=()))
    cfg = config(store_dir, tmp_path)
    cfg.sample_set = "noeval"
    with pytest.raises(ConfigError, match="--eval"):
        train(cfg)


def test_train_is_deterministic_for_a_seed(
    store_dir: Path, tmp_path: Path, featdb_run: tuple[dict[str, Any], Path]
) -> None:
    """featdb: batch order from the seed, pipeline outputs in order, compute on one thread of
    control: the same seed gives the same losses and bit-identical weights."""
    first, first_dir = featdb_run
    again = train(config(store_dir, tmp_path / "a", epochs=2))
    assert again["loss"] == first["loss"] and again["val_acc"] == first["val_acc"]
    w1 = torch.load(first_dir / "model.last.pt", map_location="cpu")["model"]
    w2 = torch.load(tmp_path / "a" / "model.last.pt", map_location="cpu")["model"]
    assert all(torch.equal(w1[k], w2[k]) for k in w1)

    other = train(config(store_dir, tmp_path / "b", epochs=2, seed=1))
    assert other["loss"] != first["loss"]  # the seed matters: the check above can fail


def test_train_resume(store_dir: Path, tmp_path: Path, featdb_run: tuple[dict[str, Any], Path]) -> None:
    one = train(config(store_dir, tmp_path, epochs=1))
    assert one["epochs"] == 1
    two = train(config(store_dir, tmp_path, epochs=2, resume=True))
    assert_summary(two, epochs=2)
    assert two["val_acc"][0] == one["val_acc"][0]
    assert two["loss"][0] == one["loss"][0] and two["epoch_s"][0] == one["epoch_s"][0]
    # batch order and dropout both continue where they stopped: the same as 2 epochs in one go
    straight = featdb_run[0]
    assert two["loss"] == straight["loss"] and two["val_acc"] == straight["val_acc"]
    last = torch.load(tmp_path / "model.last.pt", map_location="cpu")
    assert last["state"]["epoch"] == 1 and [r["epoch"] for r in last["state"]["history"]] == [0, 1]
    assert not list(tmp_path.glob("*.partial"))

    # resuming a finished run trains nothing more and reports the same history
    done = train(config(store_dir, tmp_path, epochs=2, resume=True))
    assert done["loss"] == two["loss"] and done["val_acc"] == two["val_acc"]


def test_in_memory_baseline_is_reproducible_for_a_seed(store_dir: Path, tmp_path: Path) -> None:
    """The baseline's shuffle and sampling follow the seed (DGL's sampling is deterministic on
    one thread); the thread count asked for is restored afterwards."""
    before = torch.get_num_threads()
    runs = [train(config(store_dir, tmp_path / str(i), loader="in-memory", threads=1)) for i in range(2)]
    assert runs[0]["loss"] == runs[1]["loss"]
    assert torch.get_num_threads() == before


def test_resume_without_checkpoint_is_a_config_error(store_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no checkpoint"):
        train(config(store_dir, tmp_path / "none", resume=True))
    assert not (tmp_path / "none").exists()


@pytest.mark.parametrize("loader", ["in-memory", "dgl-mmap"])
def test_train_baseline_loaders(store_dir: Path, tmp_path: Path, loader: str) -> None:
    s = train(config(store_dir, tmp_path, loader=loader))
    assert_summary(s, epochs=1)
    assert s["loader"] == loader
    assert {"sample", "gather", "compute"} <= set(s["stage_s"])
    assert s["tier_hit_rates"] == {} and s["read_amplification"] is None
    assert Path(s["checkpoint"]).is_file()


@pytest.mark.parametrize("model", ["mlp", "gat"])
def test_train_other_models(store_dir: Path, tmp_path: Path, model: str) -> None:
    s = train(config(store_dir, tmp_path, model=model, heads=2))
    assert_summary(s, epochs=1)
    assert s["model"] == model and set(s["stage_s"]) >= STAGES


def test_unknown_loader_is_a_config_error(store_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="loader 'pyg'"):
        train(config(store_dir, tmp_path, loader="pyg"))


@pytest.mark.parametrize(
    ("setting", "match"),
    [
        ({"epochs": 0}, "epochs"),
        ({"hidden": 0}, "hidden"),
        ({"queue_depth": 0}, "queue_depth"),
        ({"lr": 0.0}, "lr"),
        ({"dropout": 1.0}, "dropout"),
        ({"threads": -1}, "threads"),
    ],
)
def test_unusable_settings_are_config_errors_before_anything_is_written(
    store_dir: Path, tmp_path: Path, setting: dict[str, Any], match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        train(config(store_dir, tmp_path / "ck", **setting))
    assert not (tmp_path / "ck").exists()


@pytest.mark.parametrize(
    "args", [["--epochs", "0"], ["--hidden", "-3"], ["--queue-depth", "0"], ["--dropout", "1"], ["--lr", "0"]]
)
def test_cli_rejects_out_of_range_settings(store_dir: Path, args: list[str]) -> None:
    r = run_train_cli(store_dir, "--sample-set", SET, *args)
    assert r.exit_code == 2 and args[0] in r.output


def test_train_learns(store_dir: Path, tmp_path: Path) -> None:
    """A few epochs of GraphSAGE through featdb beat predicting the majority class (rows and labels
    reaching the model out of step would not)."""
    with featdb.open(store_dir) as st:
        g = load_graph(st)
    majority = np.bincount(g.labels[g.valid]).max() / len(g.valid)
    s = train(config(store_dir, tmp_path, hidden=32, lr=0.01, epochs=4))
    assert s["loss"][-1] < s["loss"][0]
    assert s["best_val_acc"] > majority + 0.05, (s["val_acc"], majority)


# --------------------------------------------------------------------------- featdb-train
def run_train_cli(*args: Any) -> Result:
    from trainer.cli import main

    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=True)


def test_cli_json(store_dir: Path, tmp_path: Path) -> None:
    ck = tmp_path / "cli.pt"
    r = run_train_cli(store_dir, "--sample-set", SET, "--epochs", 1, "--hidden", 16, "--json", "--checkpoint", ck)
    assert r.exit_code == 0, (r.output, r.exception)
    s = json.loads(r.stdout)  # the whole of stdout is one JSON object
    assert isinstance(s, dict)
    assert_summary(s, epochs=1)
    assert set(s["stage_s"]) >= STAGES and s["loader"] == "featdb"
    assert s["config"]["hidden"] == 16 and Path(s["checkpoint"]) == ck and ck.is_file()


def test_cli_text(store_dir: Path, tmp_path: Path) -> None:
    r = run_train_cli(
        store_dir,
        "--sample-set",
        SET,
        "--epochs",
        1,
        "--hidden",
        16,
        "--model",
        "mlp",
        "--loader",
        "in-memory",
        "--checkpoint",
        tmp_path / "t.pt",
    )
    assert r.exit_code == 0, (r.output, r.exception)
    assert "in-memory mlp seed=0: test acc" in r.stdout and "stage busy s:" in r.stdout


def test_cli_errors(store_dir: Path, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-store"
    r = run_train_cli(missing, "--sample-set", SET, "--epochs", 1, "--json")
    assert_one_error_line(r, "StoreNotFoundError", str(missing))
    assert "{" not in r.stdout

    r = run_train_cli(store_dir, "--sample-set", "nope", "--epochs", 1, "--json")
    assert_one_error_line(r, "nope")

    r = run_train_cli(store_dir, "--sample-set", SET, "--resume", "--checkpoint", tmp_path / "x.pt")
    assert_one_error_line(r, "ConfigError", "no checkpoint")

    r = run_train_cli(store_dir, "--sample-set", SET, "--loader", "pyg")
    assert r.exit_code == 2 and "pyg" in r.output


# --------------------------------------------------------------------------- featdb demo
def test_demo(tmp_path_factory: pytest.TempPathFactory) -> None:
    from featdb.cli import cli

    base = disk_dir(tmp_path_factory, "demo")
    try:
        path = base / "demo-store"
        r = CliRunner().invoke(cli, ["demo", "--store", str(path), "--nodes", "3000", "--epochs", "1", "--json"])
        assert r.exit_code == 0, (r.output, r.exception)
        out = json.loads(r.stdout)
        assert out["verify_problems"] == []
        assert set(out["runs"]) == {"featdb", "in-memory"}
        for run in out["runs"].values():
            assert run["epochs"] == 1 and len(run["epoch_s"]) == 1
            assert 0.0 <= run["test_acc"] <= 1.0
        assert set(out["runs"]["featdb"]["stage_s"]) >= STAGES
        assert out["runs"]["featdb"]["tier_hit_rates"] and out["runs"]["in-memory"]["tier_hit_rates"] == {}
        ratio = out["featdb_vs_in_memory"]["epoch_time_ratio"]
        assert isinstance(ratio, float) and ratio > 0
        assert set(out["steps"]) == {"synth_s", "sample_s", "pack_s", "verify_s"}
        assert out["sample_set"]["batches"] >= 1 and out["layout"]["l4_rows"] > 0
        assert (path / "catalog" / "data.mdb").exists()

        # a directory that is not a featdb store is refused, not wiped
        other = base / "precious"
        other.mkdir()
        (other / "keep.txt").write_text("data")
        r = CliRunner().invoke(cli, ["demo", "--store", str(other), "--nodes", "3000", "--json"])
        assert_one_error_line(r, "not a featdb store")
        assert (other / "keep.txt").read_text() == "data"
    finally:
        shutil.rmtree(base, ignore_errors=True)


# --------------------------------------------------------------------------- allocator
ALLOC_SCRIPT = textwrap.dedent(
    """
    import ctypes, ctypes.util, json, resource
    import numpy as np
    from trainer.allocator import retain_large_allocations

    def churn(n=20):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(n):
            a = np.ones(2 << 20, dtype=np.float32)  # 8 MiB, every page written
            del a
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.mallopt(-3, 128 << 10)  # M_MMAP_THRESHOLD fixed at glibc's default: each array mmapped
    control = churn()
    setting = retain_large_allocations()
    print(json.dumps({"setting": setting, "control": control, "retained": churn()}))
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt, Linux rusage")
def test_retain_large_allocations_cuts_page_faults() -> None:
    """In a fresh process (the setting is per process and applied once): 20 allocate/free rounds
    of an 8 MiB array fault every page in each time under glibc's fixed default threshold, and
    about once in all after ``retain_large_allocations()``."""
    env = {"PATH": "/usr/bin:/bin", "NUMPY_MADVISE_HUGEPAGE": "0", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", ALLOC_SCRIPT], capture_output=True, text=True, env=env, cwd=ROOT, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    if res["setting"] is None:
        pytest.skip("not glibc: retain_large_allocations() does nothing here")
    pages = 20 * (8 << 20) // 4096
    if res["control"] < pages // 2:
        pytest.skip(f"transparent huge pages hide the faults ({res['control']} for {pages} pages)")
    assert "mmap_threshold=32MiB" in res["setting"]
    assert res["retained"] < pages // 4, res


# --------------------------------------------------------------------------- memory budget
def test_featdb_training_evaluates_the_sets_own_parts_without_the_graph(
    store_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """featdb-mode training never loads the graph and evaluates through the layout: no separate
    evaluation sample set is written, and evaluation reads only packed tiers."""
    import trainer.loop as loop

    def no_graph(*_: Any, **__: Any) -> Any:
        raise AssertionError("featdb-mode training loaded the graph")

    monkeypatch.setattr(loop, "load_graph", no_graph)
    s = train(config(store_dir, tmp_path))
    with featdb.open(store_dir) as st:
        assert st.catalog.get(f"sampleset/{SET}.eval-valid") is None
        layout = featdb.info(st)["layout"]
    if not layout.get("blocks_segments"):  # blocks segments are read from the base table by design
        assert s["tier_hit_rates"]["base"] == 0.0


def test_a_budget_too_small_is_refused_at_start_naming_the_parts(store_dir: Path, tmp_path: Path) -> None:
    from featdb.errors import BudgetExceededError

    with pytest.raises(BudgetExceededError, match=r"runtime \(torch\).*one training step.*host tier"):
        train(config(store_dir, tmp_path, memory_budget=500 << 20))
    assert not list(tmp_path.iterdir())  # nothing written

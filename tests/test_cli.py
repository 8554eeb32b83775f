"""The admin CLI end to end through click's CliRunner, parsing ``--json`` output."""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import numpy as np
import pytest
from click.testing import CliRunner, Result
from helpers import FEAT, PLAN_KEYS, assert_one_error_line, flip_byte, tree

import featdb
from featdb.cli import cli

pytest.importorskip("dgl")  # `featdb sample` needs DGL

DOCS = Path(__file__).resolve().parent.parent / "docs" / "cli.md"


def run(*args: Any, code: int = 0) -> Result:
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=True)
    assert result.exit_code == code, (args, result.exit_code, result.output, result.exception)
    if code == 0:
        assert result.exception is None
    return result


def run_json(*args: Any, code: int = 0) -> Any:
    return json.loads(run(*args, "--json", code=code).stdout)


# --------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def synth_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("cli") / "store"
    out = run_json(
        "synth",
        path,
        "--nodes",
        3000,
        "--avg-degree",
        6,
        "--dim",
        16,
        "--classes",
        4,
        "--seed",
        1,
        "--train-frac",
        0.3,
        "-q",
    )
    assert out["num_nodes"] == 3000 and out["num_edges"] > 3000 and out["num_classes"] == 4
    yield path


def test_end_to_end(synth_store: Path, tmp_path: Path) -> None:
    import shutil

    store = tmp_path / "store"
    shutil.copytree(synth_store, store)

    info = run_json("info", store)
    assert info["format_version"] == featdb.store.FORMAT_VERSION
    assert [(t["key"], t["rows"], t["dim"], t["dtype"]) for t in info["tables"]] == [(FEAT, 3000, 16, "float32")]
    assert info["tables"][0]["bytes"] >= 3000 * 64
    g = info["graph"]
    assert g["num_nodes"] == 3000 and g["num_edges"] > 0 and g["num_classes"] == 4
    assert g["num_train"] + g["num_valid"] + g["num_test"] <= 3000 and g["num_train"] > 0
    assert info["sample_sets"] == [] and info["layout"] is None and info["generations"] == []
    text = run("info", store).output
    assert "node/_/feat" in text and "layout: none" in text

    s = run_json("sample", store, "--name", "tr", "--fanouts", "4,4", "--batch-size", 128, "--epochs", 2)
    per_epoch = -(-g["num_train"] // 128)
    assert s["name"] == "tr" and s["epochs"] == 2 and s["fanouts"] == [4, 4] and s["batch_size"] == 128
    assert s["batches_per_epoch"] == per_epoch and s["parts"]["train"] == [0, 2 * per_epoch]
    n_eval = {k: -(-g[f"num_{k}"] // 128) for k in ("valid", "test")}
    assert s["parts"]["valid"] == [2 * per_epoch, 2 * per_epoch + n_eval["valid"]]
    assert s["batches"] == s["parts"]["test"][1] == 2 * per_epoch + sum(n_eval.values())
    assert s["memory"]["peak_rss_bytes"] > 0 and s["memory"]["budget_bytes"] == 1 << 30
    assert s["bytes"] > 0 and s["input_rows"] > g["num_train"] * 2

    before = tree(store)
    plan = run_json("pack", store, "--sample-set", "tr", "--host-cache", "8KiB", "--max-blowup", 2, "--dry-run")
    assert plan["dry_run"] is True and plan["id"] is None
    assert plan["blowup"] <= 2.0 and plan["l2_rows"] == 8192 // 64 and plan["predictions"]["requested_rows"] > 0
    per_epoch, per_pass = plan["predictions"]["disk_bytes_per_epoch"], plan["predictions"]["disk_bytes_per_pass"]
    assert 0 < per_epoch * 2 <= per_pass  # two training epochs, and evaluation batches besides
    assert tree(store) == before, "--dry-run wrote something"

    packed = run_json("pack", store, "--sample-set", "tr", "--host-cache", "8KiB", "--max-blowup", 2)
    assert packed["id"] and packed["dry_run"] is None
    for key in PLAN_KEYS:
        assert packed[key] == plan[key], key
    assert packed["predictions"] == plan["predictions"]

    info = run_json("info", store)
    assert [x["name"] for x in info["sample_sets"]] == ["tr"]
    assert info["sample_sets"][0]["batches"] == s["batches"]
    assert info["layout"]["id"] == packed["id"] and info["layout"]["sample_set"] == "tr"
    assert info["layout"]["policy"] == "full" and info["generations"] == [packed["id"]]
    assert f"generation {packed['id']}" in run("info", store).output

    v = run_json("verify", store)
    assert v["ok"] is True and v["problems"] == [] and v["files"] > 10
    assert "ok" in run("verify", store).output

    rows = run_json("read", store, FEAT, "0,5,10-12,5")
    assert rows["ids"] == [0, 5, 10, 11, 12, 5]
    with featdb.open(store) as st:
        want = st.read_all(FEAT)[[0, 5, 10, 11, 12, 5]]
    np.testing.assert_array_equal(np.asarray(rows["rows"], dtype=np.float32), want)
    assert rows["io"] in ("direct", "buffered")
    text = run("read", store, FEAT, "1,2").output
    assert [ln.split(":")[0] for ln in text.splitlines() if re.match(r"^\d+:", ln)] == ["1", "2"]

    blocks = run_json("pack", store, "--sample-set", "tr", "--max-blowup", 0, "--segment-cache", "64KiB")
    assert blocks["blowup"] == 0.0 and blocks["blocks_segments"] == blocks["segments"] > 1
    assert [c["kind"] for c in blocks["predictions"]["candidates"]] == ["blocks"]
    served = run_json("verify", store)
    assert served["ok"] is True
    gens = [packed["id"], blocks["id"]]
    # a plan predicted to read more than --max-amplification: a warning, or with --strict nothing written
    before = tree(store)
    args = ("pack", store, "--sample-set", "tr", "--policy", "blocks", "--segment-cache", "8KiB")
    refused = run(*args, "--max-amplification", 1, "--strict", code=1)
    assert_one_error_line(refused, "read amplification", "--max-blowup", "--segment-cache", "--strict")
    assert tree(store) == before
    warned = run(*args, "--max-amplification", 1, "--dry-run")
    assert "warning: the plan predicts read amplification" in warned.output
    largest = run_json(*args, "--dry-run")["predictions"]["largest_segment_bytes"]
    assert largest > 0 and "serving holds segments whole" in warned.output  # the memory read ahead needs
    assert run_json(*args, "--max-amplification", 1, "--dry-run")["warnings"]

    again = run_json("pack", store, "--sample-set", "tr", "--policy", "pack-only")
    assert again["id"] not in gens
    res = run_json("gc", store)
    assert sorted(res["removed"]) == sorted(gens) and res["pinned"] == [] and res["sample_sets"] == []
    assert run_json("info", store)["generations"] == [again["id"]]
    assert run_json("gc", store)["removed"] == []

    with featdb.open(store) as st:
        table_file = store / st.table_info(FEAT)["file"]
    flip_byte(table_file, 4096 + 100)
    bad = run("verify", store, "--json", code=1)
    out = json.loads(bad.stdout)
    assert out["ok"] is False and len(out["problems"]) == 1
    table_rel = table_file.relative_to(store).as_posix()
    assert table_rel in out["problems"][0]
    assert table_rel in run("verify", store, code=1).output
    quiet = CliRunner().invoke(cli, ["verify", str(store), "-q"])
    assert quiet.exit_code == 1 and table_file.name in quiet.stderr


def test_sample_set_removal_and_orphans(synth_store: Path, tmp_path: Path) -> None:
    import shutil

    store = tmp_path / "store"
    shutil.copytree(synth_store, store)
    run("sample", store, "--name", "a", "--fanouts", "3", "--batch-size", 256, "-q")
    run("sample", store, "--name", "b", "--fanouts", "3", "--batch-size", 256, "-q")
    (store / "samples" / "b.partial-123").mkdir()  # a crashed run's leftovers
    (store / "samples" / "b.partial-123" / "epoch-0000.seg.partial").write_bytes(b"x" * 10)
    res = run_json("gc", store, "--sample-set", "a")
    assert res["sample_sets"] == ["a"] and res["orphans"] == ["samples/b.partial-123"]
    info = run_json("info", store)
    assert [x["name"] for x in info["sample_sets"]] == ["b"]
    assert sorted(p.name for p in (store / "samples").iterdir()) == ["b"]
    assert run_json("verify", store)["ok"] is True
    r = run("gc", store, "--sample-set", "a", code=1)
    assert_one_error_line(r, "SampleSetNotFoundError", "'a'")


def test_ingest_and_ingest_graph(tmp_path: Path) -> None:
    store = tmp_path / "s"
    feats = np.random.default_rng(0).standard_normal((50, 6)).astype(np.float32)
    np.save(tmp_path / "x.npy", feats)
    out = run_json("ingest", store, "node/p/feat", tmp_path / "x.npy", "-q")
    assert out == {"key": "node/p/feat", "rows": 50, "dim": 6, "dtype": "float32"}
    feats.astype(np.float16).tofile(tmp_path / "x.bin")
    out = run_json("ingest", store, "node/p/half", tmp_path / "x.bin", "--dtype", "float16", "--shape", "50,6")
    assert out == {"key": "node/p/half", "rows": 50, "dim": 6, "dtype": "float16"}
    rows = run_json("read", store, "node/p/half", "3,49")["rows"]
    np.testing.assert_array_equal(np.asarray(rows, dtype=np.float16), feats.astype(np.float16)[[3, 49]])
    edges = np.array([[0, 1, 2, 3, 4], [1, 2, 3, 4, 0]])
    np.save(tmp_path / "e.npy", edges)
    np.save(tmp_path / "y.npy", np.array([0, 1, 0, 1, 0] + [1] * 45))
    np.savez(tmp_path / "split.npz", train=np.array([0, 1, 2]), valid=np.array([3]), test=np.array([4]))
    g = run_json(
        "ingest-graph",
        store,
        tmp_path / "e.npy",
        "--labels",
        tmp_path / "y.npy",
        "--split",
        tmp_path / "split.npz",
    )
    assert g["num_nodes"] == 50 and g["num_edges"] == 10 and g["num_classes"] == 2
    info = run_json("info", store)
    assert info["graph"]["num_train"] == 3 and info["graph"]["num_edges"] == 10
    assert {t["key"] for t in info["tables"]} == {"node/p/feat", "node/p/half"}
    r = run("ingest", store, "node/p/feat", tmp_path / "x.npy", code=1)
    assert_one_error_line(r, "AlreadyExistsError")


def _write_csv_gz(path: Path, rows: np.ndarray, fmt: str = "%d") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt") as f:
        np.savetxt(f, rows, fmt=fmt, delimiter=",")


def test_ingest_ogb(tmp_path: Path) -> None:
    folder = tmp_path / "ogbn_tiny"
    rng = np.random.default_rng(0)
    _write_csv_gz(folder / "raw" / "edge.csv.gz", rng.integers(0, 40, size=(120, 2)))
    _write_csv_gz(folder / "raw" / "node-feat.csv.gz", rng.standard_normal((40, 5)), fmt="%.6f")
    _write_csv_gz(folder / "raw" / "node-label.csv.gz", rng.integers(0, 3, size=(40, 1)))
    for name, ids in (
        ("train", np.arange(0, 20)),
        ("valid", np.arange(20, 30)),
        ("test", np.arange(30, 40)),
    ):
        _write_csv_gz(folder / "split" / "random" / f"{name}.csv.gz", ids[:, None])
    g = run_json("ingest-ogb", tmp_path / "s", folder, "--feat-key", "node/p/feat")
    assert g["num_nodes"] == 40 and g["num_classes"] == 3
    info = run_json("info", tmp_path / "s")
    assert [(t["key"], t["rows"], t["dim"]) for t in info["tables"]] == [("node/p/feat", 40, 5)]
    assert info["graph"]["num_train"] == 20


def test_synth_json_reports_split_sizes(tmp_path: Path) -> None:
    """Regression: the graph commands' summary once reported null split sizes."""
    out = run_json("synth", tmp_path / "s2", "--nodes", 500, "--dim", 4, "--classes", 2, "--train-frac", 0.2)
    info = run_json("info", tmp_path / "s2")
    for split in ("train", "valid", "test"):
        assert out[f"num_{split}"] == info["graph"][f"num_{split}"]
    assert out["num_train"] > 0


def test_fanouts_help_states_the_order_sampling_uses(synth_store: Path, tmp_path: Path) -> None:
    import shutil

    from featdb.sampling.sampleset import SampleSet

    store = tmp_path / "store"
    shutil.copytree(synth_store, store)
    run("sample", store, "--name", "t", "--fanouts", "1,30", "--batch-size", 64, "-q")
    with featdb.open(store) as st, SampleSet(st, "t") as ss:
        batch = ss.batch(0)
        per_dst_input_side = np.bincount(batch.layers[0].dst, minlength=batch.layers[0].num_dst)
        assert per_dst_input_side.max() == 1  # the first fanout applies to the input-side layer
    opt = next(p for p in cli.commands["sample"].params if p.name == "fanouts")
    assert "input side last" not in (opt.help or "")


# --------------------------------------------------------------------------- errors
def test_missing_store_is_one_readable_line(tmp_path: Path) -> None:
    for args in (
        ["info"],
        ["verify"],
        ["gc"],
        ["read", None, FEAT, "1"],
        ["sample", None, "--name", "x"],
        ["pack", None, "--sample-set", "x"],
    ):
        argv = [a if a is not None else tmp_path / "nope" for a in args]
        if args[0] in ("info", "verify", "gc"):
            argv.append(tmp_path / "nope")
        r = run(*argv, code=1)
        assert_one_error_line(r, "StoreNotFoundError", "nope")
    assert not (tmp_path / "nope").exists()


def test_error_cases_are_one_readable_line(synth_store: Path, tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.zeros((3, 2), dtype=np.float32))
    cases = [
        (["read", synth_store, "node/_/nope", "1"], 1, ["TableNotFoundError", "node/_/nope"]),
        (["read", synth_store, FEAT, "3000"], 1, ["IdsOutOfRangeError", "3000"]),
        (
            ["sample", synth_store, "--name", "x", "--fanouts", "10,,x"],
            1,
            ["InvalidInputError", "10,,x"],
        ),
        (
            ["sample", synth_store, "--name", "x", "--fanouts", "0"],
            1,
            ["InvalidInputError", "fanouts"],
        ),
        (
            ["sample", synth_store, "--name", "x", "--epochs", "0"],
            1,
            ["InvalidInputError", "epochs"],
        ),
        (
            ["sample", synth_store, "--name", "x", "--batch-size", "0"],
            1,
            ["InvalidInputError", "batch size"],
        ),
        (["sample", synth_store, "--name", "x/y"], 1, ["InvalidInputError", "x/y"]),
        (["sample", synth_store, "--name", "x", "--split", "training"], 2, ["training"]),
        (["pack", synth_store, "--sample-set", "nope"], 1, ["SampleSetNotFoundError", "nope"]),
        (["pack", synth_store, "--sample-set", "x", "--host-cache", "12XB"], 2, ["12XB"]),
        (["pack", synth_store, "--sample-set", "x", "--memory-budget", "lots"], 2, ["lots"]),
        (["read", synth_store, FEAT, "1,a"], 2, ["1,a"]),
        (["ingest", synth_store, "bad-key", tmp_path / "x.npy"], 1, ["InvalidKeyError", "bad-key"]),
        (
            ["ingest", synth_store, "node/p/x", tmp_path / "x.npy", "--memory-budget", "12XB"],
            2,
            ["12XB"],
        ),
        (["ingest", synth_store, "node/p/x", tmp_path / "nope.npy"], 2, ["nope.npy"]),
    ]
    before = tree(synth_store)
    for args, code, fragments in cases:
        r = run(*args, code=code)
        assert_one_error_line(r, *fragments)
        assert r.stdout == "", r.stdout  # the error goes to stderr; stdout stays clean for --json users
    assert tree(synth_store) == before, "a failed command changed the store"


def test_sample_name_clash_and_pack_errors(synth_store: Path, tmp_path: Path) -> None:
    import shutil

    store = tmp_path / "store"
    shutil.copytree(synth_store, store)
    run("sample", store, "--name", "t", "--fanouts", "3", "--batch-size", 512, "-q")
    assert_one_error_line(run("sample", store, "--name", "t", code=1), "AlreadyExistsError", "'t'")
    assert_one_error_line(run("pack", store, "--sample-set", "t", "--max-blowup", "-0.5", code=2), "--max-blowup")
    assert_one_error_line(
        run("pack", store, "--sample-set", "t", "--memory-budget", "1MiB", code=1),
        "BudgetExceededError",
        "per-node arrays",
        "--memory-budget",
    )
    assert_one_error_line(run("pack", store, "--sample-set", "t", "--table", "node/_/x", code=1), "TableNotFoundError")
    assert not (store / "gens").exists() or not any((store / "gens").iterdir())


def test_info_survives_a_missing_data_file(synth_store: Path, tmp_path: Path) -> None:
    import shutil

    store = tmp_path / "store"
    shutil.copytree(synth_store, store)
    with featdb.open(store) as st:
        rel = st.table_info(FEAT)["file"]
    (store / rel).unlink()
    assert any("missing" in p for p in run_json("verify", store, code=1)["problems"])
    r = CliRunner().invoke(cli, ["info", str(store), "--json"])
    assert "Traceback" not in r.output and not isinstance(r.exception, FileNotFoundError)


def test_gc_refuses_to_drop_the_current_layouts_sample_set(synth_store: Path, tmp_path: Path) -> None:
    import shutil

    store = tmp_path / "store"
    shutil.copytree(synth_store, store)
    run("sample", store, "--name", "t", "--fanouts", "3", "--batch-size", 512, "-q")
    run("pack", store, "--sample-set", "t", "-q")
    r = CliRunner().invoke(cli, ["gc", str(store), "--sample-set", "t"])
    assert r.exit_code != 0
    assert [x["name"] for x in run_json("info", store)["sample_sets"]] == ["t"]


# --------------------------------------------------------------------------- help and docs
def _leaves(group: click.Group, prefix: str = "") -> dict[str, click.Command]:
    out: dict[str, click.Command] = {}
    for name, cmd in group.commands.items():
        path = f"{prefix}{name}"
        if isinstance(cmd, click.Group):
            out |= _leaves(cmd, path + " ")
        else:
            out[path] = cmd
    return out


COMMANDS = _leaves(cli)
UNDOCUMENTED: set[str] = set()  # every command must appear in docs/cli.md


def test_the_group_has_every_command() -> None:
    assert set(COMMANDS) >= {
        "synth",
        "ingest",
        "ingest-graph",
        "ingest-ogb",
        "info",
        "verify",
        "read",
        "sample",
        "pack",
        "gc",
    }
    out = run("--help").output
    for name in cli.commands:
        assert name in out
    for name, cmd in cli.commands.items():
        assert cmd.help, f"featdb {name} has no help text"


@pytest.mark.parametrize("path", sorted(COMMANDS))
def test_every_command_has_help_with_an_example(path: str) -> None:
    cmd = COMMANDS[path]
    assert cmd.help and "Example:" in cmd.help
    example = re.search(r"Example:\s*(featdb .+)", cmd.help)
    assert example and example.group(1).split()[1 : 1 + len(path.split())] == path.split()
    out = run(*path.split(), "--help").output
    assert "Example:" in out and "Usage:" in out
    params = {p.name for p in cmd.params if isinstance(p, click.Option)}
    assert {"as_json", "quiet"} <= params, "shared --json/-q options"


@pytest.mark.skipif(not DOCS.exists(), reason="docs/cli.md not written yet")
@pytest.mark.parametrize(
    "path",
    [
        pytest.param(
            p,
            marks=pytest.mark.xfail(
                strict=True,
                reason="BUG: docs/cli.md was not regenerated (tools/gen_cli_docs.py) after `featdb bench` was added",
            ),
        )
        if p in UNDOCUMENTED
        else p
        for p in sorted(COMMANDS)
    ],
)
def test_every_command_is_documented(path: str) -> None:
    text = DOCS.read_text()
    assert re.search(rf"(^|\s|`)featdb {re.escape(path)}(\s|`|$)", text, re.M) or f"## {path}" in text, (
        f"docs/cli.md does not document `featdb {path}`"
    )

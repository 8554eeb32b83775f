"""Read-only use: a store on read-only media, or with read-only files, can be inspected, verified, read and
trained from; writes are refused up front with one line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import FEAT, assert_one_error_line, make_layout, make_sample_set, make_synth_store, tree

from featdb.cli import cli

pytest.importorskip("dgl")

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ro") / "store"
    with make_synth_store(path, nodes=900) as st:
        make_sample_set(st, "tr", epochs=1)
        make_layout(st, "tr")
    return path


@pytest.fixture
def ro_mount(base: Path, tmp_path: Path) -> Iterator[Path]:
    """The store under a read-only bind mount (root only)."""
    src, ro = tmp_path / "src", tmp_path / "ro"
    src.mkdir()
    ro.mkdir()
    shutil.copytree(base, src / "store")
    if os.geteuid() != 0 or subprocess.run(["mount", "--bind", str(src), str(ro)]).returncode:
        pytest.skip("needs root to bind-mount")
    try:
        if subprocess.run(["mount", "-o", "remount,ro,bind", str(ro)]).returncode:
            pytest.skip("cannot remount read-only")
        yield ro / "store"
    finally:
        subprocess.run(["umount", "-l", str(ro)], check=False)


def test_a_store_on_read_only_media_serves_every_read(ro_mount: Path, tmp_path: Path) -> None:
    from trainer.cli import main

    before = tree(ro_mount)
    for args in (["info"], ["verify"], ["read", "--", str(ro_mount), FEAT, "0-3"]):
        cmd = [args[0], *args[1:]] if len(args) > 1 else [args[0], str(ro_mount)]
        res = CliRunner().invoke(cli, cmd)
        assert res.exit_code == 0, (args, res.output)
    ck = tmp_path / "ck" / "m.pt"
    res = CliRunner().invoke(
        main, [str(ro_mount), "--sample-set", "tr", "--epochs", "1", "--checkpoint", str(ck), "-q"]
    )
    assert res.exit_code == 0, res.output
    assert ck.exists()
    # a checkpoint that would land on the read-only disk is refused before training
    res = CliRunner().invoke(main, [str(ro_mount), "--sample-set", "tr", "--checkpoint", str(ro_mount / "c.pt")])
    assert_one_error_line(res, "ConfigError", "not writable", "--checkpoint")
    res = CliRunner().invoke(cli, ["sample", str(ro_mount), "--name", "x", "--fanouts", "2"])
    assert_one_error_line(res, "ReadOnlyError", "read-only")
    assert tree(ro_mount) == before


def _as_unprivileged(argv: list[str]) -> list[str]:
    """Run as a user without root's override of file permissions (a user namespace, when we are root)."""
    if os.geteuid() != 0:
        return argv
    if subprocess.run(["unshare", "--user", "true"], capture_output=True).returncode:
        pytest.skip("needs unshare --user to drop root's permission override")
    return ["unshare", "--user", *argv]


def test_a_store_with_read_only_files_serves_every_read(base: Path, tmp_path: Path) -> None:
    """With the files read-only, nothing worked, not even info (LMDB wants its lock file writable)."""
    store = tmp_path / "store"
    shutil.copytree(base, store)
    subprocess.run(["chmod", "-R", "a-w", str(store)], check=True)
    try:
        before = tree(store)
        featdb_bin = str(BIN / "featdb")
        for args in (["info", store, "--json"], ["verify", store], ["read", store, FEAT, "0,5", "--json"]):
            proc = subprocess.run(_as_unprivileged([featdb_bin, *map(str, args)]), capture_output=True, text=True)
            assert proc.returncode == 0, (args, proc.stderr)
        assert json.loads(proc.stdout)["ids"] == [0, 5]
        proc = subprocess.run(
            _as_unprivileged([featdb_bin, "sample", str(store), "--name", "x", "--fanouts", "2"]),
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 1 and "ReadOnlyError" in proc.stderr and "Traceback" not in proc.stderr
        train = [str(BIN / "featdb-train"), str(store), "--sample-set", "tr", "--epochs", "1", "-q"]
        proc = subprocess.run(
            _as_unprivileged([*train, "--checkpoint", str(tmp_path / "ck.pt")]), capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stderr
        assert tree(store) == before
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(store)], check=True)

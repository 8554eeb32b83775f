"""Disk full and other OS errors: one line naming what ran out, a non-zero exit, the store unchanged.

The full disk is a small tmpfs (needs root to mount; skipped otherwise), filled but for a few pages.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import FEAT, assert_one_error_line, make_layout, make_sample_set, make_synth_store, tree

import featdb
from featdb import errors
from featdb.cli import cli

pytest.importorskip("dgl")

BIN = Path(sys.executable).parent


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A store on a 24 MiB tmpfs holding a graph, features and sample set 'tr', then filled up."""
    mnt = tmp_path / "fs"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mnt)]).returncode:
        pytest.skip("needs root to mount a small tmpfs")
    try:
        with make_synth_store(mnt / "store", nodes=3000) as st:
            make_sample_set(st, "tr", epochs=1)
            make_layout(st, "tr")
        free = shutil.disk_usage(mnt).free
        with open(mnt / "filler", "wb") as f:
            os.posix_fallocate(f.fileno(), 0, free - (64 << 10))
        yield mnt / "store"
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def files(root: Path) -> dict[str, object]:
    """The store's data files and their hashes (the empty lock files and folders aside), and what the
    catalog holds (a failed LMDB commit may leave bytes in free pages, changing nothing it holds)."""
    out: dict[str, object] = {
        k: v for k, v in tree(root).items() if not k.endswith("/") and not k.startswith(("locks/", "catalog/"))
    }
    with featdb.open(root) as st:
        out["catalog"] = st.catalog.every()
    return out


def test_every_command_on_a_full_disk_says_so_in_one_line(full_disk: Path, tmp_path: Path) -> None:
    """Ingest, sample, pack and train ended with OSError 28 tracebacks; ingest-graph died of SIGBUS."""
    src = tmp_path / "big.npy"
    np.save(src, np.zeros((40_000, 16), dtype="float32"))
    before = files(full_disk)
    runs = {
        "ingest": ["ingest", full_disk, "node/x/feat", src],
        "sample": ["sample", full_disk, "--name", "big", "--fanouts", "5,5", "--epochs", "30", "--workers", "1"],
        "pack": ["pack", full_disk, "--sample-set", "tr"],
    }
    for name, args in runs.items():
        res = CliRunner().invoke(cli, [str(a) for a in args])
        assert "DiskFullError: disk full" in res.output, (name, res.output)
        assert_one_error_line(res, "DiskFullError", "disk full")
        assert files(full_disk) == before, name
    edges = tmp_path / "edges.npy"
    np.save(edges, np.random.default_rng(0).integers(0, 3000, size=(2, 400_000)))
    proc = subprocess.run(
        [BIN / "featdb", "ingest-graph", full_disk, edges, "--replace", "-q"], capture_output=True, text=True
    )
    assert proc.returncode == 1, (proc.returncode, proc.stderr)  # not -7: no SIGBUS
    assert "DiskFullError" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert files(full_disk) == before
    with featdb.open(full_disk) as st:
        assert st.verify() == []


def test_a_checkpoint_on_a_full_disk_is_one_line(full_disk: Path) -> None:
    ckpt = full_disk.parent / "ck.pt"
    proc = subprocess.run(
        [BIN / "featdb-train", full_disk, "--sample-set", "tr", "--epochs", "1", "--checkpoint", ckpt, "-q"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1 and "DiskFullError" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not ckpt.with_name("ck.pt.partial").exists()  # an earlier, complete checkpoint may stay


def test_os_errors_from_any_command_are_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An OS error featdb does not expect (here EIO on fsync) still ends as one line, not a traceback."""
    with make_synth_store(tmp_path / "store", nodes=500):
        pass
    np.save(tmp_path / "f.npy", np.zeros((10, 4), dtype="float32"))

    def eio(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", eio)
    before = files(tmp_path / "store")
    res = CliRunner().invoke(cli, ["ingest", str(tmp_path / "store"), "node/y/feat", str(tmp_path / "f.npy")])
    assert_one_error_line(res, "StorageError", "Input/output error", "EIO")
    assert files(tmp_path / "store") == before
    monkeypatch.undo()
    with featdb.open(tmp_path / "store") as st:
        assert not st.has_table("node/y/feat") and st.read(FEAT, [0]).shape == (1, 16)


def test_os_error_names_what_ran_out() -> None:
    err = errors.os_error(OSError(errno.ENOSPC, "No space left on device", "/s/tables/x"), "writing /s/tables/x")
    assert isinstance(err, errors.DiskFullError) and isinstance(err, OSError)
    assert str(err).startswith("disk full while writing /s/tables/x")


def test_a_short_write_is_continued_and_a_write_of_nothing_is_disk_full(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disk filling up makes write() stop short: the rest is written, or (nothing written) the
    file is refused as disk full and never published at its claimed size."""
    from featdb import io as fio

    real_write = os.write
    data = bytes(range(256)) * 1200
    monkeypatch.setattr(fio.os, "write", lambda fd, mv: real_write(fd, bytes(mv)[:1000]))
    size, _ = fio.write_atomic(tmp_path / "short.bin", data)
    assert size == len(data) and (tmp_path / "short.bin").read_bytes() == data
    calls = iter(range(1_000_000))
    monkeypatch.setattr(fio.os, "write", lambda fd, mv: real_write(fd, bytes(mv)[:1000]) if next(calls) < 3 else 0)
    with pytest.raises(errors.DiskFullError):
        fio.write_atomic(tmp_path / "full.bin", data)
    assert not (tmp_path / "full.bin").exists() and not list(tmp_path.glob("full.bin*"))


def test_a_short_positioned_write_of_an_extent_is_continued(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from featdb import io as fio

    real = os.pwrite
    monkeypatch.setattr(fio.os, "pwrite", lambda fd, mv, off: real(fd, bytes(mv)[:100], off))
    fd = os.open(tmp_path / "x", os.O_RDWR | os.O_CREAT)
    try:
        fio.write_all(fd, b"a" * 1000, 4096)
    finally:
        os.close(fd)
    assert (tmp_path / "x").read_bytes()[4096:] == b"a" * 1000


def test_pack_refuses_a_layout_the_disk_cannot_hold_before_writing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pack that would fill the disk used to write until ENOSPC (tens of GB); now it says so first."""
    with make_synth_store(tmp_path / "store", nodes=500) as st:
        make_sample_set(st, "tr")
    before = files(tmp_path / "store")
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=1 << 20))
    res = CliRunner().invoke(cli, ["pack", str(tmp_path / "store"), "--sample-set", "tr"])
    assert_one_error_line(res, "DiskFullError", "disk full: pack", "MiB free")
    assert files(tmp_path / "store") == before

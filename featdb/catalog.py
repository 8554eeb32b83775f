"""The LMDB catalog: metadata only, never feature rows. Every transaction lives here.

Values are JSON documents keyed by ``<kind>/<name>`` strings, each with a crc32
of key and value and checked against its kind's schema when read
(:mod:`featdb.records`). Writes run as a
function inside one write transaction, retried after growing the map when LMDB
reports ``MapFullError``. The environment is opened lazily and reopened after a
fork, so each process has its own handle (DESIGN invariant 7).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import lmdb

from . import records
from .errors import CatalogError, CorruptCatalogError, DiskFullError, ReadOnlyError

T = TypeVar("T")
INITIAL_MAP_SIZE = 64 << 20
MAX_MAP_SIZE = 1 << 40


class Txn:
    """A write transaction: JSON get/put/delete on string keys."""

    def __init__(self, txn: lmdb.Transaction) -> None:
        self._txn = txn

    def get(self, key: str, default: Any = None) -> Any:
        raw = self._txn.get(key.encode())
        return default if raw is None else records.decode(key, bytes(raw))

    def put(self, key: str, value: Any) -> None:
        records.check(key, value)
        self._txn.put(key.encode(), records.encode(key, value))

    def delete(self, key: str) -> bool:
        return bool(self._txn.delete(key.encode()))

    def scan(self, prefix: str) -> Iterator[tuple[str, Any]]:
        cur = self._txn.cursor()
        p = prefix.encode()
        if not cur.set_range(p):
            return
        for k, v in cur:
            if not bytes(k).startswith(p):
                break
            key = _key(k)
            yield key, records.decode(key, bytes(v))

    def every(self) -> Iterator[tuple[str, Any, str | None]]:
        """(key, document, None) for every entry, or (key, None, problem) for one that fails its
        checksum or its schema: ``verify``'s view of the catalog, which never stops at damage."""
        for k, v in self._txn.cursor():
            try:
                key = _key(k)
                yield key, records.decode(key, bytes(v)), None
            except CorruptCatalogError as exc:
                yield repr(bytes(k)), None, str(exc)


def _key(raw: bytes | memoryview) -> str:
    try:
        return bytes(raw).decode()
    except UnicodeDecodeError:
        raise CorruptCatalogError(f"catalog key {bytes(raw)!r} is not text (the catalog is damaged)") from None


class Catalog:
    """One LMDB environment in ``<store>/catalog``."""

    def __init__(self, path: Path, readonly: bool, create: bool = False) -> None:
        self.path = path
        self.readonly = readonly
        self._create = create
        self._env: lmdb.Environment | None = None
        self._pid = -1

    @property
    def env(self) -> lmdb.Environment:
        if self._env is None or self._pid != os.getpid():
            self._env = _acquire(self.path, self._create)
            self._pid = os.getpid()
        return self._env

    def read(self, fn: Callable[[Txn], T]) -> T:
        """Run ``fn`` in a short read transaction; results must not hold LMDB buffers."""
        try:
            with self.env.begin(write=False) as txn:
                return fn(Txn(txn))
        except lmdb.Error as exc:
            raise CatalogError(f"catalog read failed: {exc}") from exc

    def get(self, key: str, default: Any = None) -> Any:
        return self.read(lambda t: t.get(key, default))

    def scan(self, prefix: str) -> list[tuple[str, Any]]:
        return self.read(lambda t: list(t.scan(prefix)))

    def every(self) -> list[tuple[str, Any, str | None]]:
        return self.read(lambda t: list(t.every()))

    def write(self, fn: Callable[[Txn], T]) -> T:
        """Run ``fn`` in one write transaction, growing the map when it fills."""
        if self.readonly:
            raise ReadOnlyError(f"store at {self.path.parent} is open read-only")
        while True:
            try:
                with self.env.begin(write=True) as txn:
                    return fn(Txn(txn))
            except lmdb.MapFullError:
                self._grow()
            except lmdb.Error as exc:
                if os.strerror(errno.ENOSPC) in str(exc) or _nearly_full(self.path):  # LMDB may say EIO
                    raise DiskFullError(f"disk full while writing the catalog {self.path}: {exc}") from exc
                raise CatalogError(f"catalog write failed: {exc}") from exc

    def _grow(self) -> None:
        size = self.env.info()["map_size"] * 2
        if size > MAX_MAP_SIZE:
            raise CatalogError(f"catalog map would exceed {MAX_MAP_SIZE} bytes")
        try:
            self.env.set_mapsize(size)
        except lmdb.Error as exc:
            raise CatalogError(f"cannot grow catalog map: {exc}") from exc

    def close(self) -> None:
        if self._env is not None and self._pid == os.getpid():
            _release(self.path)
        self._env = None


# LMDB allows one environment per file per process: share it, counted, and drop what a fork inherited.
_ENVS: dict[str, list[Any]] = {}  # realpath -> [environment, users]
_ENVS_PID = os.getpid()
_ENVS_LOCK = threading.Lock()


def _acquire(path: Path, create: bool) -> lmdb.Environment:
    global _ENVS_PID
    key = os.path.realpath(path)
    with _ENVS_LOCK:
        if os.getpid() != _ENVS_PID:  # forked: the parent's handles must not be used here
            for env, _ in _ENVS.values():
                with contextlib.suppress(lmdb.Error):
                    env.close()
            _ENVS.clear()
            _ENVS_PID = os.getpid()
        rec = _ENVS.get(key)
        if rec is None:
            rec = _ENVS[key] = [_open_env(path, create), 0]
        rec[1] += 1
        opened: lmdb.Environment = rec[0]
        return opened


def _release(path: Path) -> None:
    key = os.path.realpath(path)
    with _ENVS_LOCK:
        rec = _ENVS.get(key)
        if rec is None:
            return
        rec[1] -= 1
        if rec[1] <= 0:
            rec[0].close()
            del _ENVS[key]


def _open_env(path: Path, create: bool) -> lmdb.Environment:
    """Open read-write where the directory allows it (writes are still guarded per Catalog).

    Where it does not (read-only media, read-only files), the environment is opened read-only and
    without LMDB's lock file, which could not be written: nobody can write such a store, so its
    readers need no lock among themselves.
    """
    writable = create or (os.access(path, os.W_OK) and os.access(path / "data.mdb", os.W_OK))
    try:
        map_size = max(INITIAL_MAP_SIZE, _file_size(path / "data.mdb") * 2)
        return lmdb.open(
            str(path),
            map_size=map_size,
            subdir=True,
            readonly=not writable,
            create=create,
            max_readers=512,
            lock=bool(writable),
            readahead=False,
        )
    except lmdb.Error as exc:
        raise CatalogError(f"cannot open catalog at {path}: {exc}") from exc


def _nearly_full(path: Path) -> bool:
    try:
        return shutil.disk_usage(path).free < (1 << 20)
    except OSError:
        return False


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0

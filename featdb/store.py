"""The store: one directory holding the catalog and its data files."""

from __future__ import annotations

import builtins
import os
import shutil
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .catalog import Catalog, Txn
from .errors import (
    AlreadyExistsError,
    CorruptDataError,
    FormatVersionError,
    InvalidInputError,
    InvalidKeyError,
    ReadOnlyError,
    StoreExistsError,
    StoreNotFoundError,
    TableNotFoundError,
)
from .io import hold_dir
from .names import RULE, is_name
from .tables import HEADER_BYTES, Schema, TableReader, TableWriter, parse_dtype

FORMAT_VERSION = 1
builtins_open = builtins.open  # this module's `open` opens stores
RESERVED_DOMAINS = ("graph",)
READ_THREADS = 16  # concurrent page-run reads per table: the queue depth random reads need


def check_key(key: str, internal: bool = False) -> str:
    parts = key.split("/") if isinstance(key, str) else []
    if len(parts) != 3 or not all(is_name(p) for p in parts):
        raise InvalidKeyError(
            f"table key {key!r} is not of the form domain/type/name (e.g. node/paper/feat), each part {RULE}"
        )
    if not internal and key.split("/", 1)[0] in RESERVED_DOMAINS:
        raise InvalidKeyError(f"table key {key!r}: domain 'graph' is reserved for the stored graph")
    return key


def create(path: str | Path) -> Store:
    """Make a new, empty store at ``path`` and open it for writing."""
    root = Path(path)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise StoreExistsError(f"{root} already exists and is not an empty directory")
    root.mkdir(parents=True, exist_ok=True)
    cat = Catalog(root / "catalog", readonly=False, create=True)
    cat.write(lambda t: t.put("meta", {"format_version": FORMAT_VERSION, "created": time.time()}))
    cat.close()
    return Store(root, mode="a")


def open(path: str | Path, mode: str = "r") -> Store:
    """Open an existing store; ``mode`` is ``"r"`` (read-only) or ``"a"`` (read/write)."""
    return Store(Path(path), mode=mode)


class Store:
    """A featdb store. Use as a context manager; readers and files open lazily per process."""

    def __init__(self, root: Path, mode: str = "r") -> None:
        if mode not in ("r", "a"):
            raise InvalidInputError(f"mode must be 'r' or 'a', got {mode!r}")
        if not (root / "catalog" / "data.mdb").exists():
            raise StoreNotFoundError(f"no featdb store at {root}")
        if mode == "a" and not os.access(root / "catalog", os.W_OK):
            raise ReadOnlyError(
                f"store at {root} is on read-only media or its files are read-only: it can be inspected, "
                "verified, read and trained from, not written"
            )
        self.root = root
        self.mode = mode
        self.catalog = Catalog(root / "catalog", readonly=(mode == "r"))
        meta = self.catalog.get("meta") or {}
        if int(meta.get("format_version", 0)) > FORMAT_VERSION:
            raise FormatVersionError(
                f"store at {root} has format {meta['format_version']}; this featdb reads up to {FORMAT_VERSION}"
            )
        self._readers: dict[str, TableReader] = {}
        self._pid = os.getpid()
        self.direct = True
        self.read_threads = READ_THREADS
        self.verify_reads = True  # check every page read against the table's page checksums (set before reading)

    # -- lifecycle -----------------------------------------------------------------
    def __enter__(self) -> Store:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        for r in self._readers.values():
            r.close()
        self._readers.clear()
        self.catalog.close()

    @property
    def writable(self) -> bool:
        return self.mode == "a"

    def require_writable(self) -> None:
        if not self.writable:
            raise ReadOnlyError(f"store at {self.root} is open read-only; open it with mode='a'")

    def path(self, rel: str) -> Path:
        return self.root / rel

    # -- tables --------------------------------------------------------------------
    def tables(self, include_internal: bool = False) -> list[dict[str, Any]]:
        docs = [doc for _, doc in self.catalog.scan("table/")]
        return [d for d in docs if include_internal or d["key"].split("/", 1)[0] not in RESERVED_DOMAINS]

    def table_info(self, key: str) -> dict[str, Any]:
        doc = self.catalog.get(f"table/{key}")
        if doc is None:
            raise TableNotFoundError(f"no table {key!r} in {self.root}")
        return dict(doc)

    def schema(self, key: str) -> Schema:
        d = self.table_info(key)
        return Schema(d["dtype"], d["rows"], d["dim"])

    def has_table(self, key: str) -> bool:
        return self.catalog.get(f"table/{key}") is not None

    @contextmanager
    def table_writer(
        self,
        key: str,
        schema: Schema,
        internal: bool = False,
        replace: bool = False,
        extra: dict[str, Any] | None = None,
    ) -> Iterator[TableWriter]:
        """Write a new table; it becomes visible in one catalog transaction after the file is durable."""
        self.require_writable()
        check_key(key, internal)
        _check_schema(schema)
        if self.has_table(key) and not replace:
            raise AlreadyExistsError(f"table {key!r} already exists")
        # one directory per table file, pinned while it is written, so gc never takes work in progress
        folder = f"tables/{key.replace('/', '.')}.{time.time_ns():x}"
        rel = f"{folder}/rows.tbl"
        (self.root / folder).mkdir(parents=True)
        pin = hold_dir(self.root / folder)
        try:
            with TableWriter(self.root / rel, schema, page_crcs=True) as w:
                yield w
                rec = w.commit()
            self._record_table(key, schema, rel, rec, extra or {}, replace)
        except BaseException:
            remove_table_file(self.root, rel)
            raise
        finally:
            os.close(pin)

    def _record_table(
        self, key: str, schema: Schema, rel: str, rec: dict[str, Any], extra: dict[str, Any], replace: bool
    ) -> None:
        def txn(t: Txn) -> str | None:
            old = t.get(f"table/{key}")
            if old is not None and not replace:
                raise AlreadyExistsError(f"table {key!r} already exists")
            t.put(f"file/{rel}", {"size": rec["size"], "crcs": rec["crcs"], "kind": "table"})
            pages = {}
            if "pages" in rec:
                pages["page_crcs"] = rel.removesuffix(".tbl") + ".crc"
                pages["page_checksum"] = rec["page_checksum"]
                t.put(f"file/{pages['page_crcs']}", {**rec["pages"], "kind": "table"})
            t.put(
                f"table/{key}",
                {
                    "key": key,
                    "dtype": schema.dtype,
                    "rows": schema.rows,
                    "dim": schema.dim,
                    "file": rel,
                    "created": time.time(),
                    "uid": uuid.uuid4().hex,  # content id: derived data records it, a replaced table gets a new one
                    **pages,
                    **extra,
                },
            )
            if old is not None:
                for f in table_files(old):
                    t.delete(f"file/{f}")
                return str(old["file"])
            return None

        old_rel = self.catalog.write(txn)
        self.forget_reader(key)
        if old_rel:
            remove_table_file(self.root, old_rel)

    def write_table(
        self,
        key: str,
        data: NDArray[Any] | Iterable[NDArray[Any]],
        schema: Schema | None = None,
        internal: bool = False,
        replace: bool = False,
    ) -> Schema:
        """Write a whole table from an array or an iterable of row chunks."""
        if schema is None:
            arr = np.asarray(data)
            arr2 = arr.reshape(len(arr), -1) if arr.ndim != 2 else arr
            schema = Schema(arr2.dtype.name, arr2.shape[0], arr2.shape[1] if arr2.ndim == 2 else 1)
            data = [arr2]
        with self.table_writer(key, schema, internal=internal, replace=replace) as w:
            for chunk in data:
                w.write(chunk)
        return schema

    def reader(self, key: str) -> TableReader:
        if self._pid != os.getpid():  # forked: the parent's reader threads do not exist here
            self._readers = {}
            self._pid = os.getpid()
        r = self._readers.get(key)
        if r is None:
            r = self._readers[key] = self.open_table(key)
        return r

    def open_table(self, key: str, threads: int | None = None, verify: bool | None = None) -> TableReader:
        """A new reader of table ``key`` (the caller closes it), checking every page it reads against
        the table's page checksums when ``verify`` (default: ``verify_reads``)."""
        info = self.table_info(key)
        crc = info.get("page_crcs") if (self.verify_reads if verify is None else verify) else None
        return TableReader(
            self.root / info["file"],
            direct=self.direct,
            threads=self.read_threads if threads is None else threads,
            page_crcs=self.root / crc if crc else None,
            page_checksum=info.get("page_checksum"),
        )

    def check_table(self, key: str) -> None:
        """:class:`CorruptDataError` naming the damage unless the table's files match their checksums
        (a whole sequential read: for tables used through a memory map, whose reads are not checked)."""
        from .integrity import check_file

        problems = []
        for rel in table_files(self.table_info(key)):
            rec = self.catalog.get(f"file/{rel}")
            problems += check_file(self.root, rel, rec) if rec is not None else [f"{rel}: no file record"]
        if problems:
            raise CorruptDataError(f"table {key!r}: {'; '.join(problems)}; run featdb verify")

    def forget_reader(self, key: str) -> None:
        """Close the cached reader of ``key`` (after its table was replaced or removed)."""
        r = self._readers.pop(key, None)
        if r is not None:
            r.close()

    def read(self, key: str, ids: Any) -> NDArray[Any]:
        """Rows of table ``key`` in the order of ``ids`` (duplicates allowed, any length)."""
        return self.reader(key).read(ids)

    def read_all(self, key: str) -> NDArray[Any]:
        """The whole table in memory: one sequential read into one buffer (no second copy)."""
        s = self.schema(key)
        return self.reader(key).read_range(0, s.rows)

    def map(self, key: str) -> NDArray[Any]:
        """The table memory-mapped, ``rows x dim`` (a copy-on-write mapping: its pages are shared page
        cache, never written back). Indexing it reads only the pages of the rows asked for."""
        info = self.table_info(key)
        if info["rows"] == 0:
            return np.empty((0, info["dim"]), dtype=info["dtype"])
        return np.memmap(
            self.root / info["file"],
            dtype=info["dtype"],
            mode="c",
            offset=HEADER_BYTES,
            shape=(info["rows"], info["dim"]),
        )

    def io_mode(self, key: str) -> str:
        """``"direct"`` or ``"buffered"``: which read path this table's reads use."""
        return self.reader(key).mode

    def stats(self) -> dict[str, Any]:
        return {k: {"io": r.mode, **r.stats.as_dict()} for k, r in self._readers.items()}

    # -- integrity -----------------------------------------------------------------
    def files(self) -> dict[str, dict[str, Any]]:
        return {k[len("file/") :]: v for k, v in self.catalog.scan("file/")}

    def verify(self) -> list[str]:
        """Check the catalog (checksums, schemas, references) and recompute every file's checksums;
        returns one readable line per problem found."""
        from .integrity import verify

        return verify(self)


def table_files(doc: dict[str, Any]) -> list[str]:
    """The files a table document names: its rows and, for tables written with them, its page checksums."""
    return [doc["file"], *([doc["page_crcs"]] if doc.get("page_crcs") else [])]


def remove_table_file(root: Path, rel: str) -> None:
    """Delete a table's file, and its directory when it has one of its own (``tables/<name>/rows.tbl``)."""
    path = root / rel
    if path.parent != root / "tables" and path.parent.parent == root / "tables":
        shutil.rmtree(path.parent, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _check_schema(schema: Schema) -> None:
    parse_dtype(schema.dtype)
    if schema.rows < 0 or schema.dim < 1:
        raise InvalidInputError(f"shape ({schema.rows}, {schema.dim}) is not a valid table shape")

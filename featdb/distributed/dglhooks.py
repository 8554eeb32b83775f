"""DGL's KVStore serving rows from featdb stores: the server entry point and the client hook.

A stock DGL server loads ``node_feat.dgl`` into memory and copies it into POSIX shared memory
(peak about twice the partition). Here the server registers each manifest key with
``KVServer.init_data(name, policy, None)`` and puts a memory-mapped tensor of its partition's
featdb table (rows in DGL's local order) in ``data_store[name]``. Trainers and backup servers
find the tensor by calling ``dgl.distributed.kvstore.empty_shared_mem(name + "-kvdata-", False,
shape, dtype)``; :func:`install_hook` wraps that function so that, for the manifest's keys only,
it maps the same featdb file instead of opening a shared-memory segment. DGL's C++ fast pull path
is untouched: local ids are gathered from the mapping, remote ids by the owning server.

These are DGL internals (``KVServer.init_data``, ``data_store``, the module-level
``empty_shared_mem``), so everything here checks the DGL version first and refuses any other
than :data:`PINNED_DGL`; tests/test_distributed.py smoke-tests the hooks against it. DGL is
imported lazily: importing this module needs neither torch nor DGL.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, CorruptDataError
from ..io import drop_page_cache
from ..memory import available_memory, peak_rss, status_bytes
from ..tables import HEADER_BYTES
from .manifest import FeatureKey, Manifest

PINNED_DGL = "2.1.0"
SERVER_ENV = ("DGL_SERVER_ID", "DGL_IP_CONFIG", "DGL_NUM_SERVER", "DGL_NUM_CLIENT", "DGL_CONF_PATH")
SUFFIX = "-kvdata-"  # DGL's shared-memory name for KVStore data: key + suffix


def check_dgl(version: str | None = None) -> str:
    """The DGL version, if it is the one the hooks were checked against; ``ConfigError`` otherwise."""
    if version is None:
        try:
            import dgl
        except ImportError as exc:
            raise ConfigError(
                f"featdb's distributed mode needs DGL {PINNED_DGL} (pip install dgl=={PINNED_DGL})"
            ) from exc
        version = str(dgl.__version__)
    if version != PINNED_DGL:
        raise ConfigError(
            f"featdb's KVStore hooks use DGL internals checked against DGL {PINNED_DGL} only; "
            f"this is DGL {version}: install dgl=={PINNED_DGL} or run stock DGL servers"
        )
    return version


def table_file(manifest: Manifest, part: int, key: FeatureKey) -> Path:
    """The data file of ``key``'s table in partition ``part``'s store (read from its catalog)."""
    from ..store import open as open_store

    with open_store(manifest.store_path(part)) as st:
        info = st.table_info(key.table)
        rows = manifest.part_rows(part)
        if (int(info["rows"]), int(info["dim"]), str(info["dtype"])) != (rows, key.dim, key.dtype):
            raise CorruptDataError(
                f"partition {part} table {key.table}: {info['rows']}x{info['dim']} {info['dtype']}, "
                f"the manifest says {rows}x{key.dim} {key.dtype}"
            )
        return st.root / str(info["file"])


def map_rows(manifest: Manifest, part: int, key: FeatureKey) -> Any:
    """Partition ``part``'s rows of ``key`` as a torch tensor over a private, read-mostly mapping
    of the featdb file (pages stay shared page cache), advised for random access."""
    import torch

    rows = manifest.part_rows(part)
    if rows == 0:
        return torch.empty((0, key.dim), dtype=getattr(torch, key.dtype))
    arr = np.memmap(
        table_file(manifest, part, key), dtype=key.dtype, mode="c", offset=HEADER_BYTES, shape=(rows, key.dim)
    )
    raw: Any = arr._mmap  # type: ignore[attr-defined]  # numpy keeps the mmap object here
    if raw is not None and hasattr(mmap, "MADV_RANDOM"):
        raw.madvise(mmap.MADV_RANDOM)  # only the pages of the rows pulled enter the page cache
    return torch.from_numpy(arr)


def check_tables(manifest: Manifest, part: int) -> bool:
    """The whole partition's tables against their checksums: reads through a mapping are not
    checked one by one, so the server checks the files once before it maps them. The check reads
    them into the page cache; they stay there (warm for the first pulls: clean pages the kernel
    takes back under pressure) when they fit in half the memory available, else they are dropped
    so that only the rows pulled are cached. Returns whether they stay."""
    from ..store import open as open_store

    free = available_memory()  # before the check fills the page cache (a cgroup counts what it read)
    with open_store(manifest.store_path(part)) as st:
        for key in manifest.keys:
            st.check_table(key.table)
    files = [table_file(manifest, part, key) for key in manifest.keys]
    if sum(f.stat().st_size for f in files) <= free // 2:
        return True
    for path in files:
        drop_page_cache(path)
    return False


class _Mapped:
    """What ``empty_shared_mem`` returns, as far as DGL uses it: ``to_dlpack()``."""

    def __init__(self, tensor: Any) -> None:
        self.tensor = tensor

    def to_dlpack(self) -> Any:
        import torch.utils.dlpack

        return torch.utils.dlpack.to_dlpack(self.tensor)  # type: ignore[attr-defined]


def install_hook(manifest: Manifest, part: int | Callable[[], int]) -> Callable[[], None]:
    """Make DGL's KVStore map the manifest's keys from partition ``part``'s featdb store (``part``
    may be a function, called on first use: a trainer learns its machine id when it connects).
    Returns a function that removes the hook."""
    check_dgl()
    from dgl.distributed import kvstore

    original = kvstore.empty_shared_mem
    if getattr(original, "featdb_hook", False):
        raise ConfigError("the featdb KVStore hook is already installed in this process")
    names = {k.kv + SUFFIX: k for k in manifest.keys}

    def empty_shared_mem(name: str, is_create: bool, shape: Any, dtype: str = "float32") -> Any:
        key = names.get(name)
        if key is None:
            return original(name, is_create, shape, dtype)
        if is_create:
            raise ConfigError(f"DGL asked to create shared memory for {key.kv}, which featdb serves from disk")
        p = part() if callable(part) else part
        want = (manifest.part_rows(p), key.dim)
        if tuple(int(s) for s in shape) != want or str(dtype) != key.dtype:
            raise ConfigError(f"{key.kv}: DGL expects {tuple(shape)} {dtype}, partition {p} holds {want} {key.dtype}")
        return _Mapped(map_rows(manifest, p, key))

    empty_shared_mem.featdb_hook = True  # type: ignore[attr-defined]
    kvstore.empty_shared_mem = empty_shared_mem

    def remove() -> None:
        kvstore.empty_shared_mem = original

    return remove


def client_machine_id() -> int:
    """This trainer's machine id, as DGL decided it when connecting to the servers."""
    from dgl.distributed import rpc

    return int(rpc.get_machine_id())


def server_env() -> dict[str, str]:
    """DGL's server environment contract (what ``tools/launch.py`` sets), checked."""
    missing = [k for k in SERVER_ENV if not os.environ.get(k)]
    if missing:
        raise ConfigError(f"a DGL server needs {', '.join(missing)} in its environment (DGL's launch contract)")
    return {k: os.environ[k] for k in (*SERVER_ENV, "DGL_GRAPH_FORMAT") if k in os.environ}


def serve(manifest: Manifest | None, part_config: str | None = None) -> dict[str, Any]:
    """Run one DGL server (main or backup) from the environment until its clients finish.

    With a manifest, the manifest's keys are served from the partition's featdb store; without
    one (``part_config`` names a stock config) this is DGL's own server, for comparison.
    Returns what it measured (peak RSS, the keys it mapped)."""
    check_dgl()
    from dgl.distributed import rpc
    from dgl.distributed.dist_graph import DistGraphServer

    env = server_env()
    server_id, num_servers = int(env["DGL_SERVER_ID"]), int(env["DGL_NUM_SERVER"])
    conf = part_config or env["DGL_CONF_PATH"]
    part = int(rpc.read_ip_config(env["DGL_IP_CONFIG"], num_servers)[server_id][0])
    remove = None
    if manifest is not None:
        remove = install_hook(manifest, part)
    rpc.reset()
    formats = [f.strip() for f in env.get("DGL_GRAPH_FORMAT", "csc").split(",")]
    serv = DistGraphServer(
        server_id, env["DGL_IP_CONFIG"], num_servers, int(env["DGL_NUM_CLIENT"]), conf, graph_format=formats
    )
    mapped, cached = [], None
    if manifest is not None and not serv.is_backup_server():
        cached = check_tables(manifest, part)
        for key in manifest.keys:
            if key.kv in serv.data_store:
                raise ConfigError(f"{key.kv} is in {conf}'s node_feat.dgl too: use the featdb partition config")
            serv.init_data(key.kv, "node~" + key.kv.split("~")[1], None)
            serv.data_store[key.kv] = map_rows(manifest, part, key)
            serv.orig_data.add(key.kv)
            mapped.append(key.kv)
    try:
        serv.start()
    finally:
        if remove is not None:
            remove()
    return {
        "server_id": server_id,
        "part": part,
        "mapped": mapped,
        "left_cached": cached,
        "peak_rss_bytes": peak_rss(),
        **rss_parts(),
    }


def rss_parts() -> dict[str, int]:
    """This process's resident memory by kind, now: anonymous and shared memory (``RssAnon``,
    ``RssShmem``: not reclaimable) and file pages mapped in (``RssFile``: clean page cache the kernel
    takes back under pressure)."""
    parts = status_bytes(os.getpid(), ("RssAnon", "RssFile", "RssShmem"))
    return {f"{name.lower().replace('rss', 'rss_')}_bytes": n for name, n in parts.items()}

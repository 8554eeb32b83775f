"""Ingest of an OGB node-property-prediction folder (gzipped CSV edges, features, labels, splits)."""

from __future__ import annotations

import gzip
import io
import itertools
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import (
    InvalidInputError,
    SchemaMismatchError,
)
from ..graph.csc import (
    _check_ids,
    _check_num_nodes,
    build_csc,
)
from ..graph.model import (
    DEFAULT_BUDGET,
    SPLIT_KEYS,
    SPLITS,
    EdgeChunks,
)
from ..graph.staging import GraphWriter, make_graph_doc
from ..progress import Progress
from ..store import Store, check_key
from ..tables import Schema
from .edges import (
    _labels_from_array,
    _no_splits,
    _unlabeled_chunks,
    _with_reverse,
    _write_labels,
    check_disjoint,
    check_split,
)
from .features import check_finite

# --------------------------------------------------------------------------- OGB folders
CSV_BLOCK = 8 << 20  # decompressed bytes parsed at a time


def iter_csv(path: Path, dtype: Any, block_bytes: int = CSV_BLOCK) -> Iterator[NDArray[Any]]:
    """Stream a (gzipped) comma-separated numeric file as 2-D arrays of whole lines."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            rest = b""
            line = 0
            while True:
                raw = f.read(block_bytes)
                data = rest + raw
                if not raw:
                    if data.strip():
                        yield _parse_csv(data, dtype, path, line)
                    return
                cut = data.rfind(b"\n") + 1
                rest = data[cut:]
                if cut:
                    arr = _parse_csv(data[:cut], dtype, path, line)
                    line += len(arr)
                    if len(arr):
                        yield arr
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise InvalidInputError(f"{path}: cannot read ({exc})") from exc


def _parse_csv(data: bytes, dtype: Any, path: Path, first_line: int) -> NDArray[Any]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "input contained no data"
            return np.loadtxt(io.BytesIO(data), delimiter=",", dtype=dtype, ndmin=2)
    except ValueError as exc:
        raise InvalidInputError(f"{path}: bad line after line {first_line}: {exc}") from exc


def count_lines(path: Path) -> int:
    """Data lines in a (gzipped) text file, streamed."""
    opener = gzip.open if path.suffix == ".gz" else open
    n, last = 0, b"\n"
    try:
        with opener(path, "rb") as f:
            while chunk := f.read(CSV_BLOCK):
                n += chunk.count(b"\n")
                last = chunk[-1:]
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise InvalidInputError(f"{path}: cannot read ({exc})") from exc
    return n + (last != b"\n")


@dataclass(frozen=True)
class OgbFolder:
    """The files of an OGB node-property-prediction folder that featdb reads."""

    root: Path
    edges: Path
    feat: Path | None
    labels: Path | None
    num_node_list: Path | None
    split_dir: Path | None

    @classmethod
    def find(cls, folder: str | Path, split: str | None = None) -> OgbFolder:
        root = Path(folder)
        raw = root / "raw"
        edges = raw / "edge.csv.gz"
        if not edges.exists():
            raise InvalidInputError(f"{root}: not an OGB node-property folder (no raw/edge.csv.gz)")

        def opt(name: str) -> Path | None:
            p = raw / name
            return p if p.exists() else None

        return cls(
            root,
            edges,
            opt("node-feat.csv.gz"),
            opt("node-label.csv.gz"),
            opt("num-node-list.csv.gz"),
            _find_split_dir(root, split),
        )


def _find_split_dir(root: Path, split: str | None) -> Path | None:
    base = root / "split"
    names = sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []
    if split is not None:
        if split not in names:
            found = ", ".join(names) or "none"
            raise InvalidInputError(f"{root}: no split {split!r} (found {found})")
        return base / split
    if len(names) > 1:
        raise InvalidInputError(f"{root}: several splits ({', '.join(names)}); choose one")
    return base / names[0] if names else None


def _ogb_num_nodes(f: OgbFolder) -> int:
    if f.num_node_list is not None:
        parts = [a.reshape(-1) for a in iter_csv(f.num_node_list, np.int64)]
        vals = np.concatenate(parts) if parts else np.empty(0, np.int64)
        if len(vals) != 1:
            raise InvalidInputError(
                f"{f.num_node_list}: expected one node count, found "
                f"{len(vals)} values (heterogeneous graphs are not supported)"
            )
        return _check_num_nodes(int(vals[0]))
    for p in (f.labels, f.feat):
        if p is not None:
            return count_lines(p)
    return _csv_max_id(f.edges) + 1


def _csv_max_id(path: Path) -> int:
    top = -1
    for a in iter_csv(path, np.int64):
        if a.size:
            top = max(top, int(a.max()))
    return top


def _csv_edges(path: Path, symmetric: bool, num_nodes: int, progress: Progress = None) -> EdgeChunks:
    def gen() -> Iterator[tuple[NDArray[Any], NDArray[Any]]]:
        line = 1
        for a in iter_csv(path, np.int64):
            if a.shape[1] != 2:
                raise SchemaMismatchError(f"{path}: expected 2 columns (src,dst), got {a.shape[1]}")
            _check_ids(a[:, 0], a[:, 1], num_nodes, line, f"{path}: ", "line")
            line += len(a)
            if progress:
                progress(len(a))
            yield _with_reverse(a[:, 0], a[:, 1], symmetric)

    return gen


def _ogb_splits(f: OgbFolder, n: int) -> dict[str, NDArray[Any]]:
    if f.split_dir is None:
        return _no_splits()
    out = {}
    for name in SPLITS:
        p = f.split_dir / f"{name}.csv.gz"
        if not p.exists():
            raise InvalidInputError(f"{f.split_dir}: missing {name}.csv.gz")
        parts = [a.reshape(-1) for a in iter_csv(p, np.int64)]
        ids = np.concatenate(parts) if parts else np.empty(0, np.int64)
        out[name] = check_split(ids, n, str(p))
    return check_disjoint(out, str(f.split_dir))


def _ogb_features(
    gw: GraphWriter, path: Path, n: int, feat_key: str, progress: Progress, allow_nonfinite: bool = False
) -> int:
    """Stream node-feat.csv.gz into a float32 table; returns the feature dimension."""
    chunks = iter_csv(path, np.float32)
    first = next(chunks, None)
    if first is None:
        raise SchemaMismatchError(f"{path}: no feature rows, graph has {n} nodes")
    dim = first.shape[1]
    rows = 0
    with gw.writer(feat_key, Schema("float32", n, dim)) as w:
        for a in itertools.chain([first], chunks):
            if a.shape[1] != dim:
                raise SchemaMismatchError(f"{path}: line {rows + 1} has {a.shape[1]} values, expected {dim}")
            if rows + len(a) > n:
                raise SchemaMismatchError(f"{path}: more feature rows than nodes ({n})")
            if not allow_nonfinite:
                check_finite(a, rows, path)
            w.write(a)
            rows += len(a)
            if progress:
                progress(len(a))
        if rows != n:
            raise SchemaMismatchError(f"{path}: {rows} feature rows for {n} nodes")
    return dim


def _ogb_labels(path: Path, progress: Progress) -> Iterator[NDArray[Any]]:
    for a in iter_csv(path, np.float64):
        if a.shape[1] != 1:
            raise SchemaMismatchError(f"{path}: expected one label per line, got {a.shape[1]} columns")
        if progress:
            progress(len(a))
        yield _labels_from_array(a.reshape(-1), str(path))


def ingest_ogb(
    store: Store,
    folder: str | Path,
    memory_budget: int = DEFAULT_BUDGET,
    progress: Progress = None,
    *,
    symmetric: bool = True,
    split: str | None = None,
    feat_key: str = "node/_/feat",
    dedup: bool = False,
    replace: bool = False,
    allow_nonfinite: bool = False,
) -> dict[str, Any]:
    """Ingest an OGB node-property-prediction folder (``raw/*.csv.gz``, ``split/<name>/*.csv.gz``).

    Reads ``raw/edge.csv.gz`` (required), ``raw/node-feat.csv.gz`` (-> table
    ``feat_key``, float32), ``raw/node-label.csv.gz`` (NaN or -1 = unlabeled),
    ``raw/num-node-list.csv.gz`` and the splits of ``split/<split>`` (the only
    one when ``split`` is None). Everything is streamed. ``progress`` gets CSV
    lines parsed: label and feature lines once, edge lines twice (once per CSC pass).
    Feature rows holding NaN or infinity are refused unless ``allow_nonfinite``. A heterogeneous
    folder (``raw/num-node-dict.csv.gz``, ogbn-mag's layout) goes to
    :func:`~featdb.ingest.ogb_hetero.ingest_ogb_hetero` (one table per node type).
    """
    store.require_writable()
    if (Path(folder) / "raw" / "num-node-dict.csv.gz").exists():  # heterogeneous (ogbn-mag's layout)
        from .ogb_hetero import ingest_ogb_hetero

        return ingest_ogb_hetero(
            store, folder, memory_budget, progress, symmetric=symmetric, split=split, replace=replace,
            allow_nonfinite=allow_nonfinite,
        )  # fmt: skip
    f = OgbFolder.find(folder, split)
    with GraphWriter(store, replace=replace) as gw:
        if f.feat is not None:
            check_key(feat_key)
            gw.check_free(feat_key)
        n = _ogb_num_nodes(f)
        splits = _ogb_splits(f, n)
        if f.labels is not None:
            num_classes, num_labeled = _write_labels(gw, _ogb_labels(f.labels, progress), n, splits)
        else:
            num_classes, num_labeled = _write_labels(gw, _unlabeled_chunks(n, 1 << 20), n, None)
        for name in SPLITS:
            gw.write(SPLIT_KEYS[name], splits[name])
        dim = _ogb_features(gw, f.feat, n, feat_key, progress, allow_nonfinite) if f.feat is not None else None
        stored = build_csc(
            _csv_edges(f.edges, symmetric, n, progress), n, store, memory_budget, dedup=dedup, table_writer=gw.writer
        )
        doc = make_graph_doc(
            num_nodes=n,
            num_edges=stored,
            num_classes=num_classes,
            num_labeled=num_labeled,
            split_sizes={k: len(v) for k, v in splits.items()},
            source="ogb",
            params={"folder": str(f.root), "split": f.split_dir.name if f.split_dir else None},
            symmetric=symmetric,
            sorted_=True,
            dedup=dedup,
            features=feat_key if f.feat is not None else None,
            feat_dim=dim,
        )
        gw.publish(doc)
    return doc

"""Ingest of a heterogeneous OGB node-property folder (ogbn-mag's layout), numbered type by type.

The folder::

    raw/num-node-dict.csv.gz                     header: the node types; one line: their counts
    raw/node-feat/<type>/node-feat.csv.gz        features of the types that have them
    raw/node-label/<type>/node-label.csv.gz      labels (usually of one type)
    raw/relations/<src>___<rel>___<dst>/edge.csv.gz   local src,dst ids per relation
    split/<name>/<type>/{train,valid,test}.csv.gz     local ids

The graph is stored homogeneous, numbered type by type in name order (DGL's
``to_homogeneous`` order): type ``t`` holds the ids ``[lo_t, hi_t)``, recorded
in the graph document as ``node_types``; every relation's edges (and their
reverses, when symmetric) go into the one CSC, each edge's relation in
``graph/csc/etypes`` (names in ``edge_types``: relation ``i`` is type ``i``,
its reverse ``rev_<rel>`` type ``R + i``), so a relational model (R-GCN) can
weigh each relation on its own. Each type's features become the
table ``node/<type>/feat`` (``hi_t - lo_t`` rows); labels and splits are of the
global ids (other types unlabeled). ``featdb sample`` then samples the whole
graph and ``featdb trace split`` (whose ``--type`` defaults come from
``node_types``) gives one trace per type, packed and served per table.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import IdsOutOfRangeError, InvalidInputError, SchemaMismatchError
from ..graph.csc import build_csc
from ..graph.model import DEFAULT_BUDGET, ETYPES_KEY, SPLIT_KEYS, SPLITS, EdgeChunks
from ..graph.staging import GraphWriter, make_graph_doc
from ..names import check_name
from ..progress import Progress
from ..store import Store
from .edges import _unlabeled_chunks, _write_labels, check_disjoint, check_split
from .ogb import _find_split_dir, _ogb_features, _ogb_labels, iter_csv

RELATION_SEP = "___"


def is_hetero_folder(folder: str | Path) -> bool:
    return (Path(folder) / "raw" / "num-node-dict.csv.gz").exists()


def node_types(folder: Path) -> dict[str, tuple[int, int]]:
    """Each node type's id range in the homogeneous numbering (types in name order)."""
    path = folder / "raw" / "num-node-dict.csv.gz"
    try:
        with gzip.open(path, "rt") as f:
            lines = [line.strip() for line in f if line.strip()]
        names, counts = lines[0].split(","), [int(x) for x in lines[1].split(",")]
    except (OSError, EOFError, ValueError, IndexError) as exc:
        raise InvalidInputError(f"{path}: expected a header of node types and one line of counts ({exc})") from None
    if len(names) != len(counts) or any(c < 0 for c in counts):
        raise InvalidInputError(f"{path}: {len(names)} node types, {len(counts)} counts")
    spans, lo = {}, 0
    for name, count in sorted(zip(names, counts, strict=True)):
        spans[check_name(name, "node type")] = (lo, lo + count)
        lo += count
    return spans


def _relations(folder: Path, spans: dict[str, tuple[int, int]]) -> list[tuple[str, str, str, Path]]:
    base = folder / "raw" / "relations"
    out = []
    for d in sorted(p for p in base.iterdir() if p.is_dir()) if base.is_dir() else []:
        parts = d.name.split(RELATION_SEP)
        if len(parts) != 3 or parts[0] not in spans or parts[2] not in spans:
            raise InvalidInputError(f"{d}: expected a folder named <src type>___<relation>___<dst type>")
        out.append((parts[0], parts[1], parts[2], d / "edge.csv.gz"))
    if not out:
        raise InvalidInputError(f"{base}: no relations")
    return out


def edge_type_names(rels: list[tuple[str, str, str, Path]], symmetric: bool) -> list[str]:
    """Each stored edge type's name: the relations in folder order, then (symmetric) their reverses."""
    names = [f"{s}{RELATION_SEP}{r}{RELATION_SEP}{d}" for s, r, d, _ in rels]
    return names + ([f"{d}{RELATION_SEP}rev_{r}{RELATION_SEP}{s}" for s, r, d, _ in rels] if symmetric else [])


def _edges(rels: list[tuple[str, str, str, Path]], spans: dict[str, tuple[int, int]], symmetric: bool) -> EdgeChunks:
    """(src, dst, edge type) chunks: relation ``i`` is type ``i``, its reverse type ``len(rels) + i``."""

    def gen() -> Iterator[tuple[NDArray[Any], NDArray[Any], NDArray[Any]]]:
        for i, (src_t, _, dst_t, path) in enumerate(rels):
            (s_lo, s_hi), (d_lo, d_hi) = spans[src_t], spans[dst_t]
            for a in iter_csv(path, np.int64):
                if a.shape[1] != 2:
                    raise SchemaMismatchError(f"{path}: expected 2 columns (src,dst), got {a.shape[1]}")
                for col, n, t in ((a[:, 0], s_hi - s_lo, src_t), (a[:, 1], d_hi - d_lo, dst_t)):
                    if col.size and (int(col.min()) < 0 or int(col.max()) >= n):
                        raise IdsOutOfRangeError(f"{path}: a {t} id is outside [0, {n})")
                src, dst = a[:, 0] + s_lo, a[:, 1] + d_lo
                yield src, dst, np.full(len(src), i, dtype=np.int64)
                if symmetric:
                    yield dst, src, np.full(len(src), len(rels) + i, dtype=np.int64)

    return gen


def _labels(folder: Path, spans: dict[str, tuple[int, int]], progress: Progress) -> Iterator[NDArray[Any]]:
    for t, (lo, hi) in spans.items():
        path = folder / "raw" / "node-label" / t / "node-label.csv.gz"
        if not path.exists():
            yield from _unlabeled_chunks(hi - lo, 1 << 20)
            continue
        got = 0
        for lab in _ogb_labels(path, progress):
            got += len(lab)
            yield lab
        if got != hi - lo:
            raise SchemaMismatchError(f"{path}: {got} labels for {hi - lo} {t} nodes")


def _splits(folder: Path, split: str | None, spans: dict[str, tuple[int, int]], n: int) -> dict[str, NDArray[Any]]:
    d = _find_split_dir(folder, split)
    out: dict[str, list[NDArray[Any]]] = {name: [] for name in SPLITS}
    for t, (lo, hi) in spans.items() if d is not None else []:
        for name in SPLITS:
            p = d / t / f"{name}.csv.gz"  # type: ignore[operator]
            if p.exists():
                ids = np.concatenate([a.reshape(-1) for a in iter_csv(p, np.int64)] or [np.empty(0, np.int64)])
                out[name].append(check_split(ids, hi - lo, str(p)) + lo)
    joined = {k: np.concatenate(v) if v else np.empty(0, np.int64) for k, v in out.items()}
    return check_disjoint({k: check_split(v, n, k) for k, v in joined.items()}, str(d))


def ingest_ogb_hetero(
    store: Store,
    folder: str | Path,
    memory_budget: int = DEFAULT_BUDGET,
    progress: Progress = None,
    *,
    symmetric: bool = True,
    split: str | None = None,
    replace: bool = False,
    allow_nonfinite: bool = False,
) -> dict[str, Any]:
    """Ingest a heterogeneous OGB folder (see the module docstring); returns the graph document."""
    store.require_writable()
    root = Path(folder)
    spans = node_types(root)
    rels = _relations(root, spans)
    n = max(hi for _, hi in spans.values())
    feats = {t: root / "raw" / "node-feat" / t / "node-feat.csv.gz" for t in spans}
    feats = {t: p for t, p in feats.items() if p.exists()}
    with GraphWriter(store, replace=replace) as gw:
        for t in feats:
            gw.check_free(f"node/{t}/feat")
        splits = _splits(root, split, spans, n)
        num_classes, num_labeled = _write_labels(gw, _labels(root, spans, progress), n, splits)
        for name in SPLITS:
            gw.write(SPLIT_KEYS[name], splits[name])
        dims = {
            t: _ogb_features(gw, p, spans[t][1] - spans[t][0], f"node/{t}/feat", progress, allow_nonfinite)
            for t, p in feats.items()
        }
        etypes = edge_type_names(rels, symmetric)
        stored = build_csc(
            _edges(rels, spans, symmetric),
            n,
            store,
            memory_budget,
            table_writer=gw.writer,
            edge_types=len(etypes),
        )
        doc = make_graph_doc(
            num_nodes=n,
            num_edges=stored,
            num_classes=num_classes,
            num_labeled=num_labeled,
            split_sizes={k: len(v) for k, v in splits.items()},
            source="ogb-hetero",
            params={"folder": str(root), "split": split},
            symmetric=symmetric,
            sorted_=True,
            dedup=False,
        )
        doc["node_types"] = {t: [lo, hi] for t, (lo, hi) in spans.items()}
        doc["type_features"] = {t: {"table": f"node/{t}/feat", "dim": d} for t, d in dims.items()}
        doc["relations"] = edge_type_names(rels, symmetric=False)
        doc["edge_types"] = etypes
        doc["tables"]["etypes"] = ETYPES_KEY
        gw.publish(doc)
    return doc


__all__ = ["edge_type_names", "ingest_ogb_hetero", "is_hetero_folder", "node_types"]
